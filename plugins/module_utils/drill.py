# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Restore drills (SPEC section 10; docs/restore.md "Restore drills"): prove that a job's
newest archive really restores, without touching the appliance.

A drill is a restore (restore.py, the same code: download, verify, signature, profile
mapping, dump checks) into isolation, then checks:

1. the archive is fetched from one of the job's targets - `target: rotate` (default)
   takes the next target after the last drill's, so every copy is proven in turn;
2. file trees are restored into a scratch folder under `staging_dir`, database dumps
   into a scratch database `sar_drill_<job>_<time>` created for the drill on the
   profile's PostgreSQL server and dropped afterwards (leftovers of a killed drill are
   dropped by the next drill or run of any job: we hold the maintenance lock);
3. every dump restores with ON_ERROR_STOP (the dump checks of a real restore apply);
   the row count of every table equals what the manifest recorded at backup time
   (archives made before row counts were recorded are drilled on what they have);
   every restored file's SHA-256 equals the archive's checksums and no file is missing.

Live data is never touched: the appliance's trees and database are only read by
nothing here. The result goes to the status file (`last_drill`), the metrics, the
Nagios check and - on failure - the report mail."""

from __future__ import annotations

import datetime
import os
import re
import stat
import tempfile

from . import errors, pgcluster, report, sources
from .errors import LockBusy, SarError, ValidationError
from .fsutil import clean_staging, sha256_file, short_hostname
from .lock import MaintenanceLock, acquire_scheduled
from .restore import Restore, _remove_tree

DB_PREFIX = "sar_drill_"
_LEFTOVER_DB = re.compile(r"^sar_drill_[a-z0-9_]{1,40}_\d{14}$")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone().isoformat(timespec="seconds")


def scratch_database_name(job: str, moment: datetime.datetime) -> str:
    """sar_drill_<job>_<UTC time>: a name PostgreSQL takes unquoted (job names may hold . and -)."""
    safe = re.sub(r"[^a-z0-9_]", "_", job.lower())[:40]
    return "%s%s_%s" % (DB_PREFIX, safe, moment.astimezone(datetime.timezone.utc).strftime("%Y%m%d%H%M%S"))


def eligible_targets(job: dict) -> list:
    return [i for i, t in enumerate(job["targets"]) if t["type"] != "email"]


def choose_target(job: dict, previous: dict | None, wanted=None) -> int:
    """The target to drill: `wanted` (an index), or the job's drill.target, or the next after the last drill's."""
    eligible = eligible_targets(job)
    if not eligible:
        raise ValidationError("drill", "every target of job %r is an e-mail target: nothing to read back" % job["name"])
    if wanted is None:
        wanted = (job.get("drill") or {}).get("target", "rotate")
    if wanted != "rotate":
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted not in eligible:
            raise ValidationError("target", "must be the index of one of job %r's targets that can be read back (%s), "
                                            "got %r" % (job["name"], ", ".join(map(str, eligible)), wanted))
        return wanted
    last = (previous or {}).get("target")
    later = [i for i in eligible if isinstance(last, int) and i > last]
    return later[0] if later else eligible[0]


class Drill:
    """One drill; `execute()` returns the drill record (also written to the status file)."""

    def __init__(self, store, job_name: str, *, target=None, scheduled: bool = False, wait: float = 0, log=None,
                 wait_option: str = "wait", passphrase: str | None = None, identities=None, trusted_keys=None,
                 trust: str = "signed", report_mail: bool = True):
        self.store = store
        self.settings = store.settings()
        self.job = store.load_job(job_name)
        self.target = target
        self.scheduled = scheduled
        self.wait = wait
        self.log_func = log
        self.wait_option = wait_option
        self.trusted_keys = trusted_keys
        self.trust = trust
        self.report_mail = report_mail
        enc = self.job.get("encryption") or {}
        # The job's own passphrase opens its archives; recipient-encrypted ones need an identity given.
        self.passphrase = passphrase or enc.get("passphrase")
        self.identities = identities
        self.started = _now()
        self.cluster = None     # the private temporary cluster, when the profile's user may not create databases
        self.isolation = None   # "scratch_database" or "private_cluster" (last_drill.isolation)

    def log(self, msg: str) -> None:
        if self.log_func:
            self.log_func(msg)

    def previous(self) -> dict | None:
        try:
            return (report.read_status(self.settings, self.job["name"]) or {}).get("last_drill")
        except SarError:
            return None

    def record(self, code: str, target, error=None, **extra) -> dict:
        return drill_record(self.job, self.started, code, target, error, **extra)

    # -- the drill ------------------------------------------------------------------------
    def execute(self) -> dict:
        target = None
        try:
            target = choose_target(self.job, self.previous(), self.target)
        except SarError as exc:
            return self.finish(self.record(exc.code, target, str(exc)))
        lock = MaintenanceLock(self.settings["lock_path"], wait_option=self.wait_option)
        try:
            if self.scheduled:
                acquire_scheduled(lock, self.job["defer"], self.job["retries"])
            else:
                lock.acquire(wait=self.wait)
        except LockBusy as exc:
            return self.finish(self.record(exc.code, target, str(exc)))
        try:
            return self.finish(self.locked(target))
        finally:
            lock.release()

    def locked(self, target: int) -> dict:
        staging = self.settings["staging_dir"]
        os.makedirs(staging, 0o700, exist_ok=True)
        clean_staging(staging, log=self.log_func)  # we hold the lock: leftovers of killed runs and drills
        scratch_root = tempfile.mkdtemp(prefix=".drill-", dir=staging)
        scratch = os.path.join(scratch_root, "restored")
        profile = self.settings["profile"]
        database = None
        info = None
        self.cluster = None
        self.isolation = None
        try:
            self.drop_leftovers(profile)
            self.log("drill of job %s from target %d" % (self.job["name"], target))
            restore = Restore(self.store, job=self.job["name"], target=target, archive_name="latest",
                              passphrase=self.passphrase, identities=self.identities, scratch_dir=scratch,
                              trusted_keys=self.trusted_keys, trust=self.trust, log=self.log_func, lock_held=True)
            result = restore.execute()
            info = result["archive"]
            manifest = restore.scanned["manifest"]
            digests = restore.scanned["_digests"]
            plan = result["restored"]
            checks = {"tables": 0, "files": 0, "bytes": 0}
            trees = []
            for entry in (e for e in plan if e["kind"] == sources.KIND_FILES):
                trees.append(self.check_tree(entry, digests, checks))
            tables = []
            dumps = [e for e in plan if e["kind"] == sources.KIND_DB]
            if dumps:
                database = scratch_database_name(self.job["name"], self.started)
                server = self.isolate(profile, database, scratch_root)
                tables = self.check_database(database, dumps, manifest, profile, server, scratch_root, checks)
            failed = [t for t in tables if not t["ok"]] + [t for t in trees if not t["ok"]]
            code = errors.VERIFY_FAILED if failed else errors.SUCCESSFUL
            error = None
            if failed:
                error = "; ".join(t["problem"] for t in failed)
            return self.record(code, target, error, archive=_archive_summary(info), tables=tables, trees=trees,
                               checks=checks, database=database, isolation=self.isolation)
        except SarError as exc:
            return self.record(exc.code, target, str(exc), archive=_archive_summary(info), isolation=self.isolation)
        except OSError as exc:
            code = errors.DISK_FULL if exc.errno == 28 else errors.FAILED
            return self.record(code, target, "drill failed: %s" % exc, archive=_archive_summary(info),
                               isolation=self.isolation)
        finally:
            if self.cluster is not None:
                self.cluster.stop()  # the folder goes with scratch_root below
            elif database:
                self.drop_database(profile, database)
            try:
                _remove_tree(scratch_root)
            except OSError as exc:  # the next run, restore or drill removes what is left (clean_staging)
                self.log("could not remove %s: %s" % (scratch_root, exc))

    # -- checks -----------------------------------------------------------------------------
    def check_tree(self, entry: dict, digests, checks: dict) -> dict:
        """Every file restored into the scratch tree has the SHA-256 the archive lists; none is missing."""
        root = entry["origin"]
        member = entry["member"]
        expected = {name[len(member) + 1:] for name in _regular_members(digests, member)}
        found = set()
        mismatched = []
        size = 0
        for top, dirs, files in os.walk(root):
            dirs.sort()
            for name in files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = os.path.relpath(path, root)
                found.add(rel)
                digest = sha256_file(path)[0]
                if digests.get(member + "/" + rel) != digest.digest():
                    mismatched.append(rel)
                size += st.st_size
        missing = sorted(expected - found)
        checks["files"] += len(found)
        checks["bytes"] += size
        ok = not missing and not mismatched
        out = {"category": entry["category"], "member": member, "files": len(found), "bytes": size,
               "declared_files": entry.get("files"), "declared_bytes": entry.get("size"), "ok": ok}
        if not ok:
            out["problem"] = "%s: %s%s" % (member, ("%d file(s) missing, e.g. %s" % (len(missing), missing[0])) if missing else "",
                                           ("%d file(s) differ from the archive, e.g. %s" % (len(mismatched), mismatched[0]))
                                           if mismatched else "")
        return out

    # -- isolation ---------------------------------------------------------------------------------
    def isolate(self, profile: dict, database: str, workdir: str) -> dict:
        """Create the empty database the dumps go into; returns the profile that reaches it.

        A scratch database on the profile's server when its user may create databases (CREATEDB or
        superuser), else a private temporary cluster of the server's own major version in `workdir`
        (pgcluster.py). Sets self.isolation (recorded in last_drill) and self.cluster."""
        from .dumpguard import quote_ident
        row = sources.psql(profile, "SELECT (r.rolcreatedb OR r.rolsuper)::int, pg_catalog.current_setting("
                                    "'server_version_num'), pg_catalog.pg_encoding_to_char(d.encoding) FROM "
                                    "pg_catalog.pg_roles r, pg_catalog.pg_database d WHERE r.rolname = CURRENT_USER "
                                    "AND d.datname = pg_catalog.current_database();", "drill").split("\0")[0]
        fields = row.strip().split("|")
        if len(fields) != 3:
            raise SarError("drill: cannot read the profile user's rights and the server's version (got %r)" % row[:200],
                           errors.SOURCE_FAILED)
        can_create, version_num, encoding = fields
        restore_role = (profile.get("database") or {}).get("restore_role")
        if can_create == "1":
            self.isolation = "scratch_database"
            scratch = dict(profile, database=dict(profile.get("database") or {}, name=database))
            self.log("creating scratch database %s" % database)
            try:
                sources.psql(profile, "CREATE DATABASE %s;" % database, "drill")
            except SarError as exc:
                raise SarError("cannot create the scratch database %s for the drill: %s" % (database, exc),
                               errors.SOURCE_FAILED)
            if restore_role:
                sources.psql(scratch, "GRANT ALL ON SCHEMA public TO %s;" % quote_ident(restore_role), "drill")
            return scratch
        major = pgcluster.server_major(version_num)
        self.isolation = "private_cluster"
        self.log("the profile's user may not create databases: the drill restores into a private PostgreSQL %s "
                 "cluster" % major)
        bin_dir = pgcluster.find_server_binaries(major, profile)
        self.cluster = pgcluster.PrivateCluster(workdir, bin_dir, log=self.log_func)
        self.cluster.start()  # a failing start leaves self.cluster set: locked() stops and cleans up
        admin = self.cluster.admin_profile(profile)
        scratch = self.cluster.profile(profile, database)
        user = scratch["database"]["user"]
        # Every role of the live server, so the dump's grants (and restore_role) resolve as there; the profile
        # user belongs to the roles it belongs to there.
        live_roles = [r.split(":") for r in sources.psql(
            profile, "SELECT pg_catalog.encode(pg_catalog.convert_to(rolname, 'UTF8'), 'hex') || ':' || "
                     "pg_catalog.pg_has_role(CURRENT_USER, oid, 'MEMBER')::int FROM pg_catalog.pg_roles "
                     "WHERE rolname !~ '^pg_' ORDER BY 1;", "drill").split("\0") if r.strip()]
        present = {bytes.fromhex(r.strip()).decode("utf-8") for r in sources.psql(
            admin, "SELECT pg_catalog.encode(pg_catalog.convert_to(rolname, 'UTF8'), 'hex') FROM "
                   "pg_catalog.pg_roles;", "drill").split("\0") if r.strip()}
        sql = []
        if user not in present:
            sql.append("CREATE ROLE %s LOGIN;" % quote_ident(user))
            present.add(user)
        for hexname, member in live_roles:
            name = bytes.fromhex(hexname.strip()).decode("utf-8")
            if name not in present:
                sql.append("CREATE ROLE %s NOLOGIN;" % quote_ident(name))
            if member.strip() == "1" and name != user:
                sql.append("GRANT %s TO %s;" % (quote_ident(name), quote_ident(user)))
        sql.append("CREATE DATABASE %s OWNER %s TEMPLATE template0 ENCODING %s LC_COLLATE 'C' LC_CTYPE 'C';"
                   % (database, quote_ident(user), quote_literal(encoding)))
        sources.psql(admin, "\n".join(sql) + "\n", "drill")
        if restore_role:
            sources.psql(self.cluster.profile(profile, database, pgcluster.ADMIN_ROLE),
                         "GRANT ALL ON SCHEMA public TO %s;" % quote_ident(restore_role), "drill")
        return scratch

    def check_database(self, database: str, dumps: list, manifest: dict, profile: dict, scratch: dict, workdir: str,
                       checks: dict) -> list:
        """Restore every dump into the scratch database (`scratch`: the profile reaching it) as a restore does,
        count every table."""
        sources.restore_dumps([(e["category"], os.path.join(e["origin"]), e["member"]) for e in dumps], scratch,
                              workdir, log=self.log_func)
        recorded = {}
        for src in manifest.get("sources") or []:
            if src.get("kind") == sources.KIND_DB and isinstance(src.get("rows"), dict):
                for table, rows in src["rows"].items():
                    if isinstance(table, str) and isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0:
                        recorded[(src["category"], table)] = rows
        out = []
        for e in dumps:
            names = [t for (cat, t) in recorded if cat == e["category"]]
            if not names:  # an archive made before row counts were recorded: the category's tables restored
                from .dumpguard import Ownership
                own = Ownership(e["category"], profile, e["member"])
                names = [t for t in _tables_in(scratch, e["category"]) if own.relation(*t.split(".", 1))]
            counts = _count_rows(scratch, names, e["category"])
            for table in names:
                want = recorded.get((e["category"], table))
                got = counts.get(table)
                entry = {"category": e["category"], "table": table, "rows": got, "recorded": want,
                         "ok": got is not None and (want is None or got == want)}
                if not entry["ok"]:
                    entry["problem"] = "table %s: %s rows restored, %s recorded at backup time" % (
                        table, "no" if got is None else got, want)
                out.append(entry)
                checks["tables"] += 1
        return out

    # -- scratch databases --------------------------------------------------------------------
    def drop_database(self, profile: dict, database: str) -> None:
        try:
            sources.psql(profile, "DROP DATABASE IF EXISTS %s WITH (FORCE);" % database, "drill")
        except SarError as exc:
            self.log("could not drop the scratch database %s (the next drill drops it): %s" % (database, exc))

    def drop_leftovers(self, profile: dict) -> None:
        """Scratch databases of drills that were killed (we hold the lock: no drill runs)."""
        try:
            out = sources.psql(profile, "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'sar\\_drill\\_%';",
                               "drill")
        except SarError:
            return  # no database in the profile, or unreachable: the restore says so
        for name in (n.strip() for n in out.split("\0")):
            if _LEFTOVER_DB.match(name):
                self.log("dropping %s, left by an interrupted drill" % name)
                self.drop_database(profile, name)

    def finish(self, drill: dict) -> dict:
        warnings = drill.setdefault("warnings", [])
        drill["status_path"] = report.record(self.settings, self.store, self.job["name"], report.write_drill, drill,
                                             warnings)
        if self.report_mail and self.job.get("report_to") and self.job.get("report_on") != "never" \
                and (drill["code"] != errors.SUCCESSFUL or self.job.get("report_on") == "always"):
            try:
                report.mail_drill_report(self.settings, self.job, drill)
                drill["report_sent"] = True
            except SarError as exc:
                warnings.append("could not mail the drill report: %s" % exc)
        return drill


def drill_record(job: dict, started: datetime.datetime, code: str, target, error=None, **extra) -> dict:
    """A drill's outcome as the status file's `last_drill` holds it (also the crash report's, cli.py)."""
    finished = _now()
    out = {"job": job["name"], "host": short_hostname(), "started": _iso(started),
           "finished": _iso(finished), "seconds": round((finished - started).total_seconds(), 3),
           "code": code, "success": code == errors.SUCCESSFUL, "target": target, "archive": None,
           "interval": (job.get("drill") or {}).get("interval", "manual"), "error": error,
           "tables": [], "trees": [], "checks": {"tables": 0, "files": 0, "bytes": 0}}
    out.update(extra)
    return out


def quote_literal(text: str) -> str:
    return "'%s'" % text.replace("'", "''")


def _archive_summary(info) -> dict | None:
    if not info:
        return None
    return {k: info.get(k) for k in ("name", "size", "sha256", "created", "host")} | {
        "signed_by": (info.get("signature") or {}).get("fingerprint")}


def _regular_members(digests, prefix: str) -> list:
    names = getattr(digests, "names", None)
    items = names() if callable(names) else list(digests)
    return [n for n in items if n.startswith(prefix + "/") and isinstance(digests.get(n), bytes)]


def _tables_in(profile: dict, category: str) -> list:
    sql = ("SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
           "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
           "'information_schema') AND n.nspname !~ '^pg_' ORDER BY 1;")
    return [r.strip() for r in sources.psql(profile, sql, category).split("\0") if r.strip()]


def _count_rows(profile: dict, tables: list, category: str) -> dict:
    """{schema.name: rows} of the restored tables; None for a table that cannot be counted (missing)."""
    if not tables:
        return {}
    try:
        text = sources.psql(profile, sources.row_count_query([t.split(".", 1) for t in tables]), category)
    except SarError:
        if len(tables) == 1:
            return {tables[0]: None}
        out = {}
        for table in tables:  # one by one, to name the table that is missing
            out.update(_count_rows(profile, [table], category))
        return out
    return sources.parse_row_counts(text.split("\0"))


def run_drill(store, job_name: str, **kwargs) -> dict:
    return Drill(store, job_name, **kwargs).execute()


__all__ = ["Drill", "run_drill", "choose_target", "scratch_database_name"]
