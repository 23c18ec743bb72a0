# SPDX-License-Identifier: GPL-3.0-or-later
"""Proof suite, issue 7 - server faults, through `sar-backup run`.

Each case runs a job (a `local` target next to the faulty one, `report_to` an
address at an aiosmtpd relay from tests/harness/smtp.py, `report_on: failure`)
through the real CLI in a child process, after one good run that left an
earlier archive on every target. The fault is caused for real, in the middle
of the upload: the child's wrapper (the engine code is unchanged) stops the
upload thread of the faulty target after a few MiB, the test breaks the server
(SIGSTOP of every sshd/smbd process of the instance, SIGKILL and a restart,
SIGKILL for good, a filesystem filled by another writer) or arms the Dropbox
emulator's fault (5xx, 429, a dropped connection, the quota), and lets the
upload go on. Then it asserts the outcome a user sees:

- retry-success: exit 0, every target `successful`, the archive complete on
  the faulty target, no report mail (report_on: failure), and the log shows the
  fault was really met (a resume, a retry, a wait);
- clean failure: exit 1, the SPEC section 7 code on that target (and as the
  run's code), the other target `successful`, the status file (code, per-target
  codes, `last_success` of the earlier run kept), one report mail naming the
  code, nothing incomplete under a `.sar` name, the earlier archive unchanged,
  staging empty; where the server comes back, the next run succeeds and
  removes the leftover partial.

The SMTP relay refusing is caused without a pause: it refuses the e-mail
target's recipient (mailFailed; the report about it must still arrive), or it
refuses the report of a failed run (the run must say so in its output, the
journal under systemd: nothing else will).

The wrapper shortens only the waiting between retries and, for the case that
needs it, the I/O timeout (the number of attempts is the product's). Faults
that a target test already proves word for word are not repeated here:
- `local` target full: tests/integration/test_reliability.py::
  test_full_local_target_keeps_earlier_archive_and_other_target_succeeds;
- e-mail relay answering 451 then accepting: test_target_email.py::
  test_temporary_refusal_then_accepted; the relay dropping the connection
  during DATA: test_connection_dropped_during_data_is_retried_then_connect_failed;
- Dropbox answers lost after append/finish, data damaged in transit, an
  untrusted certificate: test_target_dropbox.py (test_lost_append_answer_...,
  test_lost_finish_answer_..., test_data_damaged_in_transit_...,
  test_untrusted_certificate_is_connect_failed).

16 cases. Needs root (sshd, smbd, useradd, mount -t tmpfs). About 65 s of CPU;
3 minutes wall on a 2-core machine running other test suites at load 5.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

# tests/ and the collection on sys.path, as tests/integration/conftest.py does
# (tests/reliability/conftest.py may already have done it: guarded).
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from harness.playbook import collections_path  # noqa: E402

FARM = collections_path()
if FARM not in sys.path:
    sys.path.insert(0, FARM)

from harness.dropbox_emulator import DropboxEmulator  # noqa: E402
from harness.smbd import SmbServer  # noqa: E402
from harness.smtp import SmtpServer  # noqa: E402
from harness.sshd import SshServer  # noqa: E402

from ansible_collections.sar.backup.plugins.module_utils import archive  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.job import validate_job  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.targets.base import (  # noqa: E402
    ROOT_DIR, archive_pattern, partial_pattern)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sshd, smbd, useradd, mount)")

JOB = "nightly"
MB = 1024 * 1024
DATA_FILES = 5  # x 4 MiB of incompressible announcements: a ~20 MiB archive (a Dropbox upload session)
PAUSE_AT = 6 * MB  # the faulty target's upload is stopped after this many bytes
REPORT_TO = "ops@example.com"
APPEND = "files/upload_session/append_v2"
FINISH = "files/upload_session/finish"

# The real CLI behind a wrapper: it pauses one target's upload thread at a byte
# (marker file, then wait for the test's "go" file) and shortens waits between
# retries (SAR_TEST_BACKOFF) and, when asked, the I/O timeouts.
CHILD = r'''
import builtins, os, sys, threading, time
sys.path.insert(0, os.environ["SAR_TEST_COLLECTIONS"])
from ansible_collections.sar.backup.plugins.module_utils import cli, runner
from ansible_collections.sar.backup.plugins.module_utils.targets import base, dropbox, sftp, smb

MARKER = os.environ["SAR_TEST_MARKER"]
GO = MARKER + ".go"
PAUSE = os.environ.get("SAR_TEST_PAUSE", "").split(":") if os.environ.get("SAR_TEST_PAUSE") else []
backoff = float(os.environ.get("SAR_TEST_BACKOFF") or 0)
if backoff:
    base.Target.RETRY_BACKOFF = backoff
    dropbox.DropboxTarget.BACKOFF = backoff / 4
if os.environ.get("SAR_TEST_IO_TIMEOUT"):
    timeout = float(os.environ["SAR_TEST_IO_TIMEOUT"])
    for cls in (sftp.SftpTarget, smb.SmbTarget):
        cls.IO_TIMEOUT = timeout
        cls.CONNECT_TIMEOUT = timeout
    sftp.SftpTarget.AUTH_TIMEOUT = timeout
_open = builtins.open
local = threading.local()


class Paused:
    def __init__(self, handle, at):
        self.handle, self.at, self.done, self.paused = handle, at, 0, False

    def _check(self):
        if not self.paused and self.done >= self.at:
            self.paused = True
            with _open(MARKER + ".tmp", "w") as out:
                out.write("%s upload paused at byte %d" % (PAUSE[1], self.done))
            os.replace(MARKER + ".tmp", MARKER)
            while not os.path.exists(GO):
                time.sleep(0.01)

    def read(self, size=-1):
        self._check()
        data = self.handle.read(size)
        self.done += len(data)
        return data

    def readinto(self, buf):
        self._check()
        got = self.handle.readinto(buf)
        self.done += got or 0
        return got

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def __getattr__(self, name):
        return getattr(self.handle, name)


def open_hook(file, mode="r", *args, **kwargs):
    handle = _open(file, mode, *args, **kwargs)
    if PAUSE and mode == "rb" and isinstance(file, str) and file.endswith(".sar") \
            and getattr(local, "target", None) == PAUSE[1] and not getattr(local, "paused", False):
        local.paused = True
        return Paused(handle, int(PAUSE[2]))
    return handle


builtins.open = open_hook
_deliver_one = runner.Run.deliver_one


def deliver_one(self, index, options, path, archive_info):
    local.target = options["type"]
    return _deliver_one(self, index, options, path, archive_info)


runner.Run.deliver_one = deliver_one
sys.exit(cli.main(sys.argv[1:]))
'''


# -- helpers ---------------------------------------------------------------------------------------
def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def signal_all(pids: list, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def sshd_pids(server: SshServer) -> list:
    """The listener and every session process of this instance."""
    pids = list(server.session_pids())
    if server.proc is not None:
        pids.append(server.proc.pid)
    return pids


def mount_tmpfs(path: str, size: str, owner: str) -> None:
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", path], check=True)
    shutil.chown(path, owner, owner)


def fill(path: str) -> None:
    """Another writer takes every free byte of the filesystem at `path`."""
    with open(os.path.join(path, "hog.bin"), "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * MB)
                handle.flush()
        except OSError:
            pass
    os.chmod(os.path.join(path, "hog.bin"), 0o644)


class World:
    """The servers every case shares (sshd, smbd, emulator, SMTP relay) and the data."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.mounts = []
        self.sshd = self.smbd = self.emu = self.smtp = None

    def start(self) -> "World":
        self.data = os.path.join(self.tmp, "appliance", "announcements")
        os.makedirs(self.data)
        rng = random.Random(7)
        for i in range(DATA_FILES):
            with open(os.path.join(self.data, "message-%d.wav" % i), "wb") as handle:
                handle.write(rng.randbytes(4 * MB))
        self.sshd = SshServer().start()
        self.smbd = SmbServer().start()
        self.emu = DropboxEmulator(self.tmp).start()
        os.makedirs(os.path.join(self.tmp, "smtp"))
        self.smtp = SmtpServer(os.path.join(self.tmp, "smtp")).start()
        self.child = os.path.join(self.tmp, "child.py")
        with open(self.child, "w", encoding="utf-8") as handle:
            handle.write(CHILD)
        return self

    def stop(self) -> None:
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", path], check=False)
        for server in (self.smtp, self.emu, self.smbd, self.sshd):
            if server is not None:
                try:
                    server.stop()
                except Exception:  # pylint: disable=broad-except
                    pass

    def tmpfs(self, path: str, size: str, owner: str) -> str:
        mount_tmpfs(path, size, owner)
        self.mounts.append(path)
        return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(str(tmp_path_factory.mktemp("faults")))
    try:
        yield w.start()
    finally:
        w.stop()


