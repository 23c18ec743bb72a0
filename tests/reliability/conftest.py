# SPDX-License-Identifier: GPL-3.0-or-later
"""The product's own proof suite (docs/reliability.md): hostile archives fed to
every reader, fuzzed schemas. Bounded in `make test`; `make soak` (SAR_SOAK=1)
runs the long form.

The `live` fixture is one sample appliance for the whole session: a private
PostgreSQL cluster with the sample database, the appliance's file trees, a
config directory (settings pointing at them, the host's signing key), a
sentinel directory outside the profile and a world-writable canary directory
(where a command run by a hostile dump would leave a file). Everything under
its root except the scratch areas is hashed before and after each case;
`live.changes()` names what differs, `live.reset()` puts the pristine copy
back (trees by copy, the database from a template) so one failing case does
not spoil the next."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, TESTS)
sys.path.insert(0, HERE)

from harness.playbook import collections_path  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = collections_path()
sys.path.insert(0, COLLECTIONS)

import pytest  # noqa: E402

import hostile  # noqa: E402

SOAK = hostile.SOAK
MEMORY_LIMIT = 100 * 1024 * 1024
# Generous per-run bounds (a hang, not a slow machine): in this process, and for a bomb's reader in a child.
CASE_SECONDS = int(os.environ.get("SAR_CASE_SECONDS") or (600 if SOAK else 60))
CHILD_SECONDS = int(os.environ.get("SAR_CHILD_SECONDS") or (900 if SOAK else 120))
CHILD_ADDRESS_SPACE = 4 * 1024 ** 3          # safety net for the machine: a bomb fails instead of swapping it out
TRACEBACK = "Traceback (most recent call last)"
DB_NAME = "pbx_live"
DRILL_JOB = "drill"
PRISTINE_DB = "pbx_pristine"
SCRATCH_PARTS = ("cases", "scratch", "lock")  # not the appliance: hostile files and scratch restores live here

# One child process per victim: reads its own VmHWM just before it exits (ru_maxrss would carry the
# parent's peak across fork+exec and could hide growth below the size of the test runner).
CHILD = r"""
import os, resource, sys
sys.path.insert(0, os.environ["SAR_COLLECTIONS"])
cap = int(os.environ.get("SAR_CHILD_AS") or 0)
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

def vmhwm():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1

code = 70
try:
    if sys.argv[1] == "engine":
        from ansible_collections.sar.backup.plugins.module_utils import archive
        from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError
        try:
            archive.verify(sys.argv[2])
            print("ACCEPTED by archive.verify")
            code = 0
        except ArchiveError as exc:
            print("REFUSED (%s): %s" % (getattr(exc, "code", "?"), exc))
            code = 1
    else:
        from ansible_collections.sar.backup.plugins.module_utils import cli
        code = cli.main(sys.argv[2:])
finally:
    with open(os.environ["SAR_CHILD_REPORT"], "w") as report:
        report.write(str(vmhwm()))
