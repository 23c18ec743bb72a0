# SPDX-License-Identifier: GPL-3.0-or-later
"""Proof suite, issue 7 - kill anywhere.

30 SIGKILLs (of the whole process group: the `sar-backup` process and every
pg_dump/psql it started) at seeded random moments over the build, every
target's upload, retention and restore. One sample appliance
(tests/harness/appliance.py on a private PostgreSQL cluster, plus 16 MiB of
incompressible voicemail, so every phase lasts long enough to be hit; all three
categories, so a restore replaces database tables and trees), one job with four
targets written in parallel: `local`, `sftp` (a real sshd), `smb` (a real smbd)
and `dropbox` (the HTTPS emulator), each with `keep: 2` so retention runs in
every run.

Each round (the plan below is drawn from a seeded RNG, so a failure names a
round that can be replayed; `SAR_KILL_SEED` picks another seed, `SAR_SOAK=1`
multiplies the rounds by `SAR_SOAK_FACTOR`, default 10, for `make soak`):

- a backup round changes the appliance's data (rows, a voicemail, a config
  line), starts `sar-backup run` in its own process group and kills the group
  at a random moment of one phase;
- a restore round changes the data, starts `sar-backup restore --job ... --target
  N --yes` (the newest archive, from a random target) and kills it likewise.

How a moment is chosen: the child is the real CLI (`cli.main`) behind a small
wrapper that only decides *when* (the engine code is unchanged, as in
tests/integration/test_reliability.py). In `pause` mode the wrapper stops the
thread that reaches the chosen point (a random byte of the sources read by the
build, of the archive read by one target's upload or of the restore's download,
verification or extraction; just before a target's post-commit check; before or
after a retention delete; before one of the restore's tree renames) and writes
a marker; the test then waits a further random 0-250 ms (the other targets' threads
go on meanwhile) and kills. In `mark` mode the wrapper only writes the marker
when the phase starts (pg_dump, psql of the restore) and the test kills after a
random delay inside the phase. `time` rounds kill at a uniformly random time
after the start, over the length of a calibrated run.

After every kill:
- no process of the killed group is left;
- on every target (the local folder, the sftp folder and the smb share folder on
  disk, the emulator's store) and in staging every `*.sar` verifies
  (`archive.verify`, or is byte-identical to a copy that did); nothing else
  than this job's archives and its own `.partial` names is in a job folder;
- nothing lost: on each target the archives present before the round are all
  still there, unless the killed run committed its new archive on that target
  and then pruned, and even then the newest `keep` of them are there;
- the status file is either untouched or a complete result naming the run's
  archive (written atomically before the kill);
- the maintenance lock is free.
Then the next run (or, after a restore round, the next restore) runs without a
pause point and must succeed: every target `successful`, the new archive on
each, retention back to `keep`, no `.partial` left on any target, staging
empty. After a restore it compares every database table and every tree of the
profile with what the appliance held when the restored archive was made.

Per 30 kills: build 3 (one while pg_dump runs), uploads 8 (2 per target), just
committed 2, retention 4 (1 per target), random time 6 (4 runs, 2 restores),
restore 7 (download 2, verification, extraction, tree swap 2, database).
`test_kill_count` prints what each kill hit (`-rP` or `-s`).

Needs root (sshd, smbd, useradd) and PostgreSQL. About 2.5 minutes of CPU
(pytest, the CLI children, the servers); 5 minutes wall on a 2-core machine
running other test suites at load 6.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
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

from harness import appliance as sample  # noqa: E402
from harness.dropbox_emulator import DropboxEmulator  # noqa: E402
from harness.postgres import PostgresCluster  # noqa: E402
from harness.smbd import SmbServer  # noqa: E402
from harness.sshd import SshServer  # noqa: E402

from ansible_collections.sar.backup.plugins.module_utils import archive  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError, LockBusy  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.job import validate_job  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.lock import MaintenanceLock  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings  # noqa: E402
from ansible_collections.sar.backup.plugins.module_utils.targets.base import (  # noqa: E402
    ROOT_DIR, archive_pattern, partial_pattern)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sshd, smbd, useradd, PostgreSQL)")

JOB = "nightly"
KEEP = 2
MB = 1024 * 1024
BULK_FILES = 8  # x 2 MiB of random voicemail: ~16 MiB archives
BULK_SIZE = 2 * MB
DROPBOX_BASE = "/Backups/PBX"
TARGETS = ("local", "sftp", "smb", "dropbox")

SEED = int(os.environ.get("SAR_KILL_SEED") or 20261205)
SOAK = os.environ.get("SAR_SOAK", "") not in ("", "0")
FACTOR = int(os.environ.get("SAR_SOAK_FACTOR") or 10) if SOAK else 1


# -- the plan: 30 kills, drawn from the seed -----------------------------------------------
def make_plan(seed: int, factor: int) -> list:
    """[(kind, point, params)], shuffled. Per 30: build 3, upload 8 (2 per target), commit 2,
    prune 4 (1 per target), random time 6 (4 runs, 2 restores), restore 7."""
    rng = random.Random(seed)
    plan = []
    for _copy in range(factor):
        plan += [("run", "build", {"fraction": rng.uniform(0.02, 0.98)}) for dummy in range(2)]
        plan.append(("run", "pgdump", {"delay": rng.uniform(0.0, 0.08)}))
        for target in TARGETS:
            for dummy in range(2):
                if rng.random() < 0.75:
                    plan.append(("run", "upload", {"target": target, "fraction": rng.uniform(0.0, 1.0)}))
                else:
                    plan.append(("run", "upload-timed", {"target": target, "delay": rng.uniform(0.0, 0.3)}))
        plan += [("run", "commit", {"target": t}) for t in rng.sample(TARGETS, 2)]
        plan += [("run", "prune", {"target": t, "when": rng.choice(("before", "after"))}) for t in TARGETS]
        plan += [("run", "time", {"fraction": rng.random()}) for dummy in range(4)]
        plan += [("restore", "time", {"target": rng.randrange(4), "fraction": rng.random()}) for dummy in range(2)]
        plan += [("restore", "download", {"target": rng.randrange(1, 4), "fraction": rng.random()}) for dummy in range(2)]
        plan.append(("restore", "verify", {"target": rng.randrange(4), "fraction": rng.random()}))
        plan.append(("restore", "extract", {"target": rng.randrange(4), "fraction": rng.random()}))
        plan += [("restore", "swap", {"target": rng.randrange(4), "index": rng.randrange(8)}) for dummy in range(2)]
        plan.append(("restore", "db", {"target": rng.randrange(4), "delay": rng.uniform(0.0, 0.15)}))
    rng.shuffle(plan)
    for round_no, (_kind, _point, params) in enumerate(plan):
        params["extra"] = rng.uniform(0.0, 0.25)  # after a pause marker: the other threads go on
        params["seed"] = rng.randrange(1 << 30)  # for the data changed before the round
        params["round"] = round_no
    return plan


PLAN = make_plan(SEED, FACTOR)


def plan_id(entry) -> str:
    kind, point, params = entry
    what = [kind, point]
    if "target" in params:
        what.append(str(params["target"]))
    return "%02d-%s" % (params["round"], "-".join(what))


# -- the child: the real CLI behind a wrapper that only decides when ---------------------------
CHILD = r'''
import builtins, errno, os, sys, threading, time
sys.path.insert(0, os.environ["SAR_TEST_COLLECTIONS"])
from ansible_collections.sar.backup.plugins.module_utils import archive, cli, restore, runner, sources
from ansible_collections.sar.backup.plugins.module_utils.targets import base

MARKER = os.environ.get("SAR_TEST_MARKER", "")
STARTED = os.environ.get("SAR_TEST_STARTED", "")
POINT = os.environ.get("SAR_TEST_POINT", "").split(":") if os.environ.get("SAR_TEST_POINT") else []
MODE = os.environ.get("SAR_TEST_MODE", "pause")
SOURCES = os.environ.get("SAR_TEST_SOURCES", "")
_open, _rename = builtins.open, os.rename
_lock = threading.Lock()
_fired = []
local = threading.local()


def note(what):
    with _open(MARKER + ".tmp", "w") as handle:
        handle.write(what)
    os.replace(MARKER + ".tmp", MARKER)


def hit(what):
    """The chosen point: pause this thread forever (until SIGKILL), or only say so."""
    with _lock:
        if _fired:
            return
        _fired.append(what)
    note(what)
    if MODE == "pause":
        while True:
            time.sleep(3600)


class Counting:
    """A file object that calls hit() once `threshold` bytes were read through it
    (checked before each read), or when it is closed before that."""

    def __init__(self, handle, threshold, what, counter=None, fallback=True):
        self.handle, self.threshold, self.what, self.fallback = handle, threshold, what, fallback
        self.counter = counter if counter is not None else [0]

    def _check(self):
        if self.counter[0] >= self.threshold:
            hit("%s at byte %d" % (self.what, self.counter[0]))

    def read(self, size=-1):
        self._check()
        data = self.handle.read(size)
        self.counter[0] += len(data)
        return data

    def readinto(self, buf):
        self._check()
        got = self.handle.readinto(buf)
        self.counter[0] += got or 0
        return got

    def close(self):
        if self.fallback:
            hit("%s complete (%d bytes), closing" % (self.what, self.counter[0]))
        self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self.handle, name)


# -- the run's start time (archive names carry it to the second) -------------------------
_init = runner.Run.__init__


def run_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if STARTED:
        with _open(STARTED, "w") as handle:
            handle.write(repr(self.started.timestamp()))


runner.Run.__init__ = run_init

kind = POINT[0] if POINT else ""
build_counter = [0]


def open_hook(file, mode="r", *args, **kwargs):
    handle = _open(file, mode, *args, **kwargs)
    if mode != "rb" or not isinstance(file, str):
        return handle
    if kind == "build" and (file.startswith(SOURCES + "/") or file.endswith(".pgdump")):
        return Counting(handle, int(POINT[1]), "build, reading %s" % os.path.basename(file), build_counter,
                        fallback=False)
    if kind == "upload" and file.endswith(".sar") and getattr(local, "target", None) == POINT[1]:
        size = os.path.getsize(file)
        return Counting(handle, int(float(POINT[2]) * size), "%s upload of %d bytes" % (POINT[1], size))
    if kind in ("verify", "extract") and file.endswith(".sar") and getattr(local, "phase", None) == kind:
        size = os.path.getsize(file)
        return Counting(handle, int(float(POINT[1]) * size), "restore %s of %d bytes" % (kind, size))
    return handle


builtins.open = open_hook

if kind == "upload" and POINT[1] == "local":
    # A local target on staging's filesystem takes the archive by a hard link (nothing to read, no moment
    # inside): this round pauses a copy, as on a target on another filesystem (EXDEV).
    def no_link(*_args, **_kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    os.link = no_link

_deliver_one = runner.Run.deliver_one


def deliver_one(self, index, options, path, archive_info):
    local.target = options["type"]
    if kind == "upload-timed" and options["type"] == POINT[1]:
        note("%s upload starts" % options["type"])  # mark only: the test kills after a delay
    try:
        return _deliver_one(self, index, options, path, archive_info)
    finally:
        local.target = None


runner.Run.deliver_one = deliver_one

if kind == "commit":
    _verify = base.Target.verify

    def verify(self, name, size, sha256):
        if self.TYPE == POINT[1]:
            hit("%s: %s committed, before its check" % (self.TYPE, name))
        return _verify(self, name, size, sha256)

    base.Target.verify = verify

if kind == "prune":
    _prune = base.Target.prune

    def prune(self, *args, **kwargs):
        if self.TYPE != POINT[1]:
            return _prune(self, *args, **kwargs)
        remove = self.remove

        def counted(name):
            if POINT[2] == "before":
                hit("%s: retention, before removing %s" % (self.TYPE, name))
            remove(name)
            hit("%s: retention, after removing %s" % (self.TYPE, name))

        self.remove = counted
        out = _prune(self, *args, **kwargs)
        hit("%s: retention done, nothing removed" % self.TYPE)
        return out

    base.Target.prune = prune

if kind in ("pgdump", "db"):
    _run = sources._run
    tool = "pg_dump" if kind == "pgdump" else "psql"

    def run_tool(argv, *args, **kwargs):
        if os.path.basename(argv[0]) == tool:
            note("%s starts" % tool)  # mark only: the test kills while it runs
        return _run(argv, *args, **kwargs)

    sources._run = run_tool

if kind == "download":
    _downloaded = restore._downloaded

    def downloaded(target, name, size, workdir, log=None):
        open_read = target.open_read
        target.open_read = lambda n: Counting(open_read(n), int(float(POINT[1]) * size), "download of %s" % n)
        return _downloaded(target, name, size, workdir, log)

    restore._downloaded = downloaded

if kind in ("verify", "extract"):
    def phased(func, phase):
        def wrapper(*args, **kwargs):
            local.phase = phase
            try:
                return func(*args, **kwargs)
            finally:
                local.phase = None
        return wrapper

    archive.scan = phased(archive.scan, "verify")
    archive.extract_routed = phased(archive.extract_routed, "extract")

if kind == "swap":
    renames = [0]

    def rename_hook(src, dst, *args, **kwargs):
        if ".sar-old-" in str(src) + str(dst) or ".sar-restore-" in str(src):
            if renames[0] == int(POINT[1]):
                hit("restore: before tree rename %d (%s -> %s)" % (renames[0], src, dst))
            renames[0] += 1
        return _rename(src, dst, *args, **kwargs)

    os.rename = rename_hook

sys.exit(cli.main(sys.argv[1:]))
'''


# -- helpers -------------------------------------------------------------------------------------
def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: str, size: int, rng: random.Random) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(rng.randbytes(size))


def read(path: str, tail: int = 6000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()[-tail:]
    except OSError:
        return ""


def group_alive(pgid: int) -> list:
    """pids still in process group `pgid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def newest(names, count: int = KEEP) -> set:
    return set(sorted(names, reverse=True)[:count])


class World:
    """The appliance, the servers, the job, and what the rounds learnt: verified
    archives (name -> sha256) and the appliance's data when each archive was made."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.cluster = self.sshd = self.smbd = self.emu = None
        self.verified = {}
        self.hashed = {}
        self.snapshots = {}
        self.last_started = 0.0
        self.run_seconds = []
        self.restore_seconds = []
        self.runs = 0
        self.kills = []

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> "World":
        self.cluster = PostgresCluster().start()
        self.root = os.path.join(self.tmp, "appliance")
        self.profile = sample.build_appliance(self.root, self.cluster)
        bulk = random.Random(SEED)
        for i in range(BULK_FILES):
            ext = sample.EXTENSIONS[i % len(sample.EXTENSIONS)]
            random_file(os.path.join(sample.voicemail_dir(self.root, ext), "bulk%04d.wav" % i), BULK_SIZE, bulk)
        self.sshd = SshServer().start()
        self.smbd = SmbServer().start()
        self.emu = DropboxEmulator(self.tmp).start()
        self.config_dir = os.path.join(self.tmp, "etc")
        self.store = Store(self.config_dir)
        self.local_base = os.path.join(self.tmp, "local-target")
        os.makedirs(self.local_base)  # a local target's base must exist (a missing one is mountfail)
        self.settings = validate_settings({
            "profile": self.profile,
            "archive_dir": os.path.join(self.tmp, "archives"),
            "staging_dir": os.path.join(self.tmp, "staging"),
            "status_dir": os.path.join(self.tmp, "status"),
            "lock_path": os.path.join(self.tmp, "lock", "sar-backup.lock"),
        })
        self.store.write_settings(self.settings)
        self.job = validate_job({
            "name": JOB, "data": ["core", "cdr_voicemail", "announcements"], "report_to": [],
            "targets": [
                {"type": "local", "path": self.local_base, "keep": KEEP},
                {"type": "sftp", "server": "127.0.0.1", "port": self.sshd.port, "username": self.sshd.user,
                 "password": self.sshd.password, "host_key": self.sshd.host_key_line("ssh-ed25519"), "keep": KEEP},
                {"type": "smb", "server": "127.0.0.1", "port": self.smbd.port, "share": "share",
                 "username": self.smbd.user, "password": self.smbd.password, "keep": KEEP},
                {"type": "dropbox", "access_token": self.emu.access_token, "path": DROPBOX_BASE, "keep": KEEP},
            ]})
        self.store.write_job(self.job)
        self.child = os.path.join(self.tmp, "child.py")
        with open(self.child, "w", encoding="utf-8") as handle:
            handle.write(CHILD)
        return self

    def stop(self) -> None:
        for server in (self.emu, self.smbd, self.sshd, self.cluster):
            if server is not None:
                try:
                    server.stop()
                except Exception:  # pylint: disable=broad-except
                    pass

    # -- where the archives are ---------------------------------------------------------------
    @property
    def staging(self) -> str:
        return self.settings["staging_dir"]

    def folders(self) -> dict:
        return {
            "local": os.path.join(self.local_base, ROOT_DIR, JOB),
            "sftp": os.path.join(self.sshd.home, ROOT_DIR, JOB),
            "smb": os.path.join(self.smbd.share_path("share"), ROOT_DIR, JOB),
        }

    def files(self, target: str) -> dict:
        """name -> path of the bytes on disk, for every file in the target's job folder."""
        if target == "dropbox":
            folder = "%s/%s/%s" % (DROPBOX_BASE, ROOT_DIR, JOB)
            out = {}
            for name in self.emu.list_names(folder):
                node = self.emu.node(folder + "/" + name)
                out[name] = node.blob if node is not None and node.kind == "file" else None
            return out
        folder = self.folders()[target]
        if not os.path.isdir(folder):
            return {}
        return {name: os.path.join(folder, name) for name in os.listdir(folder)}

    def archives(self, target: str) -> set:
        return {n for n in self.files(target) if n.endswith(".sar")}

    def state(self) -> dict:
        return {t: self.archives(t) for t in TARGETS}

    # -- checks ------------------------------------------------------------------------------------
    def digest(self, path: str) -> str:
        """sha256 of a file; a file not touched since it was hashed (same inode, size and
        ctime: any write, rename or truncation changes the ctime) is not read again."""
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_ctime_ns, st.st_mtime_ns)
        if key not in self.hashed:
            self.hashed[key] = sha256(path)
        return self.hashed[key]

    def check_archive(self, name: str, path: str, where: str) -> None:
        """Complete: byte-identical to a copy archive.verify accepted, or accepted now."""
        assert path is not None, "%s: %s is not a file" % (where, name)
        digest = self.digest(path)
        if name in self.verified:
            assert digest == self.verified[name], "%s: %s differs from the verified copy (incomplete?)" % (where, name)
            return
        try:
            info = archive.verify(path)
        except ArchiveError as exc:
            pytest.fail("%s: %s is visible under its .sar name but does not verify: %s" % (where, name, exc))
        assert info["sha256"] == digest
        assert info["manifest"]["job"] == JOB
        self.verified[name] = digest

    def check_targets(self, allow_partials: bool = True) -> dict:
        """Every file in every job folder is one of ours; every .sar is complete. The state."""
        job_archive, job_partial = archive_pattern(JOB), partial_pattern(JOB)
        for target in TARGETS:
            for name, path in self.files(target).items():
                where = "target %s" % target
                if name.endswith(".sar"):
                    assert job_archive.match(name), "%s: unexpected %s" % (where, name)
                    self.check_archive(name, path, where)
                else:
                    assert allow_partials and target != "dropbox" and job_partial.match(name), \
                        "%s: unexpected file %s" % (where, name)
        for current, _dirs, names in os.walk(self.staging):
            for name in names:
                if name.endswith(".sar"):
                    self.check_archive(name, os.path.join(current, name), "staging %s" % current)
        return self.state()

    def assert_lock_free(self) -> None:
        lock = MaintenanceLock(self.settings["lock_path"])
        try:
            lock.acquire(wait=0)
        except LockBusy as exc:
            pytest.fail("the maintenance lock is still taken after the kill: %s" % exc)
        lock.release()

    def status(self):
        path = os.path.join(self.settings["status_dir"], "%s.json" % JOB)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)

    # -- the appliance's data ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        trees = {}
        for cat, spec in sorted(self.profile["categories"].items()):
            for path in spec["paths"]:
                trees[path] = sample.tree_snapshot(path) if os.path.isdir(path) else None
        return {"db": self.tables(), "trees": trees}

    def tables(self) -> dict:
        """{table: rows as JSON text, sorted} of every table in schema public, in one psql call."""
        names = sample.table_names(self.cluster)
        sql = " UNION ALL ".join(
            "SELECT '%s', coalesce(json_agg(r ORDER BY r), '[]')::text FROM "
            "(SELECT row_to_json(t)::text AS r FROM public.%s t) AS s" % (name, name) for name in names)
        out = {}
        for line in self.cluster.psql(sql, db=sample.DATABASE).splitlines():
            name, _sep, rows = line.partition("|")
            out[name] = rows
        assert sorted(out) == names
        return out

    def change_data(self, seed: int) -> None:
        """What users do between two backups: calls, users, a voicemail, a config line."""
        rng = random.Random(seed)
        sample.add_rows(self.cluster, "cdr", rng.randrange(1, 6))
        sample.add_rows(self.cluster, "users", 1)
        sample.add_rows(self.cluster, "chat_history", rng.randrange(1, 4))
        sample.add_voicemail(self.root, rng.choice(sample.EXTENSIONS), seed=rng.randrange(1 << 30), seconds=0.2)
        with open(os.path.join(self.root, "etc/asterisk/extensions.conf"), "a", encoding="utf-8") as handle:
            handle.write("; change %d\n" % seed)

    # -- processes -------------------------------------------------------------------------------------
    def start_child(self, argv: list, point=None, mode: str = "pause") -> tuple:
        marker = os.path.join(self.tmp, "marker")
        started = os.path.join(self.tmp, "started")
        log = os.path.join(self.tmp, "child-%03d.log" % self.runs)
        self.runs += 1
        for path in (marker, started):
            if os.path.exists(path):
                os.unlink(path)
        env = dict(os.environ, SAR_TEST_COLLECTIONS=FARM, SAR_TEST_MARKER=marker, SAR_TEST_STARTED=started,
                   SAR_TEST_MODE=mode, SAR_TEST_SOURCES=self.root, **self.emu.env())
        if point:
            env["SAR_TEST_POINT"] = point
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, self.child, "--config-dir", self.config_dir] + argv,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True)
        return proc, marker, started, log

    def wait_new_second(self) -> None:
        """Archive names carry their run's start to the second: never two runs in one second."""
        while time.time() < int(self.last_started) + 1.05:
            time.sleep(0.02)

    def note_started(self, started: str) -> None:
        try:
            with open(started, encoding="ascii") as handle:
                self.last_started = max(self.last_started, float(handle.read()))
        except (OSError, ValueError):
            pass

    def finish(self, proc, log: str, what: str, limit: float = 180) -> None:
        try:
            rc = proc.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail("%s hung:\n%s" % (what, read(log)))
        assert rc == 0, "%s failed (exit %s):\n%s" % (what, rc, read(log))

    def good_run(self) -> dict:
        """A run without pause point: it must succeed everywhere. Returns the status."""
        self.wait_new_second()
        before = self.check_targets()
        snap = self.snapshot()
        begin = time.monotonic()
        proc, _marker, started, log = self.start_child(["run", JOB])
        self.finish(proc, log, "the next run")
        self.run_seconds.append(time.monotonic() - begin)
        self.note_started(started)
        status = self.status()
        assert status["code"] == "successful", status
        assert [(t["type"], t["code"]) for t in status["targets"]] == [(t, "successful") for t in TARGETS], status
        name = status["archive"]["name"]
        self.snapshots[name] = snap
        after = self.check_targets(allow_partials=False)  # the killed run's partials were pruned
        for target in TARGETS:
            assert after[target] == newest(before[target] | {name}), (target, before[target], after[target])
            assert self.verified[name] == status["archive"]["sha256"]
        assert os.listdir(self.staging) == [], "leftovers in staging after a successful run: %s" % os.listdir(self.staging)
        self.assert_lock_free()
        return status

    def good_restore(self, target: int) -> None:
        name = sorted(self.archives(TARGETS[target]))[-1]
        begin = time.monotonic()
        proc, _marker, _started, log = self.start_child(["restore", "--job", JOB, "--target", str(target), "--yes"])
        self.finish(proc, log, "the restore of %s from %s" % (name, TARGETS[target]))
        self.restore_seconds.append(time.monotonic() - begin)
        assert "OK %s: verified" % name in read(log), read(log)
        assert name in self.snapshots, "no record of the appliance's data when %s was made" % name
        expected = self.snapshots[name]
        now = self.snapshot()
        assert now["db"] == expected["db"], "the database differs from archive %s after its restore" % name
        for path, tree in expected["trees"].items():
            assert now["trees"][path] == tree, "%s differs from archive %s after its restore" % (path, name)
        self.assert_lock_free()
        # docs/restore.md: "What a killed restore leaves is cleaned up later: `.restore-*` in staging by
        # the next run or restore" (and docs/reliability.md: "Any run (of any job) and any restore removes
        # the work folders that killed runs and restores left in staging").
        assert os.listdir(self.staging) == [], \
            "the restore left, or did not remove, work folders in staging: %s" % os.listdir(self.staging)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(str(tmp_path_factory.mktemp("kills")))
    try:
        w.start()
        # Two good runs (retention has something to remove from then on), and one good
        # restore: they also calibrate the `time` rounds.
        w.good_run()
        w.change_data(1)
        w.good_run()
        w.change_data(2)
        w.good_restore(0)
        yield w
    finally:
        w.stop()


# -- the rounds -------------------------------------------------------------------------------------
def point_of(world: World, kind: str, point: str, params: dict) -> tuple:
    """(SAR_TEST_POINT, mode, delay after the marker or None for `time`)."""
    extra = params["extra"]
    if point == "build":
        total = BULK_FILES * BULK_SIZE
        return "build:%d" % int(params["fraction"] * total), "pause", extra
    if point == "pgdump":
        return "pgdump", "mark", params["delay"]
    if point == "upload":
        return "upload:%s:%.4f" % (params["target"], params["fraction"]), "pause", extra
    if point == "upload-timed":
        return "upload-timed:%s" % params["target"], "mark", params["delay"]
    if point == "commit":
        return "commit:%s" % params["target"], "pause", extra
    if point == "prune":
        return "prune:%s:%s" % (params["target"], params["when"]), "pause", extra
    if point in ("download", "verify", "extract"):
        return "%s:%.4f" % (point, params["fraction"]), "pause", extra
    if point == "swap":
        return "swap:%d" % params["index"], "pause", extra
    if point == "db":
        return "db", "mark", params["delay"]
    assert point == "time"
    return None, None, None


def kill_group(proc: subprocess.Popen) -> bool:
    """SIGKILL to the whole group; False when the process had ended already."""
    ended = proc.poll() is not None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, "processes of the killed group survive: %s" % group_alive(proc.pid)
        time.sleep(0.02)
    return not ended and proc.returncode == -signal.SIGKILL


def start_and_kill(world: World, argv: list, kind: str, point: str, params: dict, attempt: int = 0):
    """Start the child and kill its group at the round's moment: (what was hit, killed?).
    Only a `time` round may find its child already ended (it was quicker than the
    calibrated run): the caller accounts for that run and tries again, earlier."""
    spec, mode, delay = point_of(world, kind, point, params)
    if spec is None:  # `time`: a uniformly random moment over a calibrated run
        length = min(world.run_seconds if kind == "run" else world.restore_seconds)
        delay = (0.05 + params["fraction"] * max(0.1, length - 0.3)) / (2 ** attempt)
        proc, _marker, started, log = world.start_child(argv)
        time.sleep(delay)
        killed = kill_group(proc)
        world.note_started(started)
        if not killed:
            assert proc.returncode == 0, read(log)
        last = (read(log, 300).strip().splitlines() or ["no output yet"])[-1]
        return "%.2fs after the start (last line: %s)" % (delay, last), killed
    proc, marker, started, log = world.start_child(argv, spec, mode)
    deadline = time.monotonic() + 120
    while not os.path.exists(marker):
        if proc.poll() is not None:
            pytest.fail("the child ended (exit %s) before reaching %s:\n%s" % (proc.returncode, spec, read(log)))
        if time.monotonic() > deadline:
            kill_group(proc)
            pytest.fail("the child did not reach %s:\n%s" % (spec, read(log)))
        time.sleep(0.005)
    if mode == "mark":
        delay /= 2 ** attempt
    time.sleep(delay)
    with open(marker, encoding="utf-8") as handle:
        hit = handle.read()
    killed = kill_group(proc)
    world.note_started(started)
    if not killed:
        # Only a `mark` round (a delay after a phase began) may find its child ended already.
        assert mode == "mark", "the child ended before the kill (%s, %s):\n%s" % (spec, hit, read(log))
        assert proc.returncode == 0, read(log)
    return "%s (%s, +%.3fs)" % (hit, mode, delay), killed


def killed_run(world: World, entry) -> None:
    kind, point, params = entry
    for attempt in range(5):
        world.wait_new_second()
        before = world.check_targets()
        status_before = world.status()
        snap = world.snapshot()
        hit, killed = start_and_kill(world, ["run", JOB], kind, point, params, attempt)
        after = world.check_targets()
        new = set().union(*after.values()) - set().union(*before.values())
        assert len(new) <= 1, "more than one new archive after one run: %s" % new
        for name in new:
            world.snapshots[name] = snap
        if killed:
            break
        # A `time` or `mark` round whose run ended first: a good run, its retention allowed. Again, earlier.
        assert world.status()["code"] == "successful", world.status()
    else:
        pytest.fail("could not kill a run before it ended")
    world.kills.append((plan_id(entry), hit))
    for target in TARGETS:
        if new & after[target]:  # committed there before the kill: retention may have begun
            assert after[target] <= before[target] | new, (target, before[target], after[target])
            assert after[target] >= newest(before[target] | new), \
                "target %s lost archives: %s before, %s after a killed run (%s)" % (
                    target, sorted(before[target]), sorted(after[target]), hit)
        else:
            assert after[target] == before[target], \
                "target %s changed without the new archive: %s before, %s after (%s)" % (
                    target, sorted(before[target]), sorted(after[target]), hit)
    status = world.status()
    if status != status_before:  # only a complete result of this run, written before the kill
        assert status["code"] == "successful" and status["archive"]["name"] in new, (hit, status)
    world.assert_lock_free()


def killed_restore(world: World, entry) -> None:
    kind, point, params = entry
    target = params["target"]
    argv = ["restore", "--job", JOB, "--target", str(target), "--yes"]
    for attempt in range(5):
        before = world.check_targets()
        hit, killed = start_and_kill(world, argv, kind, point, params, attempt)
        after = world.check_targets()
        assert after == before, "a killed restore changed the targets (%s)" % hit
        if killed:
            break
    else:
        pytest.fail("could not kill a restore before it ended")
    world.kills.append((plan_id(entry), hit))
    world.assert_lock_free()


@pytest.mark.parametrize("entry", PLAN, ids=[plan_id(e) for e in PLAN])
def test_kill(world, entry):
    kind, _point, params = entry
    world.change_data(params["seed"])
    if kind == "run":
        killed_run(world, entry)
        world.good_run()
    else:
        killed_restore(world, entry)
        world.good_restore(params["target"])


def test_kill_count(world):
    """The bounded suite really killed 30 times (after all rounds ran); what each kill hit."""
    print("\nseed %d, %d kills:" % (SEED, len(world.kills)))
    for round_id, hit in world.kills:
        print("  %-28s %s" % (round_id, hit))
    print("runs: %s s; restores: %s s" % (" ".join("%.1f" % t for t in world.run_seconds),
                                          " ".join("%.1f" % t for t in world.restore_seconds)))
    assert len(world.kills) == len(PLAN) == 30 * FACTOR, world.kills
