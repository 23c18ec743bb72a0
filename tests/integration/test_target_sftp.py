# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The `sftp` target against a real OpenSSH sshd on loopback (tests/harness/sshd.py),
with real paramiko: delivery, verification, retention, authentication, host key
policy, permissions, full disks, connections cut mid-upload, and secrets kept
out of every message."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from ansible_collections.sar.backup.plugins.module_utils import errors, job
from ansible_collections.sar.backup.plugins.module_utils.errors import MissingLibrary, TargetError
from ansible_collections.sar.backup.plugins.module_utils.targets import sftp as sftp_mod
from ansible_collections.sar.backup.plugins.module_utils.targets import target_class
from ansible_collections.sar.backup.plugins.module_utils.targets.base import TargetContext
from ansible_collections.sar.backup.plugins.module_utils.archive import partial_name
from harness.sshd import SshServer, fingerprint, generate_key

JOB = "nightly"
HOST = "pbx1"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("sshd"),
                                reason="needs root and OpenSSH sshd (apt-get install openssh-server)")


# -- fixtures and helpers ----------------------------------------------------------------
@pytest.fixture(scope="module", params=["openssh", "paramiko"])
def ssh_client(request):
    """Every test of this module runs on both SSH clients of the target: the
    system's OpenSSH (`ssh -s sftp`) and paramiko, each with servers of its own."""
    if request.param == "openssh" and not sftp_mod.openssh_client():
        pytest.skip("needs the OpenSSH client ssh %d.%d or later" % sftp_mod.OPENSSH_MINIMUM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sftp_mod, "CLIENT", request.param)
        yield request.param


@pytest.fixture(autouse=True)
def only_that_client(ssh_client, monkeypatch):
    """Every connection a test makes uses the client asked for."""
    used = []
    connect_once = sftp_mod.SftpTarget._connect_once  # pylint: disable=protected-access

    def spy(self):
        connect_once(self)
        used.append("openssh" if self.ssh is not None else "paramiko")
    monkeypatch.setattr(sftp_mod.SftpTarget, "_connect_once", spy)
    yield
    if sftp_mod.CLIENT == ssh_client:  # (a test that chose the client itself checks its own)
        assert set(used) <= {ssh_client}, used


@pytest.fixture(scope="module")
def sshd(ssh_client):  # pylint: disable=unused-argument  # one server per client
    server = SshServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_sshd(ssh_client):  # pylint: disable=unused-argument
    """A server of the test's own, for tests that change or stop it."""
    server = SshServer(host_key_types=("ed25519", "rsa")).start()
    yield server
    server.stop()


@pytest.fixture
def config_dir(tmp_path):
    path = tmp_path / "config"
    path.mkdir()
    return str(path)


@pytest.fixture(scope="session")
def big_file(tmp_path_factory):
    """200 MB of random data (incompressible, written once per session)."""
    path = str(tmp_path_factory.mktemp("sftp-big") / "big.bin")
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for _chunk in range(200):
            chunk = os.urandom(1000 * 1000)
            digest.update(chunk)
            handle.write(chunk)
    return path, os.path.getsize(path), digest.hexdigest()


def make_archive(tmp_path, size: int = 3 * 1000 * 1000, tag: str = "a"):
    path = str(tmp_path / ("archive-%s.bin" % tag))
    data = os.urandom(size)
    with open(path, "wb") as handle:
        handle.write(data)
    return path, size, hashlib.sha256(data).hexdigest()


def name_for(day: int) -> str:
    return "%s_%s_202401%02dT030000Z.sar" % (JOB, HOST, day)


class Logs(list):
    """ctx.log that keeps the lines (truthy even while empty: the target tests `if ctx.log`)."""

    def __call__(self, msg):
        self.append(msg)

    def __bool__(self):
        return True


def make_target(server, config_dir, logs=None, **options):
    raw = {"type": "sftp", "server": "127.0.0.1", "port": server.port, "username": server.user}
    if "private_key" not in options:
        raw["password"] = server.password
    if "host_key_policy" not in options:
        raw["host_key"] = server.host_key_line("ssh-ed25519")
    raw.update(options)
    raw = {k: v for k, v in raw.items() if v is not None}
    opts = job.validate_target(raw, 0)
    target = target_class("sftp")(opts, TargetContext(job=JOB, host=HOST, config_dir=config_dir,
                                                      log=logs if logs is not None else Logs()))
    target.RETRY_BACKOFF = 0.1  # the retry count stays real, the waiting does not
    return target


