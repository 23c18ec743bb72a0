# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Data categories -> sources, following the host's appliance profile (SPEC
sections 3 and 9; docs/profile.md).

A category becomes at most one PostgreSQL dump (made by the real `pg_dump`,
custom format, so `pg_restore` can restore it selectively) and one file tree
per profile path. `plan()` lists the sources, `check()` proves they can be
read, `estimate()` sizes them, `prepare()` dumps the database into staging and
measures the trees; the archive builder then streams them.

The database password never appears in a command line or in PGPASSWORD: every
client call gets a private, temporary password file (PGPASSFILE, mode 0600)
that is removed as soon as the call returns."""

from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import DISK_FULL, SourceError, ValidationError
from .job import CATEGORIES

KIND_DB = "postgresql"
KIND_FILES = "files"

# pg_dump -t/-T select these relation kinds (tables, sequences, views,
# materialized views, foreign tables, partitioned tables).
_PG_DUMP_RELKINDS = "('r', 'S', 'v', 'm', 'f', 'p')"
# Bytes a tar member costs beyond its data (header, padding, a pax header for long names):
# keeps estimate() an upper bound for the staging space check.
_TAR_OVERHEAD = 1536
_CONNECT_TIMEOUT = "10"
# Debian's client programs: one directory per major version, and the dispatcher PATH links to.
_PG_BINROOT = "/usr/lib/postgresql"
_PG_WRAPPER = "pg_wrapper"
_ERROR_LINES = 5


@dataclass
class Source:
    """One thing a category backs up: a database dump or a file tree."""

    category: str
    kind: str                       # "postgresql" | "files"
    origin: str                     # the tree's absolute path, or the database (never its password)
    member: str                     # where it goes in the archive
    tables: list = field(default_factory=list)
    exclude_tables: list = field(default_factory=list)
    size: int | None = None         # bytes, after prepare()
    files: int | None = None        # regular files and links in a tree (1 for a dump), after prepare()
    local_path: str | None = None   # the dump file in staging, after prepare()
    rows: dict | None = None        # a dump's tables -> row count in the dump's own snapshot, after prepare()


# -- plan -----------------------------------------------------------------------
def database_origin(profile: dict, tables: list | None = None, exclude_tables: list | None = None) -> str:
    """postgresql://user@host:port/name[?tables=a,b | ?exclude_tables=a,b] — no password."""
    db = profile.get("database") or {}
    text = "postgresql://%s@%s:%s/%s" % (db.get("user") or "", db.get("host") or "", db.get("port") or "", db.get("name") or "")
    if tables:
        text += "?tables=" + ",".join(tables)
    elif exclude_tables:
        text += "?exclude_tables=" + ",".join(exclude_tables)
    return text


def plan(data: list, profile: dict) -> list:
    """The sources of the selected categories, in the order given.

    Per category: a database dump when it has `tables` (only those) or
    `exclude_tables` (the whole database but those), none with neither; then one
    tree per path, `files/<category>/<index of the path in paths>`."""
    categories = profile.get("categories") or {}
    out = []
    seen = set()
    for i, cat in enumerate(data):
        if cat not in CATEGORIES:
            raise ValidationError("data[%d]" % i, "must be one of %s, got %r" % (", ".join(CATEGORIES), cat))
        if cat in seen:
            continue
        seen.add(cat)
        spec = categories.get(cat) or {}
        tables = list(spec.get("tables") or [])
        exclude = list(spec.get("exclude_tables") or [])
        if tables and exclude:
            raise ValidationError("profile.categories.%s.exclude_tables" % cat, "give tables or exclude_tables, not both")
        if tables or exclude:
            out.append(Source(category=cat, kind=KIND_DB, origin=database_origin(profile, tables, exclude),
                              member="db/%s.pgdump" % cat, tables=tables, exclude_tables=exclude))
        for index, path in enumerate(spec.get("paths") or []):
            out.append(Source(category=cat, kind=KIND_FILES, origin=os.path.normpath(path),
                              member="files/%s/%d" % (cat, index)))
    return out