@pytest.fixture
def own_servers():
    """Servers of the test's own, for cases that stop or kill them."""
    started = []

    def start(kind):
        server = (SshServer() if kind == "sshd" else SmbServer()).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if isinstance(server, SshServer) and server.proc is not None:
            signal_all(sshd_pids(server), signal.SIGCONT)
        elif isinstance(server, SmbServer):
            signal_all(server.pids(), signal.SIGCONT)
        server.stop()


class Case:
    """One job (local + the faulty target) in its own config dir, status, staging."""

    def __init__(self, world: World, tmp: str, faulty: dict, where: str):
        self.world = world
        self.tmp = tmp
        self.where = where  # the faulty target's job folder on disk, or dropbox:<folder>
        self.local = os.path.join(tmp, "local-target")
        os.makedirs(self.local)  # a local target's base must exist (a missing one is mountfail)
        self.store = Store(os.path.join(tmp, "etc"))
        self.settings = validate_settings({
            "profile": {"categories": {"announcements": {"paths": [world.data]}}},
            "archive_dir": os.path.join(tmp, "archives"),
            "staging_dir": os.path.join(tmp, "staging"),
            "status_dir": os.path.join(tmp, "status"),
            "lock_path": os.path.join(tmp, "lock", "sar-backup.lock"),
            "smtp": world.smtp.settings(),
        })
        self.store.write_settings(self.settings)
        self.job = validate_job({"name": JOB, "data": ["announcements"], "report_to": [REPORT_TO],
                                 "report_on": "failure",
                                 "targets": [{"type": "local", "path": self.local, "keep": 3}, dict(faulty, keep=3)]})
        self.store.write_job(self.job)
        self.runs = 0
        self.last_started = 0.0
        self.last_output = ""

    # -- running ------------------------------------------------------------------------------
    def run(self, pause_at: int | None = None, on_pause=None, env: dict | None = None, limit: float = 240) -> int:
        """`sar-backup run` in a child; with pause_at, the faulty target's upload stops at that
        byte and on_pause() runs (the fault) before it goes on. Returns the exit status."""
        # Archive names carry the start to the second: never two runs of a case in one second.
        while time.time() < int(self.last_started) + 1.02:
            time.sleep(0.02)
        marker = os.path.join(self.tmp, "marker")
        for path in (marker, marker + ".go"):
            if os.path.exists(path):
                os.unlink(path)
        child_env = dict(os.environ, SAR_TEST_COLLECTIONS=FARM, SAR_TEST_MARKER=marker, SAR_TEST_BACKOFF="0.5",
                         **self.world.emu.env())
        if pause_at is not None:
            child_env["SAR_TEST_PAUSE"] = "upload:%s:%d" % (self.job["targets"][1]["type"], pause_at)
        child_env.update(env or {})
        log = os.path.join(self.tmp, "run-%d.log" % self.runs)
        self.runs += 1
        self.world.smtp.messages.clear()
        self.world.smtp.commands.clear()
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, self.world.child, "--config-dir", self.store.config_dir,
                                     "run", JOB], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=child_env,
                                    start_new_session=True)
        try:
            if pause_at is not None:
                deadline = time.monotonic() + 120
                while not os.path.exists(marker):
                    assert proc.poll() is None, "the run ended before the upload reached byte %d:\n%s" % (
                        pause_at, self.output(log))
                    assert time.monotonic() < deadline, "the upload did not reach byte %d" % pause_at
                    time.sleep(0.01)
                if on_pause is not None:
                    on_pause()
                with open(marker + ".go", "w", encoding="ascii"):
                    pass
            rc = proc.wait(limit)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            self.last_output = self.output(log)
            try:
                self.last_started = self.status()["started_epoch_ms"] / 1000.0
            except (OSError, ValueError, KeyError):
                self.last_started = time.time()
        return rc

    @staticmethod
    def output(log: str) -> str:
        with open(log, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def status(self) -> dict:
        with open(os.path.join(self.settings["status_dir"], "%s.json" % JOB), encoding="utf-8") as handle:
            return json.load(handle)

    # -- what is on the targets -----------------------------------------------------------------
    def files(self, index: int) -> dict:
        """name -> path of the bytes on disk, in the job folder of target `index`."""
        if index == 0:
            folder = os.path.join(self.local, ROOT_DIR, JOB)
        elif self.where.startswith("dropbox:"):
            folder = self.where[len("dropbox:"):]
            emu = self.world.emu
            return {name: emu.node(folder + "/" + name).blob for name in emu.list_names(folder)}
        else:
            folder = self.where
        return {n: os.path.join(folder, n) for n in os.listdir(folder)} if os.path.isdir(folder) else {}

    def archives(self, index: int) -> dict:
        """name -> sha256 of every `.sar` on target `index`; each one must verify, and nothing but
        this job's archives and its partials may be in the folder."""
        out = {}
        for name, path in self.files(index).items():
            if name.endswith(".sar"):
                assert archive_pattern(JOB).match(name), "unexpected %s on target %d" % (name, index)
                try:
                    archive.verify(path)
                except ArchiveError as exc:
                    pytest.fail("target %d shows %s under its .sar name, but it does not verify: %s" % (index, name, exc))
                out[name] = sha256(path)
            else:
                assert partial_pattern(JOB).match(name), "unexpected file %s on target %d" % (name, index)
        return out

    def partials(self, index: int) -> list:
        return [n for n in self.files(index) if not n.endswith(".sar")]

    def good_run(self) -> dict:
        """A run without fault: the earlier archive on both targets. Returns {index: {name: sha}}."""
        rc = self.run()
        assert rc == 0, self.last_output
        assert self.world.smtp.messages == []
        status = self.status()
        assert status["code"] == "successful", status
        return {0: self.archives(0), 1: self.archives(1)}

    # -- outcomes --------------------------------------------------------------------------------
    def assert_retry_success(self, rc: int, before: dict, evidence) -> dict:
        assert rc == 0, self.last_output
        status = self.status()
        assert status["code"] == "successful" and status["success"] is True, status
        assert [t["code"] for t in status["targets"]] == ["successful", "successful"], status["targets"]
        new = status["archive"]["name"]
        for index in (0, 1):
            now = self.archives(index)
            assert set(now) == set(before[index]) | {new}, (index, sorted(now))
            assert now[new] == status["archive"]["sha256"]
            for name, digest in before[index].items():
                assert now[name] == digest, "earlier archive %s changed on target %d" % (name, index)
            assert self.partials(index) == [], "leftover partial on target %d after a successful run" % index
        assert self.world.smtp.messages == [], "report_on failure mailed a successful run"
        assert os.listdir(self.settings["staging_dir"]) == []
        if isinstance(evidence, str):
            assert evidence in self.last_output, "the fault was not met (%r not in the log):\n%s" % (
                evidence, self.last_output)
        elif evidence is not None:
            assert evidence(self.last_output), self.last_output
        return status

    def assert_clean_failure(self, rc: int, before: dict, code: str, words: tuple = ()) -> dict:
        assert rc == 1, self.last_output
        status = self.status()
        assert status["code"] == code and status["success"] is False, status
        assert [t["code"] for t in status["targets"]] == ["successful", code], status["targets"]
        faulty = status["targets"][1]
        for word in words:
            assert word in faulty["error"], (word, faulty["error"])
        assert status["last_success"] and status["last_success"] < status["finished"], status
        new = status["archive"]["name"]
        # The other target got the archive; the faulty one shows nothing new under a .sar name.
        assert set(self.archives(0)) == set(before[0]) | {new}
        after = self.archives(1)
        assert after == before[1], "target 1: %s before, %s after the fault" % (before[1], after)
        assert os.listdir(self.settings["staging_dir"]) == []
        # The report: one mail to report_to, naming the code and the failed target.
        assert len(self.world.smtp.messages) == 1, (self.world.smtp.commands, self.last_output)
        mail = self.world.smtp.messages[0]
        assert mail.rcpt_tos == [REPORT_TO]
        assert mail.message["Subject"].endswith(": FAILED (%s)" % code), mail.message["Subject"]
        body = mail.message.get_body(("plain",)).get_content()
        assert code in body and faulty["location"] in body and new in body, body
        assert "%s: %s" % (JOB, code) in self.last_output
        return status

    def assert_next_run_clean(self) -> None:
        """After the server came back: the next run succeeds everywhere and removes the leftover
        partial (assert_retry_success: no partial left, the earlier archives unchanged)."""
        self.assert_retry_success(self.run(), {0: self.archives(0), 1: self.archives(1)}, None)


def sftp_case(world, tmp, server: SshServer, name: str, path: str | None = None) -> Case:
    base = path or server.make_dir(os.path.join(server.tmp, name))
    return Case(world, tmp, {"type": "sftp", "server": "127.0.0.1", "port": server.port, "username": server.user,
                             "password": server.password, "host_key": server.host_key_line("ssh-ed25519"),
                             "path": base}, os.path.join(base, ROOT_DIR, JOB))


def smb_case(world, tmp, server: SmbServer, sub: str) -> Case:
    return Case(world, tmp, {"type": "smb", "server": "127.0.0.1", "port": server.port, "share": "share/" + sub,
                             "username": server.user, "password": server.password},
                os.path.join(server.share_path("share"), sub, ROOT_DIR, JOB))


def dropbox_case(world, tmp, name: str) -> Case:
    base = "/faults/" + name
    return Case(world, tmp, {"type": "dropbox", "access_token": world.emu.access_token, "path": base},
                "dropbox:%s/%s/%s" % (base, ROOT_DIR, JOB))


# -- sftp -------------------------------------------------------------------------------------------
def test_sftp_server_paused_mid_upload_then_continued(world, tmp_path, own_servers):
    """SIGSTOP of sshd (listener and session) for 3 s mid-upload: the upload waits and completes."""
    server = own_servers("sshd")
    case = sftp_case(world, str(tmp_path), server, "paused")
    before = case.good_run()

    def pause():
        signal_all(sshd_pids(server), signal.SIGSTOP)
        threading.Timer(3.0, signal_all, (sshd_pids(server), signal.SIGCONT)).start()
    begin = time.monotonic()
    rc = case.run(PAUSE_AT, pause)
    assert time.monotonic() - begin >= 3.0
    case.assert_retry_success(rc, before, "target 1 sftp")


def test_sftp_server_paused_past_the_io_timeout_reconnects_and_resumes(world, tmp_path, own_servers):
    """SIGSTOP for longer than the client's I/O timeout (shortened to 2 s): the session is
    declared dead, the client reconnects once sshd runs again and resumes where the server
    confirmed, not from byte 0."""
    server = own_servers("sshd")
    case = sftp_case(world, str(tmp_path), server, "paused-long")
    before = case.good_run()

    def pause():
        signal_all(sshd_pids(server), signal.SIGSTOP)
        threading.Timer(3.5, signal_all, (sshd_pids(server), signal.SIGCONT)).start()
    rc = case.run(PAUSE_AT, pause, env={"SAR_TEST_IO_TIMEOUT": "2"})
    case.assert_retry_success(rc, before, lambda out: "lost" in out and any(
        "resuming upload at byte" in line and " at byte 0 " not in line for line in out.splitlines()))


def test_sftp_server_killed_mid_upload_and_restarted_resumes(world, tmp_path, own_servers):
    """sshd killed (listener and sessions) mid-upload and started again on the same port before
    the upload goes on: the client finds its session dead, reconnects and resumes.
    (test_target_sftp.py::test_connection_cut_mid_upload_resumes cuts only the sessions,
    with the listener up, and calls the target directly.)"""
    server = own_servers("sshd")
    case = sftp_case(world, str(tmp_path), server, "restarted")
    before = case.good_run()

    def crash():
        server.stop_listener()
        assert server.kill_sessions() >= 1
        server.start(attempts=20)
    rc = case.run(PAUSE_AT, crash)
    case.assert_retry_success(rc, before, lambda out: any(
        "resuming upload at byte" in line and " at byte 0 " not in line for line in out.splitlines()))


def test_sftp_server_killed_for_good_is_connect_failed(world, tmp_path, own_servers):
    """(test_target_sftp.py::test_server_gone_for_good_mid_upload proves the target's error;
    here: the run's codes, status, mail, and the next run once the server is back.)"""
    server = own_servers("sshd")
    case = sftp_case(world, str(tmp_path), server, "gone")
    before = case.good_run()

    def crash():
        server.stop_listener()
        server.kill_sessions()
    rc = case.run(PAUSE_AT, crash)
    case.assert_clean_failure(rc, before, "connectFailed", ("127.0.0.1:%d" % server.port,))
    server.start(attempts=20)
    case.assert_next_run_clean()


def test_sftp_target_filling_up_during_upload_is_disk_full(world, tmp_path):
    """The server's filesystem (a 48 MiB tmpfs) had room for the archive when the upload
    began; another writer takes it all mid-upload: diskFull, the partial removed."""
    server = world.sshd
    base = world.tmpfs(os.path.join(server.tmp, "small-%s" % os.path.basename(str(tmp_path))), "48m", server.user)
    case = sftp_case(world, str(tmp_path), server, "full", path=base)
    before = case.good_run()
    rc = case.run(PAUSE_AT, lambda: fill(base))
    case.assert_clean_failure(rc, before, "diskFull", ("no space left",))
    assert case.partials(1) == [], "the partial was not removed from the full server"
    os.unlink(os.path.join(base, "hog.bin"))
    case.assert_next_run_clean()


# -- smb --------------------------------------------------------------------------------------------
def test_smb_server_paused_mid_upload_then_continued(world, tmp_path, own_servers):
    server = own_servers("smbd")
    case = smb_case(world, str(tmp_path), server, "paused")
    before = case.good_run()

    def pause():
        signal_all(server.pids(), signal.SIGSTOP)
        threading.Timer(3.0, lambda: signal_all(server.pids(), signal.SIGCONT)).start()
    begin = time.monotonic()
    rc = case.run(PAUSE_AT, pause)
    assert time.monotonic() - begin >= 3.0
    case.assert_retry_success(rc, before, "target 1 smb")


def test_smb_server_killed_mid_upload_and_restarted_resumes(world, tmp_path, own_servers):
    """(test_target_smb.py::test_smbd_killed_mid_upload_and_restarted_resumes proves the resume
    on the target itself; here through the run: codes, status, no mail, nothing left.)"""
    server = own_servers("smbd")
    case = smb_case(world, str(tmp_path), server, "restarted")
    before = case.good_run()

    def crash():
        assert server.kill() >= 2  # the listener and the session's process
        server.start(attempts=20)
    rc = case.run(PAUSE_AT, crash)
    case.assert_retry_success(rc, before, "resuming upload at byte")


def test_smb_server_killed_for_good_is_mountfail(world, tmp_path, own_servers):
    server = own_servers("smbd")
    case = smb_case(world, str(tmp_path), server, "gone")
    before = case.good_run()
    rc = case.run(PAUSE_AT, server.kill)
    case.assert_clean_failure(rc, before, "mountfail", ("127.0.0.1:%d" % server.port,))
    server.start(attempts=20)
    case.assert_next_run_clean()


def test_smb_share_filling_up_during_upload_is_disk_full(world, tmp_path):
    server = world.smbd
    sub = "small-%s" % os.path.basename(str(tmp_path))
    base = world.tmpfs(os.path.join(server.share_path("share"), sub), "48m", server.user)
    case = smb_case(world, str(tmp_path), server, sub)
    before = case.good_run()
    rc = case.run(PAUSE_AT, lambda: fill(base))
    case.assert_clean_failure(rc, before, "diskFull", ("no space left",))
    assert case.partials(1) == [], "the partial was not removed from the full share"
    os.unlink(os.path.join(base, "hog.bin"))
    case.assert_next_run_clean()


# -- dropbox ----------------------------------------------------------------------------------------
def test_dropbox_5xx_on_every_append_is_connect_failed(world, tmp_path):
    emu = world.emu
    case = dropbox_case(world, str(tmp_path), "5xx")
    before = case.good_run()
    seen = len(emu.calls)
    try:
        rc = case.run(PAUSE_AT, lambda: emu.fail_next(None, status=503, route=APPEND))
        case.assert_clean_failure(rc, before, "connectFailed", ("503",))
    finally:
        emu.clear_faults()
    calls = emu.calls[seen:]
    assert [c.status for c in calls if c.route == APPEND].count(503) >= 2  # retried, finitely
    assert not [c for c in calls if c.route == FINISH], "nothing may be committed after the appends failed"
    case.assert_next_run_clean()


def test_dropbox_500s_then_answers_is_retried(world, tmp_path):
    emu = world.emu
    case = dropbox_case(world, str(tmp_path), "500")
    before = case.good_run()
    seen = len(emu.calls)
    rc = case.run(PAUSE_AT, lambda: emu.fail_next(2, status=500, route=APPEND))
    case.assert_retry_success(rc, before, "retry")
    assert [c.status for c in emu.calls[seen:] if c.route == APPEND].count(500) == 2


def test_dropbox_429_waits_retry_after_then_succeeds(world, tmp_path):
    emu = world.emu
    case = dropbox_case(world, str(tmp_path), "429")
    before = case.good_run()
    seen = len(emu.calls)
    rc = case.run(PAUSE_AT, lambda: emu.rate_limit_next(retry_after=2, route=APPEND))
    case.assert_retry_success(rc, before, None)
    calls = emu.calls[seen:]
    limited = [c for c in calls if c.status == 429]
    assert len(limited) == 1, [(c.route, c.status) for c in calls]  # it waited, it did not hammer
    after = [c for c in calls if c.time > limited[0].time]
    assert after and after[0].time - limited[0].time >= 2.0


def test_dropbox_connection_dropped_mid_append_is_resent(world, tmp_path):
    emu = world.emu
    case = dropbox_case(world, str(tmp_path), "drop")
    before = case.good_run()
    seen = len(emu.calls)
    rc = case.run(PAUSE_AT, lambda: emu.drop_during_append(after_bytes=MB))
    case.assert_retry_success(rc, before, None)
    assert [c.status for c in emu.calls[seen:] if c.route == APPEND].count(0) == 1


def test_dropbox_quota_reached_is_disk_full(world, tmp_path):
    emu = world.emu
    case = dropbox_case(world, str(tmp_path), "quota")
    before = case.good_run()

    def full():
        emu.quota = emu.used_bytes() + 4 * MB
    try:
        rc = case.run(PAUSE_AT, full)
        case.assert_clean_failure(rc, before, "diskFull", ("insufficient_space",))
    finally:
        emu.quota = None
    case.assert_next_run_clean()


# -- smtp -------------------------------------------------------------------------------------------
def test_email_target_refused_by_the_relay_is_mail_failed_and_reported(world, tmp_path):
    """The relay refuses the archive's recipient (550): the e-mail target is mailFailed, the
    report about it still reaches report_to."""
    smtp = world.smtp
    case = Case(world, str(tmp_path), {"type": "email", "to": ["archive@example.com"], "max_size": "100MB"},
                "email:")
    smtp.handler.reject_rcpt = {"archive@example.com"}
    try:
        rc = case.run()
    finally:
        smtp.handler.reject_rcpt = False
    assert rc == 1, case.last_output
    status = case.status()
    assert status["code"] == "mailFailed" and status["success"] is False
    assert [t["code"] for t in status["targets"]] == ["successful", "mailFailed"]
    assert "archive@example.com" in status["targets"][1]["error"] and "550" in status["targets"][1]["error"]
    assert set(case.archives(0)) == {status["archive"]["name"]}
    assert [m.rcpt_tos for m in smtp.messages] == [[REPORT_TO]], smtp.commands
    mail = smtp.messages[0]
    assert mail.message["Subject"].endswith(": FAILED (mailFailed)")
    assert "archive@example.com" in mail.message.get_body(("plain",)).get_content()
    assert not mail.attachments(), "the report must not carry the archive"


def test_relay_refusing_the_report_is_said_in_the_run_output(world, tmp_path):
    """A failed run whose report the relay refuses (550 after DATA): the run's code and status
    are the target's, and the refusal is not silent - `sar-backup run` says the report could
    not be mailed (its output is the journal under systemd; exit 1 tells OnFailure= the run
    reported itself, so nothing else will)."""
    smtp = world.smtp
    server = world.sshd
    base = server.make_dir(os.path.join(server.tmp, "refused-%s" % os.path.basename(str(tmp_path))))
    case = Case(world, str(tmp_path), {"type": "sftp", "server": "127.0.0.1", "port": server.port,
                                       "username": server.user, "password": "not-" + server.password,
                                       "host_key": server.host_key_line("ssh-ed25519"), "path": base},
                os.path.join(base, ROOT_DIR, JOB))
    smtp.handler.reject_data = True
    try:
        rc = case.run()
        commands = list(smtp.commands)
    finally:
        smtp.handler.reject_data = False
    assert rc == 1, case.last_output
    status = case.status()
    assert status["code"] == "sftpRightProblem"
    assert [t["code"] for t in status["targets"]] == ["successful", "sftpRightProblem"]
    assert "DATA" in commands and smtp.messages == []  # the relay really refused it
    assert "could not mail the report to %s" % REPORT_TO in case.last_output, case.last_output