def job_folder(base: str) -> str:
    return os.path.join(base, "starface-backup", JOB)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree(base: str) -> list:
    out = []
    for root, dirs, files in os.walk(base):
        out += [os.path.join(root, d) + "/" for d in dirs] + [os.path.join(root, f) for f in files]
    return sorted(out)


def assert_no_secret(exc: BaseException, target, logs=()):
    texts = [str(exc), repr(exc), repr(getattr(exc, "args", ()))] + list(logs)
    secrets_ = [target.options.get(k) for k in ("password", "private_key_passphrase") if target.options.get(k)]
    key = target.options.get("private_key")
    if key:
        # any line of the key body would be a leak
        secrets_ += [line for line in key.splitlines() if line and "PRIVATE KEY" not in line]
    for text in texts:
        for secret in secrets_:
            assert secret not in text, "secret leaked into %r" % text[:200]


def user_dir(server, *parts) -> str:
    return server.make_dir(os.path.join(server.tmp, *parts))


# -- delivery, verification, retention ------------------------------------------------------
def test_deliver_verifies_and_prunes_only_own_archives(sshd, config_dir, tmp_path):
    folder = job_folder(sshd.home)
    target = make_target(sshd, config_dir, verify="full", keep=2)
    assert target.location() == "127.0.0.1:."
    archives = [make_archive(tmp_path, 2 * 1000 * 1000 + i, tag=str(i)) for i in range(3)]
    # First delivery creates the folders; then put strangers next to ours.
    assert make_target(sshd, config_dir, verify="full", keep=2).deliver(
        archives[0][0], name_for(1), archives[0][1], archives[0][2]) == {"bytes": archives[0][1], "pruned": []}
    foreign = {"notes.txt": b"not ours", "other_pbx1_20240101T030000Z.sar": b"another job",
               "%s_%s_20240101T030000Z.sar.bak" % (JOB, HOST): b"lookalike"}
    for fname, data in foreign.items():
        with open(os.path.join(folder, fname), "wb") as handle:
            handle.write(data)
    stale_partial = os.path.join(folder, partial_name(name_for(2)))
    with open(stale_partial, "wb") as handle:
        handle.write(b"left by a crashed run")
    target.deliver(archives[1][0], name_for(3), archives[1][1], archives[1][2])
    result = make_target(sshd, config_dir, verify="full", keep=2).deliver(
        archives[2][0], name_for(4), archives[2][1], archives[2][2])

    assert result["pruned"] == [name_for(1)]
    assert sorted(os.listdir(folder)) == sorted(list(foreign) + [name_for(3), name_for(4)])
    assert sha256_of(os.path.join(folder, name_for(3))) == archives[1][2]
    assert sha256_of(os.path.join(folder, name_for(4))) == archives[2][2]
    for fname, data in foreign.items():
        with open(os.path.join(folder, fname), "rb") as handle:
            assert handle.read() == data
    # Archives are private to the login user on the server.
    assert stat.S_IMODE(os.stat(os.path.join(folder, name_for(4))).st_mode) == 0o600
    assert os.stat(os.path.join(folder, name_for(4))).st_uid != 0


def test_verify_full_detects_corruption_and_reader_closes_cleanly(sshd, config_dir, tmp_path):
    path, size, digest = make_archive(tmp_path, 5 * 1000 * 1000)
    target = make_target(sshd, config_dir, verify="full", keep=0)
    target.connect()
    try:
        target.ensure_dir()
        target.put(path, name_for(20), size)
        target.verify(name_for(20), size, digest)
        # A reader closed half way leaves the session usable.
        with target.open_read(name_for(20)) as handle:
            assert handle.read(1000) == open(path, "rb").read(1000)
        assert target.size_of(name_for(20)) == size
        with target.open_read(name_for(20)) as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest
        # Same size, one byte different on the server: only `full` sees it.
        remote = os.path.join(job_folder(sshd.home), name_for(20))
        with open(remote, "r+b") as handle:
            handle.seek(size // 2)
            byte = handle.read(1)
            handle.seek(size // 2)
            handle.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(TargetError) as info:
            target.verify(name_for(20), size, digest)
        assert info.value.code == errors.VERIFY_FAILED
    finally:
        target.close()
        shutil.rmtree(job_folder(sshd.home), ignore_errors=True)


def test_absolute_path_created_below_existing_folder(sshd, config_dir, tmp_path):
    base = os.path.join(user_dir(sshd, "abs"), "deeper", "still")
    path, size, digest = make_archive(tmp_path)
    target = make_target(sshd, config_dir, path=base)
    assert target.location() == "127.0.0.1:%s" % base
    target.deliver(path, name_for(5), size, digest)
    assert sha256_of(os.path.join(job_folder(base), name_for(5))) == digest
    assert os.listdir(job_folder(base)) == [name_for(5)]


# -- authentication ------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type,passphrase,pem", [
    ("ed25519", "", False),
    ("ecdsa", "", False),
    ("rsa", "correct horse 'battery'", False),
    ("rsa", "pem-pass", True),
])
def test_key_authentication(sshd, config_dir, tmp_path, key_type, passphrase, pem):
    key_path = str(tmp_path / ("id_" + key_type))
    public = generate_key(key_path, key_type, passphrase=passphrase)
    if pem:
        subprocess.run(["ssh-keygen", "-p", "-q", "-m", "PEM", "-P", passphrase, "-N", passphrase, "-f", key_path],
                       check=True, stdout=subprocess.DEVNULL)
    sshd.add_authorized_key(public)
    with open(key_path, encoding="ascii") as handle:
        key_text = handle.read()
    base = user_dir(sshd, "keys-" + key_type + ("-pem" if pem else ""))
    archive = make_archive(tmp_path)
    target = make_target(sshd, config_dir, private_key=key_text, private_key_passphrase=passphrase or None, path=base)
    target.deliver(archive[0], name_for(6), archive[1], archive[2])
    assert sha256_of(os.path.join(job_folder(base), name_for(6))) == archive[2]