# -- PostgreSQL clients -----------------------------------------------------------
def _db(profile: dict) -> dict:
    return profile.get("database") or {}


def _where(profile: dict) -> str:
    db = _db(profile)
    return "%s:%s" % (db.get("host") or "the default socket", db.get("port") or 5432)


def find_tool(name: str, profile: dict) -> str:
    """A PostgreSQL client program: profile.database.pg_bin_dir if set, else PATH,
    else the newest /usr/lib/postgresql/<version>/bin (Debian layout).

    On Debian and Ubuntu, PATH's psql, pg_dump and pg_restore are postgresql-common's
    pg_wrapper, a Perl script that picks a version and execs it: about 40 ms of CPU per call,
    and a run makes seven. When the profile names the host, pg_wrapper picks the newest
    installed version that has the program (pg_wrapper(1): an explicit --host overrides every
    cluster setting), so that program is called directly, exactly as the wrapper would. (The
    wrapper also defaults PGSYSCONFDIR to /etc/postgresql-common: Debian's libpq has that built in.)
    Without a host the wrapper stays: it then chooses the local cluster (its socket and port)."""
    bin_dir = _db(profile).get("pg_bin_dir")
    if bin_dir:
        path = os.path.join(bin_dir, name)
        if os.access(path, os.X_OK):
            return path
        raise SourceError("PostgreSQL client %s not found in profile.database.pg_bin_dir (%s)" % (name, bin_dir))
    found = shutil.which(name)
    if found:
        if _db(profile).get("host") and os.path.basename(os.path.realpath(found)) == _PG_WRAPPER:
            return _newest_installed(name) or found
        return found
    newest = _newest_installed(name)
    if newest:
        return newest
    raise SourceError("PostgreSQL client %s not found (PATH, %s/*/bin): install the PostgreSQL "
                      "client tools or set profile.database.pg_bin_dir" % (name, _PG_BINROOT))


def _newest_installed(name: str) -> str | None:
    """The program from the newest /usr/lib/postgresql/<version>/bin that has it, as pg_wrapper chooses."""
    candidates = [p for p in glob.glob(os.path.join(_PG_BINROOT, "*", "bin", name)) if os.access(p, os.X_OK)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: _version_key(p.split(os.sep)[-3]))


def _version_key(text: str) -> tuple:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def _client_env(profile: dict, directory: str | None = None):
    """Environment for one client call: the password in a private PGPASSFILE
    (created 0600 in `directory`, or a private temp dir), removed afterwards."""
    env = dict(os.environ)
    env.setdefault("PGCONNECT_TIMEOUT", _CONNECT_TIMEOUT)
    password = _db(profile).get("password")
    if not password:
        yield env
        return
    if "\n" in password or "\r" in password:
        raise SourceError("profile.database.password contains a line break, which a PostgreSQL password file cannot hold")
    env.pop("PGPASSWORD", None)  # it would win over our password file
    own_dir = None
    if directory is None:
        own_dir = directory = tempfile.mkdtemp(prefix="sar-backup-pg-")
    fd, path = tempfile.mkstemp(prefix=".pgpass-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write("*:*:*:*:%s\n" % _pgpass_escape(password))
        env["PGPASSFILE"] = path
        yield env
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)


def _conn_args(profile: dict) -> list:
    db = _db(profile)
    args = ["--no-password"]
    if db.get("host"):
        args += ["-h", str(db["host"])]
    if db.get("port"):
        args += ["-p", str(db["port"])]
    if db.get("user"):
        args += ["-U", str(db["user"])]
    args += ["-d", str(db.get("name") or "postgres")]
    return args


def _first_lines(text: str, count: int = _ERROR_LINES) -> str:
    lines = [ln.rstrip() for ln in (text or "").splitlines() if ln.strip()]
    return " / ".join(lines[:count]) or "no error output"


def _strip_prefix(line: str, tool: str) -> str:
    prefix = "%s: error: " % tool
    return line[len(prefix):] if line.startswith(prefix) else line