sys.exit(code)
"""


@dataclasses.dataclass
class Run:
    """What one reader said about one archive."""

    rc: int | None
    out: str
    err: str
    error: str | None      # an exception that escaped (in-process), formatted
    seconds: float
    vmhwm: int | None = None
    timed_out: bool = False
    child: bool = False

    @property
    def text(self) -> str:
        return "%s\n%s\n%s" % (self.out, self.err, self.error or "")

    @property
    def traceback(self) -> bool:
        return self.error is not None or TRACEBACK in self.out or TRACEBACK in self.err

    def brief(self) -> str:
        lines = [ln for ln in self.text.splitlines() if ln.strip()]
        return (lines[-1] if lines else "(no output)")[:300]


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class Live:
    def __init__(self, root: str, cluster):
        from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings
        from harness import appliance as sample

        self.root = root
        self.cluster = cluster
        self.sample = sample
        self.pristine = tempfile.mkdtemp(prefix="sar-reliability-pristine-")
        self.appliance = os.path.join(root, "appliance")
        self.sentinel = os.path.join(root, "sentinel")
        self.canary = os.path.join(root, "canary")
        self.config_dir = os.path.join(root, "etc")
        self.staging = os.path.join(root, "staging")
        self.cases_dir = os.path.join(root, "cases")
        self.scratch_root = os.path.join(root, "scratch")
        for path in (self.staging, os.path.join(root, "status"), self.cases_dir, self.scratch_root,
                     os.path.join(root, "lock")):
            os.makedirs(path, exist_ok=True)

        # The appliance: sample trees (plus a link out of its tree and one inside), the sample database.
        sample.build_files(self.appliance)
        asterisk = os.path.join(self.appliance, "etc/asterisk")
        os.symlink("/usr/share/asterisk/moh", os.path.join(asterisk, "moh"))
        os.symlink("sip.conf", os.path.join(asterisk, "sip-link.conf"))
        sample.build_database(cluster, name=DB_NAME)
        self.profile = sample.make_profile(self.appliance, cluster, name=DB_NAME)
        self.store = Store(self.config_dir)
        self.settings = validate_settings({
            "profile": self.profile,
            "archive_dir": os.path.join(root, "archives"),
            "staging_dir": self.staging,
            "status_dir": os.path.join(root, "status"),
            "lock_path": os.path.join(root, "lock", "sar-backup.lock"),
        })
        self.store.write_settings(self.settings)
        self.host_key = self._host_key()
        # A job whose local target holds the archive under test, for `sar-backup drill` (drill.py).
        from ansible_collections.sar.backup.plugins.module_utils.job import validate_job
        self.drill_folder = os.path.join(self.cases_dir, "drill-target", "starface-backup", DRILL_JOB)
        self.store.write_job(validate_job({"name": DRILL_JOB, "data": list(hostile.CATEGORIES), "targets": [
            {"type": "local", "path": os.path.join(self.cases_dir, "drill-target")}]}))

        # Outside the profile: a sentinel tree the hostile manifests aim at, and the canary.
        os.makedirs(os.path.join(self.sentinel, "sub"))
        with open(os.path.join(self.sentinel, "keep.txt"), "w", encoding="utf-8") as handle:
            handle.write("the sentinel: outside the profile, never to change\n")
        with open(os.path.join(self.sentinel, "sub", "data.bin"), "wb") as handle:
            handle.write(os.urandom(4096))
        os.makedirs(self.canary)
        os.chmod(self.canary, 0o777)  # the database server (user postgres) could write here: it must not

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        self.foreign_key = Ed25519PrivateKey.generate()
        self.dumps = self._dumps()
        self.ctx = hostile.Ctx(profile=self.profile, host="pbx-live", sentinel=self.sentinel, canary=self.canary,
                               dumps=self.dumps, comment_defn=self.comment_defn, host_key=self.host_key,
                               foreign_key=self.foreign_key)

        # Pristine copies to reset from, and the baseline every case is compared with.
        self.parts = sorted(n for n in os.listdir(root) if n not in SCRATCH_PARTS)
        for name in self.parts:
            shutil.copytree(os.path.join(root, name), os.path.join(self.pristine, name), symlinks=True)
        cluster.psql("CREATE DATABASE %s TEMPLATE %s" % (PRISTINE_DB, DB_NAME))
        self.baseline = self.snapshot()

    # -- setup helpers ---------------------------------------------------------------------
    def _host_key(self):
        from cryptography.hazmat.primitives import serialization
        try:
            from ansible_collections.sar.backup.plugins.module_utils import signing
        except ImportError:
            signing = None
        if signing is not None and hasattr(signing, "load_or_create"):
            signing.load_or_create(self.config_dir)
            with open(os.path.join(self.config_dir, getattr(signing, "KEY_FILE", "signing.key")), "rb") as handle:
                return serialization.load_pem_private_key(handle.read(), password=None)
        return None

    def _pg(self, tool: str, *args) -> bytes:
        argv = [self.cluster.tool(tool), "-h", self.cluster.socket_dir, "-p", str(self.cluster.port), "-U", "postgres"]
        proc = subprocess.run(argv + list(args), capture_output=True, env=_clean_env(), check=False)
        if proc.returncode != 0:
            raise RuntimeError("%s %s failed: %s" % (tool, " ".join(args), proc.stderr.decode(errors="replace")))
        return proc.stdout

    def _dumps(self) -> dict:
        """Real pg_dump -Fc -Z0 dumps: the live categories', and those of scratch databases for the hostile ones."""
        folder = os.path.join(self.root, "cases", "dumps")
        os.makedirs(folder)
        out = {}

        def dump(name, db, *args, fmt="-Fc"):
            path = os.path.join(folder, name + ".dump")
            self._pg("pg_dump", fmt, "-Z0", "-d", db, "-f", path, *args)
            out[name] = path

        dump("core", DB_NAME, "-T", "public.cdr*")
        dump("cdr_voicemail", DB_NAME, "-t", "public.cdr*")
        # A scratch database holding a table public.cdr (and core tables) of other content.
        psql = self.cluster.psql
        psql("CREATE DATABASE pbx_other TEMPLATE %s" % DB_NAME)
        psql("DELETE FROM cdr; UPDATE users SET display_name = 'planted by a hostile dump';"
             "INSERT INTO cdr (call_start, src, dst, duration, billsec, disposition, uniqueid) "
             "VALUES (now(), 'evil', 'evil', 1, 1, 'ANSWERED', 'planted');", db="pbx_other")
        dump("other_tables", "pbx_other")
        # One with a long comment on a core table: payloads of the same length replace its statement.
        psql("CREATE DATABASE pbx_comment TEMPLATE %s" % DB_NAME)
        pad = "P" * 400
        psql("COMMENT ON TABLE users IS '%s'" % pad, db="pbx_comment")
        dump("comment", "pbx_comment", "-T", "public.cdr*")
        self.comment_defn = ("COMMENT ON TABLE public.users IS '%s';" % pad).encode()
        dump("plain", "pbx_comment", "-t", "public.groups", fmt="-Fp")
        for db in ("pbx_other", "pbx_comment"):
            self.cluster.drop_database(db)
        return out

    # -- state ---------------------------------------------------------------------------
    def files_snapshot(self) -> dict:
        """Every path below the root but the scratch areas (iterative: a hostile tree may be thousands deep)."""
        out = {}
        stack = [os.path.join(self.root, n) for n in os.listdir(self.root) if n not in SCRATCH_PARTS]
        while stack:
            path = stack.pop()
            rel = os.path.relpath(path, self.root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
                stack.extend(os.path.join(path, n) for n in os.listdir(path))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, digest)
            else:
                out[rel] = ("other", st.st_mode)
        return out

    DB_SQL = r"""
SELECT 'rel', n.nspname, c.relname, c.relkind, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 2, 3;
SELECT 'role', rolname, rolsuper, rolcanlogin FROM pg_roles ORDER BY 2;
SELECT 'proc', n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2, 3;
SELECT 'comment', objoid, objsubid, md5(description) FROM pg_description WHERE objoid >= 16384 ORDER BY 2, 3;
SELECT format('SELECT %L, count(*), md5(coalesce(string_agg(t::text, E''\n'' ORDER BY t::text), '''')) FROM %I.%I t',
              'rows ' || n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1 \gexec
SELECT format('SELECT %L, last_value, is_called FROM %I.%I', 'rows ' || n.nspname || '.' || c.relname, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1 \gexec
"""

    def db_snapshot(self) -> list:
        return self.cluster.psql(self.DB_SQL, db=DB_NAME).splitlines()

    def snapshot(self) -> dict:
        return {"files": self.files_snapshot(), "db": self.db_snapshot()}

    def changes(self, now: dict | None = None) -> list:
        """What differs from the baseline: paths below the root (scratch areas aside) and database lines."""
        now = now or self.snapshot()
        out = []
        before, after = self.baseline["files"], now["files"]
        for rel in sorted(set(before) | set(after)):
            if before.get(rel) != after.get(rel):
                what = "added" if rel not in before else "removed" if rel not in after else "changed"
                out.append("%s %s" % (what, rel))
        db_before, db_after = set(self.baseline["db"]), set(now["db"])
        for line in sorted(db_before - db_after):
            out.append("database: was %s" % line.replace("|", " ")[:160])
        for line in sorted(db_after - db_before):
            out.append("database: now %s" % line.replace("|", " ")[:160])
        return out

    def content_changes(self) -> list:
        """Like changes(), ignoring what a faithful restore may change (file mtimes, relation oids)."""
        now = self.snapshot()

        def files(snap):
            return {k: (v[:5] + v[6:] if v[0] == "file" else v) for k, v in snap.items()}

        def rows(lines):
            return {ln for ln in lines if ln.startswith("rows ")}
        differ = set(files(self.baseline["files"]).items()) ^ set(files(now["files"]).items())
        out = ["path %s" % k for k in sorted(differ)]
        out += ["table %s" % ln for ln in sorted(rows(self.baseline["db"]) ^ rows(now["db"]))]
        return out

    def reset(self) -> None:
        """The pristine trees and database back (after a case that got through)."""
        for name in os.listdir(self.root):
            if name in SCRATCH_PARTS:
                continue
            _remove(os.path.join(self.root, name))
        for name in self.parts:
            shutil.copytree(os.path.join(self.pristine, name), os.path.join(self.root, name), symlinks=True)
        self.cluster.drop_database(DB_NAME)
        self.cluster.psql("CREATE DATABASE %s TEMPLATE %s OWNER %s" % (DB_NAME, PRISTINE_DB, self.cluster.user))
        roles = {ln.split("|")[1] for ln in self.baseline["db"] if ln.startswith("role|")}
        for line in self.db_snapshot():
            if line.startswith("role|") and line.split("|")[1] not in roles:
                self.cluster.psql('DROP ROLE IF EXISTS "%s"' % line.split("|")[1])
        left = self.changes()
        assert not left, "reset did not restore the baseline: %s" % left[:10]

    def check_unchanged(self, what: str, ignore: tuple = ()) -> list:
        """[] when nothing outside the scratch areas changed (but the paths starting with `ignore`); else
        the problems (and the appliance is reset)."""
        diff = self.changes()
        if not diff:
            return []
        if ignore and all(d.split(" ", 1)[1].startswith(ignore) for d in diff):
            for top in {p.split("/")[0] for p in ignore}:  # what the run may write (a drill's status) goes back
                _remove(os.path.join(self.root, top))
                shutil.copytree(os.path.join(self.pristine, top), os.path.join(self.root, top), symlinks=True)
            if not self.changes():
                return []
            diff = self.changes()
        self.reset()
        more = " (+%d more)" % (len(diff) - 8) if len(diff) > 8 else ""
        return ["%s changed things outside the scratch tree: %s%s" % (what, "; ".join(diff[:8]), more)]

    # -- readers -------------------------------------------------------------------------
    def cli(self, *args) -> Run:
        """`sar-backup --config-dir <live> ARGS` in this process (cli.main), output captured, interrupted
        after CASE_SECONDS."""
        from ansible_collections.sar.backup.plugins.module_utils import cli
        out, err = io.StringIO(), io.StringIO()
        rc, error, timed_out = None, None, False
        began = time.monotonic()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _deadline(CASE_SECONDS):
            try:
                rc = cli.main(["--config-dir", self.config_dir] + list(args))
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 2
            except CaseTimeout:
                timed_out = True
            except Exception:  # pylint: disable=broad-except  # what a user would see as a traceback
                error = traceback.format_exc()
        return Run(rc, out.getvalue(), err.getvalue(), error, time.monotonic() - began, timed_out=timed_out)

    def place_for_drill(self, path: str) -> None:
        """The drill job's target holds this archive (only), as its newest."""
        _remove(os.path.dirname(self.drill_folder))
        os.makedirs(self.drill_folder)
        shutil.copyfile(path, os.path.join(self.drill_folder, "%s_pbx-live_20261205T020000Z.sar" % DRILL_JOB))

    def drill(self, path: str, *args) -> Run:
        """`sar-backup drill` of that job, in this process."""
        self.place_for_drill(path)
        return self.cli("drill", DRILL_JOB, *args)

    def engine(self, path: str) -> Run:
        """archive.verify(path) in this process, interrupted after CASE_SECONDS."""
        from ansible_collections.sar.backup.plugins.module_utils import archive
        from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError
        began = time.monotonic()
        with _deadline(CASE_SECONDS):
            try:
                archive.verify(path)
                return Run(0, "ACCEPTED by archive.verify", "", None, time.monotonic() - began)
            except ArchiveError as exc:
                return Run(1, "REFUSED (%s): %s" % (getattr(exc, "code", "?"), exc), "", None, time.monotonic() - began)
            except CaseTimeout:
                return Run(None, "", "", None, time.monotonic() - began, timed_out=True)
            except Exception:  # pylint: disable=broad-except
                return Run(None, "", "", traceback.format_exc(), time.monotonic() - began)

    def start_child(self, mode: str, *args):
        """A reader in a child process (engine: archive.verify; cli: cli.main with --config-dir)."""
        fd, report = tempfile.mkstemp(prefix="vmhwm-", dir=self.cases_dir)
        os.close(fd)
        argv = [sys.executable, "-c", CHILD, mode]
        argv += list(args) if mode == "engine" else ["--config-dir", self.config_dir] + list(args)
        env = dict(_clean_env(), SAR_COLLECTIONS=COLLECTIONS, SAR_CHILD_REPORT=report,
                   SAR_CHILD_AS=str(CHILD_ADDRESS_SPACE))
        out = tempfile.TemporaryFile(dir=self.cases_dir)  # pylint: disable=consider-using-with
        err = tempfile.TemporaryFile(dir=self.cases_dir)  # pylint: disable=consider-using-with
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env,  # pylint: disable=consider-using-with
                                start_new_session=True)
        return proc, out, err, report, time.monotonic()

    @staticmethod
    def finish_child(started) -> Run:
        proc, out, err, report, began = started
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, CHILD_SECONDS - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (the reader and its pg_restore/psql)
            proc.wait()
            timed_out = True
        seconds = time.monotonic() - began
        texts = []
        for handle in (out, err):
            handle.seek(0)
            texts.append(handle.read(1024 * 1024).decode("utf-8", "replace"))
            handle.close()
        try:
            with open(report, encoding="ascii") as handle:
                vmhwm = int(handle.read().strip() or -1)
        except (OSError, ValueError):
            vmhwm = None
        os.unlink(report)
        return Run(proc.returncode, texts[0], texts[1], None, seconds, vmhwm, timed_out, child=True)


class CaseTimeout(BaseException):
    """Raised in the reader's thread when it runs past the bound (BaseException: no `except Exception` eats it)."""


@contextlib.contextmanager
def _deadline(seconds: float):
    def expired(_signum, _frame):
        raise CaseTimeout()
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _remove(path: str) -> None:
    """rm -rf: whatever a hostile archive left (read-only directories, trees deeper than Python's recursion limit)."""
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=True)


@pytest.fixture(scope="session")
def live():
    from harness.postgres import PostgresCluster
    root = tempfile.mkdtemp(prefix="sar-reliability-")
    os.chmod(root, 0o755)  # the database server may traverse it (to the canary): it must not write anywhere
    cluster = PostgresCluster().start()
    box = None
    try:
        box = Live(root, cluster)
        yield box
    finally:
        cluster.stop()
        _remove(root)
        if box is not None:
            _remove(box.pristine)