def test_key_problems_are_config_errors_without_secrets(sshd, config_dir, tmp_path):
    key_path = str(tmp_path / "id_locked")
    generate_key(key_path, "ed25519", passphrase="the-right-one")
    with open(key_path, encoding="ascii") as handle:
        key_text = handle.read()
    for passphrase, expect in ((None, "set private_key_passphrase"), ("the-wrong-one", "wrong private_key_passphrase")):
        logs = Logs()
        target = make_target(sshd, config_dir, logs, private_key=key_text, private_key_passphrase=passphrase)
        with pytest.raises(TargetError) as info:
            target.check()
        assert info.value.code == errors.INVALID
        assert expect in str(info.value)
        assert_no_secret(info.value, target, logs)
    # A key the server does not know: login refused.
    other = str(tmp_path / "id_other")
    generate_key(other, "ed25519")
    with open(other, encoding="ascii") as handle:
        target = make_target(sshd, config_dir, private_key=handle.read())
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.SFTP_RIGHT_PROBLEM
    assert_no_secret(info.value, target)


def test_wrong_password(sshd, config_dir):
    logs = Logs()
    target = make_target(sshd, config_dir, logs, password="not-" + sshd.password)
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.SFTP_RIGHT_PROBLEM
    assert str(info.value) == "SFTP login to 127.0.0.1:%d as '%s' failed: wrong user, password or key" % (sshd.port, sshd.user)
    assert_no_secret(info.value, target, logs)
    assert not info.value.transient