def _run(argv: list, env: dict, input_text: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=input_text, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, errors="replace", env=env, timeout=timeout, check=False,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SourceError("%s did not answer within %d seconds" % (os.path.basename(argv[0]), timeout or 0))
    except OSError as exc:
        raise SourceError("cannot run %s: %s" % (argv[0], exc))


def psql(profile: dict, sql: str, category: str = "", timeout: float = 120) -> str:
    """Run SQL through `psql` with the profile's connection; stdout, records NUL-separated."""
    argv = [find_tool("psql", profile), "-X", "-q", "-A", "-t", "-0", "-v", "ON_ERROR_STOP=1"] + _conn_args(profile) + ["-f", "-"]
    with _client_env(profile) as env:
        proc = _run(argv, env, input_text=sql, timeout=timeout)
    if proc.returncode != 0:
        raise SourceError("%spsql on database %r at %s as %r failed: %s"
                          % ("%s: " % category if category else "", _db(profile).get("name"), _where(profile),
                             _db(profile).get("user"), _strip_prefix(_first_lines(proc.stderr), "psql")))
    return proc.stdout


# -- table patterns -----------------------------------------------------------------
def _pattern_parts(pattern: str) -> list:
    """pg_dump/psql pattern -> anchored POSIX regexes, one per dotted part
    (a port of psql's patternToSQLRegex as pg_dump calls it: no forced escaping)."""
    parts = [["^("]]
    inquotes = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
        cur = parts[-1]
        if ch == '"':
            if inquotes and nxt == '"':
                cur.append('"')
                i += 1
            else:
                inquotes = not inquotes
        elif not inquotes and "A" <= ch <= "Z":
            cur.append(ch.lower())
        elif not inquotes and ch == "*":
            cur.append(".*")
        elif not inquotes and ch == "?":
            cur.append(".")
        elif not inquotes and ch == ".":
            cur.append(")$")
            parts.append(["^("])
        elif ch == "$":
            cur.append("\\$")  # allowed in identifiers; anchoring makes its regex meaning useless
        else:
            if inquotes and ch in "|*+?()[]{}.^$\\":
                cur.append("\\")
            elif ch == "[" and nxt == "]":
                cur.append("\\")
            cur.append(ch)
        i += 1
    parts[-1].append(")$")
    return ["".join(p) for p in parts]


def _sql_literal(text: str) -> str:
    # E'' syntax: correct whatever standard_conforming_strings says.
    return "E'%s'" % text.replace("\\", "\\\\").replace("'", "''")


def pattern_condition(pattern: str, profile: dict, category: str = "") -> str:
    """SQL condition on pg_class c / pg_namespace n selecting what pg_dump -t PATTERN selects."""
    parts = _pattern_parts(pattern)
    who = ("%s: " % category) if category else ""
    if len(parts) > 3:
        raise SourceError("%stable pattern %r has too many dotted names (at most database.schema.table)" % (who, pattern))
    if len(parts) == 3:
        dbname = parts[0][2:-2].replace("\\", "")
        if dbname != (_db(profile).get("name") or ""):
            raise SourceError("%stable pattern %r names database %r, but the profile dumps %r (pg_dump cannot "
                              "reach across databases)" % (who, pattern, dbname, _db(profile).get("name")))
        parts = parts[1:]
    conds = []
    name = parts[-1]
    if name != "^(.*)$":
        conds.append("c.relname OPERATOR(pg_catalog.~) %s COLLATE pg_catalog.default" % _sql_literal(name))
    if len(parts) == 2:
        if parts[0] != "^(.*)$":
            conds.append("n.nspname OPERATOR(pg_catalog.~) %s COLLATE pg_catalog.default" % _sql_literal(parts[0]))
    else:
        conds.append("pg_catalog.pg_table_is_visible(c.oid)")  # unqualified: what the search_path sees
    return "(%s)" % " AND ".join(conds or ["true"])


def _any_pattern(patterns: list, profile: dict, category: str) -> str:
    return "(%s)" % " OR ".join(pattern_condition(p, profile, category) for p in patterns)


def _selection(source: Source, profile: dict) -> str:
    """SQL condition (on pg_class c, pg_namespace n) for the relations a dump holds."""
    if source.tables:
        return _any_pattern(source.tables, profile, source.category)
    cond = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
    if source.exclude_tables:
        cond += " AND NOT %s" % _any_pattern(source.exclude_tables, profile, source.category)
    return cond


def _selected_oids(source: Source, profile: dict) -> str:
    """SELECT of the pg_class oids a dump holds: what the patterns select, plus the
    sequences owned by a selected table (pg_dump dumps those with their table;
    an identity sequence only with its table)."""
    chosen = ("SELECT c.oid FROM pg_catalog.pg_class c "
              "LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
              "WHERE c.relkind IN %s AND %s" % (_PG_DUMP_RELKINDS, _selection(source, profile)))
    owned = ("SELECT d.objid FROM pg_catalog.pg_depend d "
             "WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
             "AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i') "
             "AND d.objsubid = 0 AND d.refobjsubid <> 0")
    return ("SELECT s.oid FROM pg_catalog.pg_class s WHERE "
            "(s.oid IN (%(chosen)s) AND s.oid NOT IN (%(owned)s AND d.deptype = 'i' AND d.refobjid NOT IN (%(chosen)s))) "
            "OR (s.relkind = 'S' AND s.oid IN (%(owned)s AND d.refobjid IN (%(chosen)s)))"
            % {"chosen": chosen, "owned": owned})


def relations(source: Source, profile: dict) -> list:
    """schema.name of every relation the source's dump holds (its tables, or every
    user relation but the excluded ones), as pg_dump selects them."""
    sql = ("SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c "
           "LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
           "WHERE c.oid IN (%s) ORDER BY 1;" % _selected_oids(source, profile))
    return [r for r in _records(psql(profile, sql, source.category)) if r]


def _records(out: str) -> list:
    return [r.strip("\n") for r in out.split("\0")]


# -- check ----------------------------------------------------------------------
def check(sources: list, profile: dict) -> None:
    """Raise SourceError naming the first source that cannot be read."""
    for src in sources:
        if src.kind == KIND_FILES:
            _check_path(src)
    db_sources = [s for s in sources if s.kind == KIND_DB]
    if not db_sources:
        return
    first = db_sources[0]
    for tool in ("pg_dump", "psql"):
        try:
            find_tool(tool, profile)
        except SourceError as exc:
            raise SourceError("%s: %s" % (first.category, exc))
    _check_connect(first.category, profile)
    for src in db_sources:
        for pattern in src.tables + src.exclude_tables:
            pattern_condition(pattern, profile, src.category)


def _check_path(src: Source) -> None:
    path = src.origin
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError("%s: source path %s does not exist" % (src.category, path))
    except OSError as exc:
        raise SourceError("%s: source path %s cannot be read: %s" % (src.category, path, exc.strerror or exc))
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError("%s: source path %s is not a directory (profile paths are directory trees)" % (src.category, path))
    if not os.access(path, os.R_OK | os.X_OK):
        raise SourceError("%s: source path %s is not readable (permission denied)" % (src.category, path))
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        raise SourceError("%s: source path %s is not readable: %s" % (src.category, path, exc.strerror or exc))


def _check_connect(category: str, profile: dict) -> None:
    db = _db(profile)
    argv = [find_tool("psql", profile), "-X", "-A", "-t"] + _conn_args(profile) + ["-c", "select 1"]
    with _client_env(profile) as env:
        proc = _run(argv, env, timeout=60)
    if proc.returncode != 0 or proc.stdout.strip() != "1":
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        reason = _strip_prefix(lines[0].strip(), "psql") if lines else "psql exited with %d" % proc.returncode
        raise SourceError("%s: cannot connect to PostgreSQL database %r at %s as %r: %s"
                          % (category, db.get("name"), _where(profile), db.get("user"), reason))


# -- sizes ------------------------------------------------------------------------
def measure_tree(path: str, category: str = "") -> tuple:
    """(bytes, files, directories) below `path`: lstat sizes of everything that is
    not a directory (files, symlinks, ...); symlinks are counted, never followed."""
    total = files = dirs = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # vanished while we looked: nothing to back up
                    if stat.S_ISDIR(st.st_mode):
                        dirs += 1
                        stack.append(entry.path)
                    else:
                        files += 1
                        total += st.st_size
        except FileNotFoundError:
            if current == path:
                raise SourceError("%s: source path %s does not exist" % (category, path))
        except OSError as exc:
            raise SourceError("%s: cannot read %s: %s" % (category, current, exc.strerror or exc))
    return total, files, dirs


def _size_query(source: Source, profile: dict) -> str:
    extra = "0" if source.tables else "pg_catalog.pg_total_relation_size('pg_catalog.pg_largeobject')"
    return ("(SELECT coalesce(sum(pg_catalog.pg_total_relation_size(c.oid)), 0) + %s FROM pg_catalog.pg_class c "
            "WHERE c.oid IN (%s))" % (extra, _selected_oids(source, profile)))


def database_sizes(db_sources: list, profile: dict) -> list:
    """Upper bound of each dump's size: pg_total_relation_size (data, TOAST, indexes) of the relations
    it holds, plus large objects for a whole-database dump. One psql call for all of them."""
    if not db_sources:
        return []
    sql = "SELECT %s;" % ", ".join(_size_query(src, profile) for src in db_sources)
    first = db_sources[0].category
    out = _records(psql(profile, sql, first))
    fields = out[0].split("|") if out else []
    if len(fields) == len(db_sources):
        try:
            return [int(f) for f in fields]
        except ValueError:
            pass
    raise SourceError("%s: unexpected answer from PostgreSQL while sizing the dump: %r" % (first, out[:1]))


def estimate(sources: list, profile: dict, spool_part: int = 0) -> int:
    """Bytes the archive's contents may take in staging (an upper bound). `spool_part`: with
    database sources, trees are compressed into parts of that size while the dumps run, and one part
    is in staging twice while it is copied into the archive."""
    dbs = [src for src in sources if src.kind == KIND_DB]
    total = sum(database_sizes(dbs, profile)) + len(dbs) * _TAR_OVERHEAD
    largest_tree = 0
    for src in sources:
        if src.kind != KIND_DB:
            size, files, dirs = measure_tree(src.origin, src.category)
            tree = size + (files + dirs + 1) * _TAR_OVERHEAD
            total += tree
            largest_tree = max(largest_tree, tree)
    if dbs:
        total += min(spool_part, largest_tree)
    return total


# -- dump and restore -----------------------------------------------------------------
def dump_argv(source: Source, profile: dict, dest_path: str, empty: bool = False) -> list:
    """The pg_dump command line (no password in it, ever)."""
    argv = [find_tool("pg_dump", profile), "-Fc", "-Z0"] + _conn_args(profile) + ["-f", dest_path]
    if empty:
        # pg_dump fails when no table matches its -t patterns ("no matching tables were
        # found"). A category whose tables do not exist (yet) still gets a real, valid
        # dump that restores nothing: the data of a view has nothing in it.
        return argv + ["--data-only", "-t", "pg_catalog.pg_tables"]
    for pattern in source.tables:
        argv += ["-t", pattern]
    for pattern in source.exclude_tables:
        argv += ["-T", pattern]
    return argv


def row_count_query(tables: list) -> str:
    """One query counting the rows of every (schema, name) table: records `schema.name|count`."""
    from .dumpguard import quote_ident  # local: dumpguard imports this module
    return " UNION ALL ".join("SELECT %s || '.' || %s, (SELECT count(*) FROM %s.%s)" % (
        _sql_literal(schema), _sql_literal(name), quote_ident(schema), quote_ident(name))
        for schema, name in tables) + ";"


def parse_row_counts(records) -> dict:
    """{schema.name: rows} from the records of row_count_query()."""
    out = {}
    for record in records:
        name, _sep, count = record.strip("\n").rpartition("|")
        if name and count.isdigit():
            out[name] = int(count)
    return out


def _count_into(snap, tables: list, counted: dict) -> None:
    try:
        counted.update(snap.count(tables))
    except Exception:  # pylint: disable=broad-except  # counts are information: a dump never fails on them
        pass


class _Snapshot:
    """A psql session holding a REPEATABLE READ transaction that exported its snapshot: pg_dump
    --snapshot dumps exactly what the row counts of this session see (a restore drill compares them
    with what it restores). Statements go in over a pipe; psql answers each as it comes."""

    def __init__(self, profile: dict, env: dict):
        import secrets as _secrets
        self.end = "sar-end-%s" % _secrets.token_hex(8)
        self.errors = tempfile.TemporaryFile(mode="w+")  # pylint: disable=consider-using-with
        # No ON_ERROR_STOP: psql leaving on an error would end the transaction, and the snapshot with it,
        # before pg_dump has imported it; queries run inside savepoints instead.
        argv = [find_tool("psql", profile), "-X", "-q", "-A", "-t"] + _conn_args(profile)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # pylint: disable=consider-using-with
                                     stderr=self.errors, text=True, errors="replace", env=env)
        lines = self.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_catalog.pg_export_snapshot();")
        self.id = lines[0] if lines and re.match(r"^[0-9A-Fa-f-]+$", lines[0]) else None
        if self.id is None:
            message = self.error()  # read before close() closes the file it is in
            self.close()
            raise SourceError("could not export a snapshot: %s" % message)

    def error(self) -> str:
        self.errors.seek(0)
        return _first_lines(self.errors.read(4096))

    def query(self, sql: str) -> list:
        """The output lines of `sql` (ended by a marker query); [] when psql has stopped."""
        try:
            self.proc.stdin.write("%s\nSELECT '%s';\n" % (sql, self.end))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return []
        out = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return []
            line = line.rstrip("\n")
            if line == self.end:
                return out
            out.append(line)

    def count(self, tables: list) -> dict:
        if not tables:
            return {}
        return parse_row_counts(self.query("SAVEPOINT sar_count;\n%s\nROLLBACK TO SAVEPOINT sar_count;"
                                           % row_count_query(tables)))

    def close(self) -> None:
        try:
            self.proc.stdin.write("COMMIT;\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.errors.close()


def _tables_of(source: Source, profile: dict, snap: _Snapshot) -> list:
    """(schema, name) of the ordinary and partitioned tables the dump holds, as the snapshot sees them
    (names travel hex-encoded: an identifier may hold a newline or a '|')."""
    lines = snap.query("SAVEPOINT sar_tables;\nSELECT pg_catalog.encode(pg_catalog.convert_to(n.nspname, 'UTF8'), 'hex') "
                       "|| '|' || pg_catalog.encode(pg_catalog.convert_to(c.relname, 'UTF8'), 'hex') "
                       "FROM pg_catalog.pg_class c "
                       "JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "
                       "WHERE c.relkind IN ('r', 'p') AND c.oid IN (%s) ORDER BY 1;\n"
                       "ROLLBACK TO SAVEPOINT sar_tables;" % _selected_oids(source, profile))
    out = []
    for line in lines:
        schema, sep, name = line.partition("|")
        try:
            pair = (bytes.fromhex(schema).decode("utf-8"), bytes.fromhex(name).decode("utf-8"))
        except ValueError:
            continue
        if sep and all(pair) and not any("\n" in p or "\0" in p for p in pair):
            out.append(pair)  # a name with a newline cannot be counted by line: left uncounted
    return out


def dump(source: Source, profile: dict, dest_path: str, log=None) -> int:
    """Dump a postgresql source with the real pg_dump into dest_path (0600); its size.

    pg_dump runs without --strict-names: a -t pattern that matches nothing is fine
    as long as another one matches. When none matches, pg_dump refuses ("no matching
    tables were found"); the category's dump is then a valid, empty archive (logged),
    so a category whose tables do not exist yet still backs up its files."""
    if source.kind != KIND_DB:
        raise SourceError("%s: %s is not a database source" % (source.category, source.member))
    db = _db(profile)
    directory = os.path.dirname(os.path.abspath(dest_path))
    fd = os.open(dest_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    ok = False
    snap = None
    try:
        with _client_env(profile, directory) as env:
            argv = dump_argv(source, profile, dest_path)
            counted: dict = {}
            counter = None
            try:
                snap = _Snapshot(profile, env)
                argv += ["--snapshot", snap.id]
                tables = _tables_of(source, profile, snap)
                # Counted in the snapshot while pg_dump dumps it (the other core is free meanwhile).
                counter = threading.Thread(target=_count_into, args=(snap, tables, counted), daemon=True)
                counter.start()
            except SourceError as exc:
                if log:
                    log("%s: no row counts for this dump (%s)" % (source.category, exc))
            proc = _run(argv, env)
            if counter is not None:
                counter.join()
                source.rows = dict(counted)
            if proc.returncode != 0 and source.tables and "no matching tables were found" in proc.stderr:
                if log:
                    log("%s: no table in database %r matches %s: its dump is empty"
                        % (source.category, db.get("name"), ", ".join(source.tables)))
                proc = _run(dump_argv(source, profile, dest_path, empty=True), env)
        if proc.returncode != 0:
            # A full staging disk is the disk's fault, not the database's: monitoring keys on diskFull.
            full = "No space left on device" in proc.stderr
            raise SourceError("%s: pg_dump of database %r at %s as %r failed (exit %d): %s%s"
                              % (source.category, db.get("name"), _where(profile), db.get("user"),
                                 proc.returncode, _first_lines(proc.stderr),
                                 " (staging directory %s is full)" % directory if full else ""),
                              code=DISK_FULL if full else None)
        size = os.path.getsize(dest_path)
        ok = True
        return size
    finally:
        if snap is not None:
            snap.close()
        if not ok:
            try:
                os.unlink(dest_path)
            except OSError:
                pass


def restore_dump(dump_path: str, category: str, profile: dict, workdir: str | None = None, log=None,
                 member: str | None = None) -> None:
    """Restore one dump of `category` into the profile's database, checked and all or
    nothing like restore_dumps() (workdir: where its SQL script goes; default a private
    temporary directory)."""
    own_dir = None
    if workdir is None:
        own_dir = workdir = tempfile.mkdtemp(prefix="sar-backup-restore-")
    try:
        restore_dumps([(category, dump_path, member or os.path.basename(dump_path))], profile, workdir, log=log)
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)


def _restore_role_risks(profile: dict) -> tuple:
    """(role, [what it may do beyond its tables]) for the role the restore runs as: the
    profile's restore_role if set (SET ROLE), else the connecting user."""
    from .dumpguard import quote_ident  # local: dumpguard imports this module
    role = _db(profile).get("restore_role")
    sql = "SET ROLE %s;\n" % quote_ident(role) if role else ""
    sql += ("SELECT v.x FROM pg_catalog.pg_roles r, LATERAL (VALUES (1, CURRENT_USER::pg_catalog.text), "
            "(2, pg_catalog.concat_ws(', ', CASE WHEN r.rolsuper THEN 'a superuser' END, "
            "CASE WHEN pg_catalog.pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER') "
            "THEN 'a member of pg_execute_server_program' END, "
            "CASE WHEN pg_catalog.pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER') "
            "THEN 'a member of pg_read_server_files' END, "
            "CASE WHEN pg_catalog.pg_has_role(r.oid, 'pg_write_server_files', 'MEMBER') "
            "THEN 'a member of pg_write_server_files' END))) AS v(o, x) "
            "WHERE r.rolname = CURRENT_USER ORDER BY v.o;")
    try:
        out = _records(psql(profile, sql))
    except SourceError as exc:
        if role:
            raise SourceError("profile.database.restore_role %r cannot be used by %r: %s"
                              % (role, _db(profile).get("user"), exc))
        raise
    if len(out) < 2:
        return role or _db(profile).get("user"), []
    return out[0], [r for r in out[1].split(", ") if r]


def restore_dumps(dumps: list, profile: dict, workdir: str, log=None) -> None:
    """Restore dumps made by dump() into the profile's database in ONE transaction.

    `dumps` is [(category, dump path, archive member)]. Each dump is checked first
    (dumpguard.inspect_dump: its table of contents and its SQL script may touch only what the
    PROFILE gives its category; refused with verifyFailed, nothing run); then psql runs our own
    prologue (SET ROLE profile.database.restore_role when set; the live-database checks of the
    scripts' claims) and every script with --single-transaction and ON_ERROR_STOP, so either
    every category is restored or none."""
    from . import dumpguard  # local: dumpguard imports this module
    db = _db(profile)
    checked = []
    prologue = None
    try:
        for category, path, member in dumps:
            checked.append(dumpguard.inspect_dump(path, category, profile, workdir, member=member))
        role, risks = _restore_role_risks(profile)
        if risks and log:
            log("restoring as role %r, which is %s: the dump check is then the only guard against server-side "
                "programs and files (set profile.database.restore_role to a role without these rights)"
                % (role, " and ".join(risks)))
        fd, prologue = tempfile.mkstemp(prefix=".restore-prologue-", suffix=".sql", dir=workdir)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumpguard.restore_prologue(profile, checked))
        argv = [find_tool("psql", profile), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"] + _conn_args(profile)
        for script in [prologue] + [c.script for c in checked]:
            argv += ["-f", script]
        if log:
            log("restoring %s into database %r at %s (one transaction)"
                % (", ".join(c.member for c in checked), db.get("name"), _where(profile)))
        with _client_env(profile) as env:
            env["PGCLIENTENCODING"] = "UTF8"  # an ASCII-safe encoding until a script sets its own (checked) one
            proc = _run(argv, env)
    finally:
        for path in [prologue] + [c.script for c in checked]:
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    if proc.returncode != 0:
        raise SourceError("restoring into database %r at %s as %r failed, nothing was changed (psql exit %d): %s"
                          % (db.get("name"), _where(profile), db.get("user"), proc.returncode,
                             _first_lines(proc.stderr)))


# Dumps of different categories run at once (each its own pg_dump and snapshot session); more would
# only queue on the server's disk.
MAX_PARALLEL_DUMPS = 3


def measure_trees(sources: list) -> None:
    """Measure every tree source (size, files): what the manifest declares and the reader's caps follow."""
    for src in sources:
        if src.kind != KIND_DB:
            src.size, src.files, _dirs = measure_tree(src.origin, src.category)


def prepare(sources: list, profile: dict, staging_dir: str, log=None, measure: bool = True) -> None:
    """Dump every database source into staging_dir and measure every tree (unless `measure` is false:
    measure_trees() did already).

    The dumps of different categories run at the same time (a pg_dump each). A dump that fails
    leaves no file (dump() removes it); the others are waited for, then the first failure, in the
    sources' order, is raised: no source is archived unless every dump is complete."""
    dbs = [src for src in sources if src.kind == KIND_DB]

    def one(src):
        dest = os.path.join(staging_dir, "%s.pgdump" % src.category)
        if log:
            log("%s: pg_dump %s" % (src.category, src.origin))
        size = dump(src, profile, dest, log=log)
        src.size, src.files, src.local_path = size, 1, dest

    failures = {}
    if len(dbs) > 1:
        with ThreadPoolExecutor(max_workers=min(len(dbs), MAX_PARALLEL_DUMPS)) as pool:
            futures = [(src, pool.submit(one, src)) for src in dbs]
            for src, future in futures:
                try:
                    future.result()
                except Exception as exc:  # pylint: disable=broad-except  # re-raised below, in order
                    failures[id(src)] = exc
    for src in sources:
        if src.kind == KIND_DB:
            if id(src) in failures:
                raise failures[id(src)]
            if len(dbs) == 1:
                one(src)
        elif measure:
            src.size, src.files, _dirs = measure_tree(src.origin, src.category)