def test_nothing_listening_is_connect_failed(config_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        raw = {"type": "sftp", "server": "127.0.0.1", "port": port, "username": "nobody",
               "password": "secret-pw-123", "host_key": "SHA256:" + "A" * 43}
        target = target_class("sftp")(job.validate_target(raw, 0), TargetContext(JOB, HOST, config_dir))
        target.RETRY_BACKOFF = 0.05
        with pytest.raises(TargetError) as info:
            target.deliver("/nonexistent", name_for(1), 1, "0" * 64)
    assert info.value.code == errors.CONNECT_FAILED
    assert "127.0.0.1:%d" % port in str(info.value)
    assert_no_secret(info.value, target)


def test_unresolvable_host_is_connect_failed(config_dir):
    raw = {"type": "sftp", "server": "no-such-host.invalid", "username": "u", "password": "pw-xyz",
           "host_key_policy": "accept_new"}
    target = target_class("sftp")(job.validate_target(raw, 0), TargetContext(JOB, HOST, config_dir))
    target.RETRY_BACKOFF = 0.01
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.CONNECT_FAILED
    assert "no-such-host.invalid" in str(info.value)
    assert not os.path.exists(os.path.join(config_dir, "known_hosts"))


def test_missing_paramiko_is_reported(monkeypatch, sshd, config_dir):
    monkeypatch.setattr(sftp_mod, "paramiko", None)
    with pytest.raises(MissingLibrary) as info:
        make_target(sshd, config_dir).check()
    assert "paramiko" in str(info.value) and "sftp" in str(info.value)


# -- host keys --------------------------------------------------------------------------------------
def test_unknown_host_key_refused_by_default(sshd, config_dir):
    target = make_target(sshd, config_dir, host_key_policy="strict")
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.HOST_KEY_UNKNOWN
    message = str(info.value)
    assert sshd.host_key_fingerprint("ssh-ed25519") in message
    assert "ssh-ed25519" in message and "host_key_policy: accept_new" in message
    assert not os.path.exists(os.path.join(config_dir, "known_hosts"))
    assert_no_secret(info.value, target)


def test_accept_new_remembers_then_refuses_a_changed_key(own_sshd, config_dir):
    known = os.path.join(config_dir, "known_hosts")
    make_target(own_sshd, config_dir, host_key_policy="accept_new").check()
    assert stat.S_IMODE(os.stat(known).st_mode) == 0o600
    with open(known, encoding="ascii") as handle:
        lines = handle.read().splitlines()
    assert lines == ["[127.0.0.1]:%d %s" % (own_sshd.port, own_sshd.host_key_line("ssh-ed25519"))]
    # Remembered: strict now accepts it, and accept_new does not add it twice.
    make_target(own_sshd, config_dir, host_key_policy="strict").check()
    make_target(own_sshd, config_dir, host_key_policy="accept_new").check()
    with open(known, encoding="ascii") as handle:
        assert handle.read().splitlines() == lines

    old = own_sshd.host_key_fingerprint("ssh-ed25519")
    own_sshd.regenerate_host_keys()
    for policy in ("accept_new", "strict"):
        target = make_target(own_sshd, config_dir, host_key_policy=policy)
        with pytest.raises(TargetError) as info:
            target.check()
        assert info.value.code == errors.HOST_KEY_MISMATCH
        assert own_sshd.host_key_fingerprint("ssh-ed25519") in str(info.value)
        assert old in str(info.value) and known in str(info.value)
        assert_no_secret(info.value, target)
    with open(known, encoding="ascii") as handle:
        assert handle.read().splitlines() == lines


def test_known_hosts_from_ssh_keyscan_hashed_and_of_another_type(sshd, config_dir):
    """Lines an admin adds with `ssh-keyscan -H` work, and a host known only by
    its RSA key is asked for that key (not refused for showing ed25519 first)."""
    scan = subprocess.run(["ssh-keyscan", "-H", "-t", "rsa", "-p", str(sshd.port), "127.0.0.1"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True).stdout
    assert scan.startswith("|1|")
    with open(os.path.join(config_dir, "known_hosts"), "w", encoding="ascii") as handle:
        handle.write("# managed by hand\n" + scan)
    logs = Logs()
    make_target(sshd, config_dir, logs, host_key_policy="strict").check()
    with open(os.path.join(config_dir, "known_hosts"), encoding="ascii") as handle:
        assert handle.read() == "# managed by hand\n" + scan


@pytest.mark.parametrize("key_type", ["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"])
def test_pinned_key_line_and_fingerprint_accepted(sshd, config_dir, key_type):
    make_target(sshd, config_dir, host_key=sshd.host_key_line(key_type) + " a comment").check()
    make_target(sshd, config_dir, host_key=sshd.host_key_fingerprint(key_type)).check()
    assert not os.path.exists(os.path.join(config_dir, "known_hosts"))


def test_wrong_pins_are_mismatches(sshd, config_dir, tmp_path):
    stranger = generate_key(str(tmp_path / "stranger"), "ed25519")
    for pin in (stranger, fingerprint(stranger)):
        target = make_target(sshd, config_dir, host_key=pin)
        with pytest.raises(TargetError) as info:
            target.check()
        assert info.value.code == errors.HOST_KEY_MISMATCH
        assert fingerprint(stranger) in str(info.value)
        assert sshd.host_key_fingerprint("ssh-ed25519") in str(info.value)


# -- permissions, check mode, full disks ---------------------------------------------------------------
def test_read_only_folders_are_right_problems(sshd, config_dir, tmp_path):
    archive = make_archive(tmp_path)
    root_owned = sshd.make_dir(os.path.join(sshd.tmp, "root-owned"), owner=False)
    target = make_target(sshd, config_dir, path=root_owned)
    with pytest.raises(TargetError) as info:
        target.deliver(archive[0], name_for(7), archive[1], archive[2])
    assert info.value.code == errors.SFTP_RIGHT_PROBLEM
    with pytest.raises(TargetError) as info:
        make_target(sshd, config_dir, path=root_owned).check()
    assert info.value.code == errors.SFTP_RIGHT_PROBLEM
    assert os.listdir(root_owned) == []

    # The job folder exists but became read-only: refused at upload, nothing left.
    base = user_dir(sshd, "ro-job")
    make_target(sshd, config_dir, path=base).deliver(archive[0], name_for(8), archive[1], archive[2])
    os.chmod(job_folder(base), 0o555)
    with pytest.raises(TargetError) as info:
        make_target(sshd, config_dir, path=base).deliver(archive[0], name_for(9), archive[1], archive[2])
    assert info.value.code == errors.SFTP_RIGHT_PROBLEM
    assert os.listdir(job_folder(base)) == [name_for(8)]


def test_check_leaves_nothing_behind(sshd, config_dir):
    base = user_dir(sshd, "check")
    before = tree(sshd.tmp)
    make_target(sshd, config_dir, path=os.path.join(base, "not", "yet")).check()
    make_target(sshd, config_dir, path=base).check()
    make_target(sshd, config_dir).check()
    assert tree(sshd.tmp) == before


@pytest.fixture
def small_fs(sshd):
    """An 8 MiB tmpfs owned by the test user (skipped where mounting is not allowed)."""
    mount_point = user_dir(sshd, "small-fs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", mount_point],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % proc.stdout.strip())
    try:
        shutil.chown(mount_point, sshd.user, sshd.user)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=False)


def test_disk_full_refused_before_upload(sshd, config_dir, tmp_path, small_fs):
    archive = make_archive(tmp_path, 12 * 1000 * 1000)
    with pytest.raises(TargetError) as info:
        make_target(sshd, config_dir, path=small_fs).deliver(archive[0], name_for(10), archive[1], archive[2])
    assert info.value.code == errors.DISK_FULL
    assert os.listdir(job_folder(small_fs)) == []


def test_disk_full_during_upload(sshd, config_dir, tmp_path, small_fs, monkeypatch):
    """Space that vanishes after the early check (another writer): the failed
    write is seen, named diskFull, and nothing is left."""
    monkeypatch.setattr(sftp_mod.SftpTarget, "_check_space", lambda self, size: None)
    archive = make_archive(tmp_path, 12 * 1000 * 1000)
    with pytest.raises(TargetError) as info:
        make_target(sshd, config_dir, path=small_fs).deliver(archive[0], name_for(11), archive[1], archive[2])
    assert info.value.code == errors.DISK_FULL
    assert os.listdir(job_folder(small_fs)) == []


# -- connections cut mid-upload ------------------------------------------------------------------------
def watch_partial(folder: str, name: str, threshold: int, action, timeout: float = 60.0):
    """In a thread: once the partial of `name` has grown past `threshold`, run action()."""
    done = {"fired": False, "result": None}
    partial = os.path.join(folder, partial_name(name))

    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.path.getsize(partial) >= threshold:
                    done["result"] = action()
                    done["fired"] = True
                    return
            except OSError:
                pass
            time.sleep(0.005)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


def assert_sar_files_complete(folder: str, expected: dict):
    """Every *.sar in the folder is one we delivered, complete."""
    for fname in os.listdir(folder):
        if fname.endswith(".sar"):
            assert fname in expected, "unexpected %s" % fname
            assert sha256_of(os.path.join(folder, fname)) == expected[fname], "%s is incomplete" % fname


def test_connection_cut_mid_upload_resumes(sshd, config_dir, big_file):
    path, size, digest = big_file
    base = user_dir(sshd, "cut")
    folder = job_folder(base)
    os.makedirs(folder)
    shutil.chown(folder, sshd.user, sshd.user)
    shutil.chown(os.path.dirname(folder), sshd.user, sshd.user)
    logs = Logs()
    target = make_target(sshd, config_dir, logs, path=base, verify="full")
    thread, done = watch_partial(folder, name_for(12), size // 5, sshd.kill_sessions)
    try:
        result = target.deliver(path, name_for(12), size, digest)
    except TargetError as exc:  # a clean failure is acceptable, a broken archive is not
        result = exc
    thread.join(5)
    assert done["fired"] and done["result"] >= 1, "the upload finished before the cut"
    assert_sar_files_complete(folder, {name_for(12): digest})
    # With the listener up, the upload must have resumed, not restarted.
    assert not isinstance(result, TargetError), str(result)
    assert any("resuming upload at byte" in line and "at byte 0 " not in line for line in logs), logs
    assert os.listdir(folder) == [name_for(12)]


def test_server_gone_for_good_mid_upload(own_sshd, config_dir, big_file):
    path, size, digest = big_file
    folder = job_folder(own_sshd.home)
    logs = Logs()
    target = make_target(own_sshd, config_dir, logs, verify="size")

    def pull_the_plug():
        own_sshd.stop_listener()
        return own_sshd.kill_sessions()
    thread, done = watch_partial(folder, name_for(13), size // 5, pull_the_plug)
    with pytest.raises(TargetError) as info:
        target.deliver(path, name_for(13), size, digest)
    thread.join(5)
    assert done["fired"] and done["result"] >= 1, "the upload finished before the cut"
    assert info.value.code == errors.CONNECT_FAILED
    assert "127.0.0.1:%d" % own_sshd.port in str(info.value)
    assert "upload of %s interrupted" % name_for(13) in str(info.value)
    assert any("connection to 127.0.0.1:%d lost" % own_sshd.port in line for line in logs), logs
    assert_no_secret(info.value, target, logs)
    assert [f for f in os.listdir(folder) if f.endswith(".sar")] == []


# -- one home for transfers; the OpenSSH client's secrets and private files -----------------------------
def test_unreadable_archive_is_reported_as_the_archive(sshd, config_dir, tmp_path):
    """The source that cannot be opened is named as such (a local problem, not the
    server's), on both clients, and nothing is left on the server."""
    base = user_dir(sshd, "no-source")
    target = make_target(sshd, config_dir, path=base)
    missing = str(tmp_path / "gone.sar")
    with pytest.raises(TargetError) as info:
        target.deliver(missing, name_for(14), 1000, "0" * 64)
    assert info.value.code == errors.FAILED
    assert str(info.value).startswith("cannot read the archive %s: " % missing)
    assert os.listdir(job_folder(base)) == []


def parent_of(pid: str) -> int:
    try:
        with open("/proc/%s/stat" % pid, "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def scan_processes(secret: bytes) -> tuple:
    """(pids whose argv or environment holds `secret`, argv of the ssh client
    processes this test process started)."""
    leaks, clients = [], []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        ours = parent_of(entry) == os.getpid()
        for what in ("cmdline", "environ"):
            try:
                with open("/proc/%s/%s" % (entry, what), "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            if secret in data:
                leaks.append((int(entry), what))
            if what == "cmdline" and ours and sftp_mod.SSH_HOST_ALIAS.encode() in data:
                clients.append(data.split(b"\0"))
    return leaks, clients


def test_password_never_in_any_argv_or_environment(sshd, config_dir, big_file, ssh_client, monkeypatch):
    """During a whole upload with password login, no process (the ssh client, its
    askpass helper, anything else) carries the password in its argv or
    environment, and no file written for the run holds it."""
    written = []
    write_private = sftp_mod._write_private  # pylint: disable=protected-access

    def spy(path, data, mode=0o600):
        write_private(path, data, mode)
        written.append((os.path.basename(path), data, stat.S_IMODE(os.stat(path).st_mode)))
    monkeypatch.setattr(sftp_mod, "_write_private", spy)
    path, size, digest = big_file
    secret = sshd.password.encode()
    found = {"leaks": [], "clients": []}
    done = threading.Event()

    def watch():
        while not done.is_set():
            leaks, clients = scan_processes(secret)
            found["leaks"] += leaks
            found["clients"] += clients
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        base = user_dir(sshd, "no-leak")
        make_target(sshd, config_dir, path=base).deliver(path, name_for(15), size, digest)
    finally:
        done.set()
        thread.join(30)
    assert found["leaks"] == []
    assert sha256_of(os.path.join(job_folder(base), name_for(15))) == digest
    if ssh_client == "openssh":
        assert found["clients"], "no ssh client seen during the upload"
        assert all(secret not in b"\0".join(argv) for argv in found["clients"])
        assert [(name, mode) for name, _data, mode in written] == [("askpass", 0o700)]
        assert all(secret not in data for _name, data, _mode in written)
    else:
        assert found["clients"] == [] and written == []


def run_files(base: str) -> list:
    """Every file and folder below `base` (the private folders of the SSH client) with its mode."""
    out = []
    for root, dirs, files in os.walk(base):
        for name in dirs + files:
            full = os.path.join(root, name)
            out.append((os.path.relpath(full, base), stat.S_IMODE(os.lstat(full).st_mode)))
    return sorted(out)


@pytest.mark.parametrize("login", ["password", "key", "key-with-passphrase"])
def test_openssh_private_files_modes_and_cleanup(sshd, config_dir, tmp_path, ssh_client, monkeypatch, login):
    """The OpenSSH client's run files: a 0700 folder of its own holding a 0600
    known_hosts with only the pinned key; the key (decrypted, 0600) or the askpass
    helper (0700) and its FIFO (0600) gone once ssh is logged in; nothing left
    after the session, after a refused login, or after a refused host key."""
    if ssh_client != "openssh":
        pytest.skip("files of the OpenSSH client")
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(sftp_mod, "TEMP_BASES", (str(runs),))
    made = []
    write_private = sftp_mod._write_private  # pylint: disable=protected-access
    mkfifo = os.mkfifo

    def spy_write(path, data, mode=0o600):
        write_private(path, data, mode)
        made.append((os.path.basename(path), stat.S_IMODE(os.stat(path).st_mode), data))

    def spy_fifo(path, mode=0o666, *args, **kwargs):
        mkfifo(path, mode, *args, **kwargs)
        made.append((os.path.basename(path), stat.S_IMODE(os.stat(path).st_mode), b""))
    monkeypatch.setattr(sftp_mod, "_write_private", spy_write)
    monkeypatch.setattr(os, "mkfifo", spy_fifo)
    options = {}
    if login != "password":
        passphrase = "pass phrase 'x'" if login == "key-with-passphrase" else ""
        key_path = str(tmp_path / "id")
        sshd.add_authorized_key(generate_key(key_path, "ed25519", passphrase=passphrase))
        with open(key_path, encoding="ascii") as handle:
            options = {"private_key": handle.read(), "private_key_passphrase": passphrase or None}
    target = make_target(sshd, config_dir, **options)
    target.connect()
    try:
        workdir = target.ssh.workdir
        assert os.path.dirname(workdir) == str(runs)
        assert run_files(str(runs)) == [(os.path.basename(workdir), 0o700),
                                        (os.path.join(os.path.basename(workdir), "known_hosts"), 0o600)]
        with open(os.path.join(workdir, "known_hosts"), encoding="ascii") as handle:
            assert handle.read() == "%s %s\n" % (sftp_mod.SSH_HOST_ALIAS, sshd.host_key_line("ssh-ed25519"))
        assert target.listdir() == []  # the session works
    finally:
        target.close()
    assert run_files(str(runs)) == []
    if login == "password":
        assert [(name, mode) for name, mode, _data in made] == [("answer", 0o600), ("askpass", 0o700)]
        assert sshd.password.encode() not in made[1][2]
    else:
        assert [(name, mode) for name, mode, _data in made] == [("id", 0o600)]
        key_file = made[0][2]
        assert key_file.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        # Unencrypted for ssh (no passphrase prompt), the same key.
        from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
        loaded = serialization.load_ssh_private_key(key_file, None)
        public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        with open(key_path + ".pub", encoding="ascii") as handle:
            assert public.decode() == " ".join(handle.read().split()[:2])

    # Failures leave nothing either: a refused login, a refused host key.
    stranger = generate_key(str(tmp_path / "stranger"), "ed25519")
    for bad, code in (({"password": "wrong-" + sshd.password}, errors.SFTP_RIGHT_PROBLEM),
                      ({"host_key": stranger}, errors.HOST_KEY_MISMATCH)):
        with pytest.raises(TargetError) as info:
            make_target(sshd, config_dir, **bad).check()
        assert info.value.code == code
        assert run_files(str(runs)) == []


def test_openssh_known_hosts_holds_the_key_a_fingerprint_names(sshd, config_dir, tmp_path, ssh_client, monkeypatch):
    """A fingerprint pin (of the server's RSA key, not the key it shows first) and
    accept_new on first contact: the run's known_hosts holds the full key the
    policy accepted, and only that one."""
    if ssh_client != "openssh":
        pytest.skip("files of the OpenSSH client")
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(sftp_mod, "TEMP_BASES", (str(runs),))
    for options, expected in (({"host_key": sshd.host_key_fingerprint("ssh-rsa")}, sshd.host_key_line("ssh-rsa")),
                              ({"host_key_policy": "accept_new"}, sshd.host_key_line("ssh-ed25519"))):
        target = make_target(sshd, config_dir, **options)
        target.connect()
        try:
            with open(os.path.join(target.ssh.workdir, "known_hosts"), encoding="ascii") as handle:
                assert handle.read() == "%s %s\n" % (sftp_mod.SSH_HOST_ALIAS, expected)
        finally:
            target.close()
    with open(os.path.join(config_dir, "known_hosts"), encoding="ascii") as handle:
        assert handle.read() == "[127.0.0.1]:%d %s\n" % (sshd.port, sshd.host_key_line("ssh-ed25519"))
    assert run_files(str(runs)) == []


def test_client_choice(sshd, config_dir, monkeypatch):
    """auto: OpenSSH where a recent `ssh` exists, paramiko where it does not, and
    paramiko for a password askpass cannot hand over (a line break in it)."""
    monkeypatch.setattr(sftp_mod, "CLIENT", "auto")
    target = make_target(sshd, config_dir)
    assert bool(target._openssh_path()) == bool(sftp_mod.openssh_client())  # pylint: disable=protected-access
    assert make_target(sshd, config_dir, password="two\nlines")._openssh_path() is None  # pylint: disable=protected-access
    monkeypatch.setattr(sftp_mod, "SSH_PROGRAM", "no-such-ssh-client")
    target = make_target(sshd, config_dir)
    target.connect()
    try:
        assert target.ssh is None and target.transport is not None
        assert target.listdir() is not None
    finally:
        target.close()


def test_stalled_session_times_out_and_resumes(sshd, config_dir, big_file, monkeypatch):
    """The server's session stops answering (SIGSTOP) past the I/O timeout: the
    client gives it up, reconnects and resumes from the confirmed prefix."""
    monkeypatch.setattr(sftp_mod.SftpTarget, "IO_TIMEOUT", 2.0)
    path, size, digest = big_file
    base = user_dir(sshd, "stalled")
    folder = job_folder(base)
    os.makedirs(folder)
    shutil.chown(folder, sshd.user, sshd.user)
    shutil.chown(os.path.dirname(folder), sshd.user, sshd.user)
    logs = Logs()
    target = make_target(sshd, config_dir, logs, path=base, verify="full")

    def stall():
        pids = sshd.session_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        threading.Timer(4.0, lambda: [os.kill(pid, signal.SIGCONT) for pid in pids]).start()
        return len(pids)
    thread, done = watch_partial(folder, name_for(16), size // 5, stall)
    result = target.deliver(path, name_for(16), size, digest)
    thread.join(5)
    assert done["fired"] and done["result"] >= 1, "the upload finished before the stall"
    assert result["bytes"] == size
    assert any("lost" in line for line in logs), logs
    assert any("resuming upload at byte" in line and "at byte 0 " not in line for line in logs), logs
    time.sleep(0.5)
    assert os.listdir(folder) == [name_for(16)]
    assert sha256_of(os.path.join(folder, name_for(16))) == digest


def test_old_server_openssh_cannot_talk_to_goes_through_paramiko(config_dir, tmp_path, ssh_client, monkeypatch):
    """A server that only offers a cipher today's OpenSSH client no longer enables
    by default (CBC): the target says so and carries the session with paramiko,
    host key policy unchanged."""
    if ssh_client != "openssh":
        pytest.skip("the OpenSSH client's fallback")
    monkeypatch.setattr(sftp_mod, "CLIENT", "auto")
    server = SshServer(host_key_types=("ed25519",))
    server._prepare()  # pylint: disable=protected-access  # one line more in its config
    try:
        with open(server.config_path, "a", encoding="ascii") as handle:
            handle.write("Ciphers aes128-cbc\n")
        server.start()
        logs = Logs()
        archive = make_archive(tmp_path)
        target = make_target(server, config_dir, logs)
        target.deliver(archive[0], name_for(17), archive[1], archive[2])
        assert sha256_of(os.path.join(job_folder(server.home), name_for(17))) == archive[2]
        assert any("the OpenSSH client cannot talk to 127.0.0.1:%d" % server.port in line and "using paramiko" in line
                   and "cipher" in line for line in logs), logs
        # A different key is still refused, whichever client finds out.
        stranger = generate_key(str(tmp_path / "stranger"), "ed25519")
        with pytest.raises(TargetError) as info:
            make_target(server, config_dir, host_key=stranger).check()
        assert info.value.code == errors.HOST_KEY_MISMATCH
    finally:
        server.stop()


def test_openssh_folders_of_killed_runs_are_swept(sshd, config_dir, tmp_path, ssh_client, monkeypatch):
    """A run killed while ssh logged in cannot clean up (a decrypted key may be
    there): the next connection removes such folders of processes that are gone,
    and leaves those of living ones alone."""
    if ssh_client != "openssh":
        pytest.skip("files of the OpenSSH client")
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setattr(sftp_mod, "TEMP_BASES", (str(runs),))
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = runs / ("sar-ssh-%d-left" % gone.pid)
    alive = runs / ("sar-ssh-%d-busy" % os.getppid())
    for folder in (dead, alive):
        folder.mkdir(mode=0o700)
        (folder / "id").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    target = make_target(sshd, config_dir)
    target.connect()
    target.close()
    assert sorted(os.listdir(str(runs))) == [alive.name]
