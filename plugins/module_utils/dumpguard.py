# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""A database dump restores only what its category owns (docs/restore.md,
"Database dumps: what is trusted").

A dump comes out of an archive that anyone able to write to a share, a server
or a USB stick may have crafted. Before anything of it runs:

1. its table of contents (`pg_restore -l`, no database needed) may hold only
   tables, sequences, indexes, constraints, column defaults, comments, ACLs and
   data of the category's own tables, "own" as the host's PROFILE says (the
   `tables` / `exclude_tables` patterns of that category), never the archive;
2. `pg_restore --clean --if-exists --no-owner -L <those entries>` writes the
   SQL script, and the script is lexed as psql would lex it (psqlscan.l):
   no backslash outside a string literal or COPY data (psql meta-commands
   start with one; the `\\restrict KEY` / `\\unrestrict KEY` lines carrying our
   own random key are the only exception), every statement must have a shape
   pg_restore writes for those entry kinds and name only the category's
   relations, and no denylisted server-side function (files, programs, large
   objects, other backends, settings) is called anywhere, in a DEFAULT or a
   CHECK included.

Pattern semantics follow pg_dump (`sources._pattern_parts` is the port of
psql's pattern -> regex): a qualified pattern matches schema and name, a
three-part one ignores its database part; an UNQUALIFIED pattern takes schema
`public` (pg_dump would use the search_path, which the restore cannot know; the
appliance keeps its tables in `public`). In `exclude_tables` mode the category
owns every relation of a non-system schema matching none of the patterns, and
the schemas themselves (`CREATE SCHEMA`, dropped only when empty). Sequences
owned by (or the identity of) one of the category's tables count as its own;
that ownership is claimed by the script and checked against the live database
in the restore's own transaction (`restore_prologue`), as is the table of
every index the script drops."""

from __future__ import annotations

import mmap
import os
import re
import secrets
import subprocess
from dataclasses import dataclass, field

from .errors import VERIFY_FAILED, SarError
from .sources import _first_lines, _pattern_parts, find_tool

# -- the table of contents -----------------------------------------------------------------
# Every kind pg_dump writes (longest first, so "TABLE DATA" wins over "TABLE"): naming a refused entry.
_KNOWN_DESCS = sorted((
    "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOB METADATA", "BLOBS", "CAST", "CHECK CONSTRAINT",
    "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE", "DATABASE PROPERTIES", "DEFAULT",
    "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER", "EXTENSION", "FK CONSTRAINT", "FOREIGN DATA WRAPPER",
    "FOREIGN SERVER", "FOREIGN TABLE", "FUNCTION", "INDEX", "INDEX ATTACH", "LARGE OBJECT", "MATERIALIZED VIEW",
    "MATERIALIZED VIEW DATA", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY", "PROCEDURAL LANGUAGE",
    "PROCEDURE", "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "ROW SECURITY", "RULE",
    "SCHEMA", "SEARCHPATH", "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET", "SERVER",
    "SHELL TYPE", "STATISTICS", "STATISTICS DATA", "STDSTRINGS", "SUBSCRIPTION", "SUBSCRIPTION TABLE", "TABLE",
    "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER",
    "TEXT SEARCH TEMPLATE", "TRANSFORM", "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
), key=len, reverse=True)
_FIXED_DESCS = ("ENCODING", "STDSTRINGS", "SEARCHPATH")
_TOC_LINE = re.compile(r"(\d+); (\d+) (\d+) (.*)\Z", re.S)
_MAX_NAME_SPACES = 40
_MAX_REPORTED = 10
NAMEDATALEN = 64  # PostgreSQL truncates longer names to 63 bytes: we refuse them instead


def _refusal(member: str, problem: str) -> SarError:
    return SarError("%s: %s" % (member, problem), VERIFY_FAILED)


def is_system_schema(schema: str) -> bool:
    """pg_catalog, information_schema and every pg_* schema (toast, temp: the prefix is reserved)."""
    return schema.startswith("pg_") or schema == "information_schema"


def _compile_part(part: str, pattern: str, member: str):
    inner = part[2:-2]  # _pattern_parts anchors each part as ^(...)$
    try:
        return re.compile("(?:%s)\\Z" % inner, re.S)
    except re.error as exc:
        raise _refusal(member, "table pattern %r of the profile cannot be matched here (%s)" % (pattern, exc))


class Ownership:
    """Which relations a category owns, decided from the profile alone."""

    def __init__(self, category: str, profile: dict, member: str):
        spec = ((profile or {}).get("categories") or {}).get(category)
        spec = spec if isinstance(spec, dict) else {}
        tables = list(spec.get("tables") or [])
        exclude = list(spec.get("exclude_tables") or [])
        self.category = category
        if tables and exclude:
            raise _refusal(member, "the profile gives category %s both tables and exclude_tables" % category)
        if not tables and not exclude:
            raise _refusal(member, "the profile has no tables for category %s: a dump of it is not restored" % category)
        self.mode = "tables" if tables else "exclude"
        self.patterns = tables or exclude
        self._compiled = []
        for pattern in self.patterns:
            parts = _pattern_parts(pattern)
            if len(parts) > 3:
                raise _refusal(member, "table pattern %r has too many dotted names" % pattern)
            parts = parts[-2:] if len(parts) > 1 else ["^(public)$"] + parts
            self._compiled.append(tuple(_compile_part(p, pattern, member) for p in parts))

    def _matches(self, schema: str, name: str) -> bool:
        return any(s.match(schema) and n.match(name) for s, n in self._compiled)

    def relation(self, schema: str, name: str) -> bool:
        """Is schema.name (exact, unquoted spelling) one of the category's relations by name?"""
        if is_system_schema(schema) or not schema or not name:
            return False
        hit = self._matches(schema, name)
        return hit if self.mode == "tables" else not hit

    def schema(self, schema: str) -> bool:
        """May the dump create/drop/comment/grant on this schema? Only a whole-database
        (exclude_tables) category, and never a system schema."""
        return self.mode == "exclude" and bool(schema) and not is_system_schema(schema)

    def describe(self) -> str:
        if self.mode == "tables":
            return "the %s category's tables (profile: tables %s)" % (self.category, ", ".join(self.patterns))
        return "the %s category's tables (profile: every table but exclude_tables %s)" % (
            self.category, ", ".join(self.patterns))


@dataclass
class TocEntry:
    """One line of `pg_restore -l`: `<id>; <tableoid> <oid> <desc> <schema> <name> <owner>`."""

    dump_id: int
    desc: str
    rest: str       # "<schema> <name> <owner>" as listed (names may hold spaces)
    line: str

    def fields(self) -> tuple:
        """(schema, name) for messages: the first word and the words up to the owner."""
        words = self.rest.split(" ")
        if len(words) >= 3:
            return words[0], " ".join(words[1:-1])
        return (words[0], "") if words else ("", "")

    def label(self) -> str:
        schema, name = self.fields()
        return "TOC entry %d (%s %s %s)" % (self.dump_id, self.desc, schema, name)


def _candidates(rest: str):
    """Every (schema, name) reading of "<schema> <name> <owner>" (each may contain spaces)."""
    words = rest.split(" ")
    if len(words) > _MAX_NAME_SPACES:
        return
    for end in range(2, len(words)):          # words[end:] is the owner (maybe "")
        for cut in range(1, end):
            yield " ".join(words[:cut]), " ".join(words[cut:end])


_IDENT_IN_TAG = re.compile(r'"(?:[^"]|"")+"|[^\s."]+')


def _tag_names(text: str) -> list | None:
    """fmtId()-quoted dotted names of a COMMENT/ACL tag ("users.login", "\"Odd\".x") -> parts."""
    parts = []
    pos = 0
    while True:
        match = _IDENT_IN_TAG.match(text, pos)
        if not match:
            return None
        token = match.group(0)
        parts.append(token[1:-1].replace('""', '"') if token.startswith('"') else token)
        pos = match.end()
        if pos == len(text):
            return parts
        if text[pos] != ".":
            return None
        pos += 1


def _comment_target_ok(own: Ownership, schema: str, tag: str) -> bool:
    """A COMMENT or ACL entry on the category's table/column/sequence/index/constraint (or, for a
    whole-database category, schema)."""
    kind, _sep, what = tag.partition(" ")
    if kind == "SCHEMA":
        names = _tag_names(what)
        return bool(names) and len(names) == 1 and schema in ("-", "") and own.schema(names[0])
    if is_system_schema(schema) or schema in ("-", ""):
        return False
    if kind == "CONSTRAINT":
        conname, sep, table = what.rpartition(" ON ")
        names = _tag_names(table) if sep else None
        return bool(conname) and bool(names) and len(names) == 1 and own.relation(schema, names[0])
    names = _tag_names(what)
    if not names:
        return False
    if kind == "TABLE" and len(names) == 1:
        return own.relation(schema, names[0])
    if kind == "COLUMN" and len(names) == 2:
        return own.relation(schema, names[0])
    # sequences and indexes: whose they are is settled by the script check
    return kind in ("SEQUENCE", "INDEX") and len(names) == 1


def _entry_problem(entry: TocEntry, own: Ownership) -> str | None:
    """None if the entry may be restored, else what is wrong with it."""
    desc = entry.desc
    if desc in _FIXED_DESCS:
        return None
    readings = list(_candidates(entry.rest))
    if not readings:
        return "its schema, name and owner cannot be told apart"
    if desc in ("TABLE", "TABLE DATA"):
        if any(own.relation(s, n) for s, n in readings):
            return None
        return "%s.%s is not one of %s" % (readings[0][0], readings[0][1], own.describe())
    if desc in ("SEQUENCE", "SEQUENCE SET", "SEQUENCE OWNED BY", "INDEX"):
        # by name, or (settled by the script check) owned by / built on one of the category's tables
        if any(not is_system_schema(s) and s not in ("-", "") for s, _n in readings):
            return None
        return "it is in a system schema"
    if desc in ("CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "DEFAULT"):
        for schema, name in readings:
            words = name.split(" ")
            if any(own.relation(schema, " ".join(words[:i])) for i in range(1, len(words))):
                return None
        return "it belongs to a table that is not one of %s" % own.describe()
    if desc in ("COMMENT", "ACL"):
        if any(_comment_target_ok(own, s, n) for s, n in readings):
            return None
        return "it is not on one of %s" % own.describe()
    if desc == "SCHEMA":
        if any(s in ("-", "") and own.schema(n) for s, n in readings):
            return None
        if own.mode == "tables":
            return "a SCHEMA entry; a dump of chosen tables (profile: tables) never holds one"
        return "a SCHEMA entry for a system schema"
    return ("a %s entry: a dump may hold only tables, sequences, indexes, constraints, defaults, comments, "
            "privileges and data of its category's tables" % desc)


def _subprocess(argv: list, what: str, member: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              env=dict(os.environ), check=False, timeout=3600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise _refusal(member, "cannot run %s: %s" % (what, exc))


def read_toc(dump_path: str, profile: dict, member: str) -> list:
    """The dump's table of contents as `pg_restore -l` lists it (refused if it cannot)."""
    proc = _subprocess([find_tool("pg_restore", profile), "-l", dump_path], "pg_restore -l", member)
    if proc.returncode != 0:
        raise _refusal(member, "pg_restore cannot read this dump (exit %d): %s"
                       % (proc.returncode, _first_lines(proc.stderr.decode("utf-8", "replace"))))
    entries = []
    seen = set()
    for line in proc.stdout.decode("utf-8", "surrogateescape").split("\n"):
        if not line or line.startswith(";"):
            continue
        match = _TOC_LINE.match(line)
        if not match:
            raise _refusal(member, "pg_restore -l printed a line that is no TOC entry: %r" % line[:200])
        dump_id = int(match.group(1))
        text = match.group(4)
        desc = next((d for d in _KNOWN_DESCS if text.startswith(d + " ")), text.split(" ")[0])
        if dump_id in seen:
            raise _refusal(member, "TOC entry %d is listed twice" % dump_id)
        seen.add(dump_id)
        entries.append(TocEntry(dump_id, desc, text[len(desc) + 1:], line))
    return entries


def check_toc(entries: list, own: Ownership, member: str) -> None:
    """Refuse (naming every bad entry, up to a few) unless all entries are the category's."""
    problems = []
    for entry in entries:
        problem = _entry_problem(entry, own)
        if problem:
            problems.append("%s: %s" % (entry.label(), problem))
    if problems:
        more = len(problems) - _MAX_REPORTED
        raise _refusal(member, "the dump holds what its category may not restore: %s%s"
                       % ("; ".join(problems[:_MAX_REPORTED]), "; and %d more" % more if more > 0 else ""))


# -- checked dumps and the restore's own prologue -------------------------------------------
@dataclass
class CheckedDump:
    """A dump whose SQL script passed every check; `claims` are what the script's own words
    state about the live database and the prologue verifies there: ("sequence"|"index",
    (schema, name), (table schema, table name))."""

    category: str
    member: str
    script: str
    claims: list = field(default_factory=list)


_RESTRICT_SUPPORT = {}


def _supports_restrict_key(tool: str) -> bool:
    if tool not in _RESTRICT_SUPPORT:
        try:
            out = subprocess.run([tool, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, check=False, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = b""
        _RESTRICT_SUPPORT[tool] = b"--restrict-key" in out
    return _RESTRICT_SUPPORT[tool]


def _private_file(workdir: str, name: str) -> str:
    """A new empty 0600 file in workdir (pg_restore -f keeps the mode of a file that exists)."""
    path = os.path.join(workdir, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return path


def _unlink(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def inspect_dump(dump_path: str, category: str, profile: dict, workdir: str, member: str | None = None) -> CheckedDump:
    """check_dump(), keeping what the restore's prologue must verify in the live database."""
    member = member or os.path.basename(dump_path)
    own = Ownership(category, profile, member)
    entries = read_toc(dump_path, profile, member)
    check_toc(entries, own, member)
    tool = find_tool("pg_restore", profile)
    key = secrets.token_hex(24) if _supports_restrict_key(tool) else None
    tag = "%s-%s" % (re.sub(r"[^A-Za-z0-9_]", "_", category)[:40], secrets.token_hex(4))
    listing = script = None
    ok = False
    try:
        listing = _private_file(workdir, ".dump-%s.list" % tag)
        with open(listing, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write("".join("%d;\n" % e.dump_id for e in entries))
        script = _private_file(workdir, ".dump-%s.sql" % tag)
        argv = [tool, "--clean", "--if-exists", "--no-owner"] + (["--restrict-key", key] if key else [])
        proc = _subprocess(argv + ["-L", listing, "-f", script, dump_path], "pg_restore", member)
        if proc.returncode != 0:
            raise _refusal(member, "pg_restore could not turn the dump into SQL (exit %d): %s"
                           % (proc.returncode, _first_lines(proc.stderr.decode("utf-8", "replace"))))
        claims = ScriptCheck(own, member, entries, key).run(script)
        ok = True
        return CheckedDump(category, member, script, claims)
    finally:
        _unlink(listing)
        if not ok:
            _unlink(script)


def check_dump(dump_path: str, category: str, profile: dict, workdir: str, member: str | None = None) -> str:
    """Check a dump of `category` before anything of it runs; the path of its validated SQL
    script (in workdir, 0600), or SarError(verifyFailed) naming the archive member, the TOC
    entry and what is wrong. Needs pg_restore, no database."""
    return inspect_dump(dump_path, category, profile, workdir, member).script


def quote_ident(name: str) -> str:
    return '"%s"' % name.replace('"', '""')


def _literal(text: str) -> str:
    # E'' so it reads the same whatever standard_conforming_strings is.
    return "E'%s'" % text.replace("\\", "\\\\").replace("'", "''")


def _qualified(pair: tuple) -> str:
    return "%s.%s" % (quote_ident(pair[0]), quote_ident(pair[1]))


def restore_prologue(profile: dict, checked: list) -> str:
    """The SQL psql runs first, from our own file, in the restore's transaction:
    standard_conforming_strings on (the scripts were lexed that way), SET ROLE to
    profile.database.restore_role when set, and the live-database checks of what the
    scripts claim (a sequence they drop is owned by the table they say, an index they
    drop is on the table they say): a failing check aborts the whole transaction."""
    lines = ["SET standard_conforming_strings = on;"]
    role = ((profile or {}).get("database") or {}).get("restore_role")
    if role:
        if "\0" in role:
            raise SarError("profile.database.restore_role must not contain a NUL character", VERIFY_FAILED)
        lines.append("SET ROLE %s;" % quote_ident(role))
    checks = []
    for dump in checked:
        for kind, obj, table in dump.claims:
            obj_lit = _literal(_qualified(obj))
            table_lit = _literal(_qualified(table))
            if kind == "index":
                test = ("SELECT 1 FROM pg_catalog.pg_index i WHERE i.indexrelid = pg_catalog.to_regclass(%s) "
                        "AND i.indrelid = pg_catalog.to_regclass(%s)" % (obj_lit, table_lit))
                what = "index %s.%s is not an index of table %s.%s" % (obj + table)
            else:
                test = ("SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
                        "AND d.objid = pg_catalog.to_regclass(%s) AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
                        "AND d.refobjid = pg_catalog.to_regclass(%s) AND d.deptype IN ('a', 'i')" % (obj_lit, table_lit))
                what = "sequence %s.%s is not owned by table %s.%s" % (obj + table)
            message = "%s: in this database %s; the dump may not replace it" % (dump.member, what)
            checks.append("    IF pg_catalog.to_regclass(%s) IS NOT NULL AND NOT EXISTS (%s) THEN\n"
                          "        RAISE EXCEPTION '%%', %s;\n    END IF;" % (obj_lit, test, _literal(message)))
    if checks:
        lines.append("DO $sar_backup_guard$\nBEGIN\n%s\nEND\n$sar_backup_guard$;" % "\n".join(checks))
    return "\n".join(lines) + "\n"


# -- the script check: psql's lexical rules (psqlscan.l) -----------------------------------------
class _Refused(Exception):
    def __init__(self, problem: str, pos: int | None = None, entry: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.pos = pos
        self.entry = entry   # the TOC entry at fault, when known better than by the last header


class _Tok:
    __slots__ = ("kind", "raw", "value", "pos")

    def __init__(self, kind: str, raw: bytes, value: bytes, pos: int):
        self.kind = kind      # ident qident string estring number op punct
        self.raw = raw
        self.value = value    # ident: lower-cased; qident/string: content (quotes undone)
        self.pos = pos

    def is_kw(self, *words) -> bool:
        return self.kind == "ident" and self.value.decode("ascii", "replace") in words


_SPACE = re.compile(rb"[ \t\n\r\f]+")
_LINE_COMMENT = re.compile(rb"--[^\n\r]*")
_COMMENT_MARK = re.compile(rb"/\*|\*+/")
_ESTRING_BODY = re.compile(rb"[^\\']*(?:\\[\s\S][^\\']*)*")
_STRING_BODY = re.compile(rb"[^']*")
_NAME_IN_STRING = re.compile(rb"[a-z_][a-z0-9_$]*")
_IDENT = re.compile(rb"[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9$]*")
_NUMBER = re.compile(rb"(?:\d+(?:\.(?!\.)\d*)?|\.\d+)(?:[Ee][-+]?\d+)?")
_OPERATOR = re.compile(rb"[~!@#^&|`?+\-*/%<>=]+")
_DOLLAR_DELIM = re.compile(rb"\$(?:[A-Za-z\x80-\xff_][A-Za-z\x80-\xff_0-9]*)?\$")
_IDENT_CHAR = re.compile(rb"[A-Za-z\x80-\xff_0-9$]")
_PSQL_VARIABLE = re.compile(rb":[A-Za-z\x80-\xff_0-9'\"{]")
_ENTRY_HEADER = re.compile(r"--\s*(?:Data for )?Name: (.*); Type: ([A-Z ]+); Schema: (.*?); Owner:")

# Server encodings (every byte < 0x80 is ASCII in them): the only client encodings a script may
# switch to, so that a backslash or quote byte is never the tail of a multibyte character.
_CODECS = {
    "UTF8": "utf-8", "SQL_ASCII": "ascii", "LATIN1": "latin-1", "LATIN2": "iso8859-2", "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4", "LATIN5": "iso8859-9", "LATIN6": "iso8859-10", "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14", "LATIN9": "iso8859-15", "LATIN10": "iso8859-16", "WIN1250": "cp1250",
    "WIN1251": "cp1251", "WIN1252": "cp1252", "WIN1253": "cp1253", "WIN1254": "cp1254", "WIN1255": "cp1255",
    "WIN1256": "cp1256", "WIN1257": "cp1257", "WIN1258": "cp1258", "WIN866": "cp866", "WIN874": "cp874",
    "KOI8R": "koi8-r", "KOI8U": "koi8-u", "ISO_8859_5": "iso8859-5", "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7", "ISO_8859_8": "iso8859-8", "EUC_JP": "euc-jp", "EUC_CN": "gb2312",
    "EUC_KR": "euc-kr", "EUC_JIS_2004": "euc_jis_2004", "EUC_TW": "ascii", "MULE_INTERNAL": "ascii",
}

# SET <name> = <value> lines pg_restore writes, and what each value may be.
_SETTINGS = {
    "statement_timeout": None, "lock_timeout": None, "idle_in_transaction_session_timeout": None,
    "transaction_timeout": None, "client_encoding": None, "standard_conforming_strings": ("on",),
    "check_function_bodies": ("false", "off"), "xmloption": ("content", "document"),
    "client_min_messages": ("warning", "notice", "error", "log", "info", "debug1", "debug2", "debug3",
                            "debug4", "debug5"),
    "row_security": ("on", "off"), "default_tablespace": None, "default_table_access_method": None,
    "default_with_oids": ("false", "off"), "escape_string_warning": ("off", "false"),
}

# Server-side functions a restore never calls: files, programs, large objects, other sessions,
# settings, replication, queries hidden in strings.
_DENIED_FUNCTIONS = frozenset((
    "lo_import", "lo_export", "lo_unlink", "lo_create", "lo_creat", "lo_open", "lo_close", "lo_put", "lo_get",
    "lo_from_bytea", "lo_truncate", "lo_truncate64", "lo_lseek", "lo_lseek64", "lo_tell", "lo_tell64", "lowrite",
    "loread", "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_file_write",
    "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_logdir_ls", "pg_current_logfile",
    "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_promote", "pg_switch_wal", "pg_create_restore_point", "pg_backup_start", "pg_backup_stop",
    "pg_start_backup", "pg_stop_backup", "pg_wal_replay_pause", "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts", "pg_import_system_collations", "pg_sleep", "pg_sleep_for",
    "pg_sleep_until", "pg_notify", "set_config", "setval", "ts_stat", "pg_nextoid",
    "pg_stop_making_pinned_objects", "pg_drop_replication_slot",
))
_DENIED_PREFIXES = ("dblink", "lo_", "pg_read_", "pg_ls_", "pg_file_", "pg_stat_reset", "pg_advisory",
                    "pg_try_advisory", "pg_create_", "pg_replication_", "pg_logical_", "pg_copy_",
                    "query_to_xml", "cursor_to_xml", "table_to_xml", "schema_to_xml", "database_to_xml",
                    "binary_upgrade_")
_SEQUENCE_FUNCTIONS = ("nextval", "currval")
_PRIVILEGES = ("select", "insert", "update", "delete", "truncate", "references", "trigger", "usage", "create",
               "maintain", "all", "privileges")


def denied_function(name: str) -> bool:
    name = name.lower()
    return name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES)


class ScriptCheck:
    """Validate the SQL script pg_restore wrote (see the module docstring). `run()` returns the
    claims the prologue checks in the live database."""

    chunk = 8 << 20  # bytes searched at a time for NUL bytes and the end of COPY data

    def __init__(self, own: Ownership, member: str, entries: list, key: str | None):
        self.own = own
        self.member = member
        self.entries = entries
        self.key = key.encode("ascii") if key else None
        self.buf = b""
        self.pos = 0
        self.hint = None            # the last "-- Name: ...; Type: ...; Schema: ..." header
        self.restricted = False     # \restrict seen
        self.finished = False       # \unrestrict seen: nothing may follow
        self.statements = 0
        self.codec = "utf-8"
        self.seq_owner = {}         # (schema, seq) -> owning (schema, table), claimed by the script
        self.index_table = {}       # (schema, index) -> (schema, table) it is built on
        self.uses = []              # (kind, (schema, name), pos): settled once the whole script is read
        self.dropped_indexes = []

    # -- entry point --------------------------------------------------------------------------
    def run(self, script: str) -> list:
        size = os.path.getsize(script)
        if size == 0:
            self._fail("the SQL script is empty", None)
        with open(script, "rb") as handle:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                self.buf = buf
                try:
                    return self._check_all()
                except _Refused as exc:
                    self._fail(exc.problem, exc.pos, exc.entry)
                finally:
                    self.buf = b""
        return []  # not reached

    def _fail(self, problem: str, pos: int | None, entry: str | None = None):
        where = ""
        if pos is not None and self.buf:
            lines = 1 + sum(self.buf[i:min(i + (1 << 20), pos)].count(b"\n") for i in range(0, pos, 1 << 20))
            where = " (script line %d)" % lines
        entry = entry or self._hint_entry()
        raise _refusal(self.member, "%sSQL the restore would not have written itself%s: %s"
                       % ("%s: " % entry if entry else "", where, problem))

    def _hint_entry(self, hint: tuple | None = None) -> str:
        hint = hint or self.hint
        if not hint:
            return ""
        name, desc, schema = hint
        for entry in self.entries:
            if entry.desc == desc and entry.rest.startswith("%s %s " % (schema, name)):
                return entry.label()
        return "TOC entry (%s %s %s)" % (desc, schema, name)

    def _release(self, start: int, end: int) -> None:
        """Drop pages of the mapped script we are done with from our memory (they stay in the
        page cache): a script of gigabytes of COPY data is checked in little memory."""
        page = mmap.PAGESIZE
        start -= start % page
        if end - start >= page and hasattr(self.buf, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                self.buf.madvise(mmap.MADV_DONTNEED, start, end - start - (end - start) % page)
            except (OSError, ValueError):
                pass

    def _find(self, needle: bytes, start: int) -> int:
        """buf.find(needle, start), a chunk at a time, releasing what it has read."""
        chunk = self.chunk
        size = len(self.buf)
        while start < size:
            end = min(start + chunk + len(needle) - 1, size)
            found = self.buf.find(needle, start, end)
            if found >= 0 or end == size:
                return found
            self._release(start, end - len(needle) + 1)
            start = end - len(needle) + 1
        return -1

    def _check_all(self) -> list:
        nul = self._find(b"\0", 0)
        if nul >= 0:
            raise _Refused("a NUL byte", nul)
        while True:
            toks = self._statement()
            if toks is None:
                break
            self.statements += 1
            self._check_statement(toks)
        if self.key and not self.finished:
            raise _Refused("the script does not end with pg_restore's \\unrestrict line", len(self.buf))
        return self._settle()

    # -- lexer --------------------------------------------------------------------------------
    def _statement(self):
        """The tokens up to a terminating semicolon (not included); None at the end."""
        toks = []
        depth = 0
        while True:
            tok = self._token(at_start=not toks)
            if tok is None:
                if toks:
                    raise _Refused("a statement without its terminating semicolon", toks[0].pos)
                return None
            if self.finished:
                raise _Refused("text after pg_restore's \\unrestrict line", tok.pos)
            if self.key and not self.restricted:
                raise _Refused("SQL before pg_restore's \\restrict line", tok.pos)
            if tok.kind == "punct" and tok.raw == b"(":
                depth += 1
            elif tok.kind == "punct" and tok.raw == b")":
                if depth == 0:
                    raise _Refused("a closing parenthesis without its opening one", tok.pos)
                depth -= 1
            elif tok.kind == "punct" and tok.raw == b";":
                if depth:
                    raise _Refused("a semicolon inside parentheses", tok.pos)
                if not toks:
                    raise _Refused("an empty statement", tok.pos)
                if toks[0].is_kw("copy"):
                    self._copy_data(toks, tok)
                return toks
            toks.append(tok)

    def _token(self, at_start: bool):
        buf = self.buf
        size = len(buf)
        while True:
            pos = self.pos
            if pos >= size:
                return None
            match = _SPACE.match(buf, pos)
            if match:
                self.pos = match.end()
                continue
            match = _LINE_COMMENT.match(buf, pos)
            if match:
                self._comment(match.group(0), pos)
                self.pos = match.end()
                continue
            if buf[pos:pos + 2] == b"/*":
                self._block_comment(pos)
                continue
            break
        char = buf[pos:pos + 1]
        two = buf[pos:pos + 2]
        if char == b"\\":
            self._backslash(pos, at_start)
            return self._token(at_start)
        if char in (b"e", b"E") and buf[pos + 1:pos + 2] == b"'":
            return self._string(pos, pos + 2, "estring")
        if char in (b"b", b"B", b"x", b"X") and buf[pos + 1:pos + 2] == b"'":
            return self._string(pos, pos + 2, "bitstring")
        if char in (b"n", b"N") and buf[pos + 1:pos + 2] == b"'":
            return self._string(pos, pos + 2, "string")
        if char in (b"u", b"U") and buf[pos + 1:pos + 3] in (b"&'", b'&"'):
            if buf[pos + 2:pos + 3] == b"'":
                return self._string(pos, pos + 3, "ustring")
            return self._quoted_ident(pos, pos + 3)
        if char == b"'":
            return self._string(pos, pos + 1, "string")
        if char == b'"':
            return self._quoted_ident(pos, pos + 1)
        if char == b"$":
            match = _DOLLAR_DELIM.match(buf, pos)
            if not match:
                raise _Refused("a $ that starts neither a dollar quote nor an identifier", pos)
            delim = match.group(0)
            end = buf.find(delim, match.end())
            if end < 0:
                raise _Refused("an unterminated dollar-quoted string", pos)
            self.pos = end + len(delim)
            return _Tok("string", buf[pos:self.pos], buf[match.end():end], pos)
        match = _IDENT.match(buf, pos)
        if match:
            raw = match.group(0)
            self.pos = match.end()
            return _Tok("ident", raw, raw.lower(), pos)
        match = _NUMBER.match(buf, pos)
        if match:
            self.pos = match.end()
            if _IDENT_CHAR.match(buf, self.pos):
                raise _Refused("a number run into a name (%r)" % buf[pos:self.pos + 1].decode("latin-1"), pos)
            return _Tok("number", match.group(0), match.group(0), pos)
        if two == b"::":
            self.pos = pos + 2
            return _Tok("punct", two, two, pos)
        if char == b":":
            if _PSQL_VARIABLE.match(buf, pos):
                raise _Refused("a psql variable reference (%r)" % buf[pos:pos + 12].decode("latin-1"), pos)
            self.pos = pos + 1
            return _Tok("punct", char, char, pos)
        if two == b"..":
            self.pos = pos + 2
            return _Tok("punct", two, two, pos)
        if char in (b",", b"(", b")", b"[", b"]", b";", b"."):
            self.pos = pos + 1
            return _Tok("punct", char, char, pos)
        match = _OPERATOR.match(buf, pos)
        if match:
            text = match.group(0)
            cuts = [i for i in (text.find(b"--"), text.find(b"/*")) if i > 0]
            if cuts:
                text = text[:min(cuts)]
            if len(text) > 1 and text[-1:] in (b"+", b"-") and not re.search(rb"[~!@#^&|`?%]", text[:-1]):
                text = text.rstrip(b"+-") or text[:1]
            self.pos = pos + len(text)
            return _Tok("op", text, text, pos)
        raise _Refused("an unexpected character %r" % char.decode("latin-1"), pos)

    def _comment(self, text: bytes, pos: int) -> None:
        if b"\\" in text:
            raise _Refused("a backslash in a comment", pos)
        match = _ENTRY_HEADER.match(text.decode("utf-8", "replace")) if len(text) < 2000 else None
        if match:
            self.hint = (match.group(1), match.group(2), match.group(3))

    def _block_comment(self, pos: int) -> None:
        depth = 0
        cur = pos + 2
        while True:
            match = _COMMENT_MARK.search(self.buf, cur)
            if not match:
                raise _Refused("an unterminated /* comment", pos)
            if match.group(0) == b"/*":
                depth += 1
            elif depth == 0:
                break
            else:
                depth -= 1
            cur = match.end()
        if self.buf.find(b"\\", pos, match.end()) >= 0:
            raise _Refused("a backslash in a comment", pos)
        self.pos = match.end()

    def _backslash(self, pos: int, at_start: bool) -> None:
        """Only pg_restore's `\\restrict KEY` first and `\\unrestrict KEY` last, with our key."""
        if self.key and at_start and (pos == 0 or self.buf[pos - 1:pos] == b"\n"):
            end = self.buf.find(b"\n", pos)
            line = bytes(self.buf[pos:end if end >= 0 else len(self.buf)])
            if line == b"\\restrict " + self.key and not self.restricted and not self.statements:
                self.restricted = True
                self.pos = end + 1 if end >= 0 else len(self.buf)
                return
            if line == b"\\unrestrict " + self.key and self.restricted and not self.finished:
                self.finished = True
                self.pos = end + 1 if end >= 0 else len(self.buf)
                return
        end = self.buf.find(b"\n", pos)
        text = bytes(self.buf[pos:end if end >= 0 else pos + 60][:60]).decode("latin-1")
        raise _Refused("a backslash outside a string literal, which psql would run as a meta-command: %r" % text, pos)

    def _string(self, start: int, cur: int, kind: str) -> _Tok:
        buf = self.buf
        parts = []
        body = _ESTRING_BODY if kind == "estring" else _STRING_BODY
        while True:
            match = body.match(buf, cur)
            parts.append(match.group(0))
            cur = match.end()
            if buf[cur:cur + 1] != b"'":
                raise _Refused("an unterminated string literal", start)
            if kind != "bitstring" and buf[cur + 1:cur + 2] == b"'":
                parts.append(b"'")
                cur += 2
                continue
            cur += 1
            after = self._continuation(cur)
            if after is None:
                break
            cur = after
        self.pos = cur
        return _Tok(kind, buf[start:cur], b"".join(parts), start)

    def _continuation(self, cur: int):
        """psql's {quotecontinue} after a closing quote: whitespace holding a newline (comments
        allowed), then a quote: the literal goes on. The position after that quote, or None."""
        buf = self.buf
        newline = False
        while True:
            char = buf[cur:cur + 1]
            if char in (b" ", b"\t", b"\f") or (newline and char in (b"\n", b"\r")):
                cur += 1
            elif char in (b"\n", b"\r"):
                newline = True
                cur += 1
            elif buf[cur:cur + 2] == b"--":
                match = _LINE_COMMENT.match(buf, cur)
                end = match.end()
                if buf[end:end + 1] not in (b"\n", b"\r") and newline:
                    return None  # after the newline a comment must end with one
                if b"\\" in match.group(0):
                    raise _Refused("a backslash in a comment", cur)
                cur = end
            elif char == b"'" and newline:
                return cur + 1
            else:
                return None

    def _quoted_ident(self, start: int, cur: int) -> _Tok:
        buf = self.buf
        parts = []
        while True:
            end = buf.find(b'"', cur)
            if end < 0:
                raise _Refused("an unterminated quoted identifier", start)
            parts.append(buf[cur:end])
            if buf[end + 1:end + 2] == b'"':
                parts.append(b'"')
                cur = end + 2
                continue
            break
        self.pos = end + 1
        value = b"".join(parts)
        if not value:
            raise _Refused("an empty quoted identifier", start)
        if b"\\" in value:
            raise _Refused("a backslash in a quoted identifier", start)
        return _Tok("qident", buf[start:self.pos], value, start)

    def _copy_data(self, toks: list, semi: _Tok) -> None:
        """COPY ... FROM stdin: the data follows on the next line, up to a line `\\.`; any data
        line starting with `\\.` ends it (as broad as psql), and must be exactly that line."""
        self._check_copy(toks)
        buf = self.buf
        eol = buf.find(b"\n", semi.pos)
        if eol < 0:
            raise _Refused("COPY data missing", semi.pos)
        if buf[semi.pos + 1:eol].strip(b" \t\r\f"):
            raise _Refused("text after a COPY statement on its line", semi.pos)
        marker = self._find(b"\n\\.", eol) + 1
        if marker <= 0:
            raise _Refused("COPY data without its end line \\.", semi.pos)
        after = buf[marker + 2:marker + 4]
        if not (after[:1] in (b"\n", b"") or after == b"\r\n"):
            raise _Refused("a COPY data line starting with \\. that is not the end line", marker)
        self.pos = marker + 2 + (0 if not after else 1 if after[:1] == b"\n" else 2)

    # -- names --------------------------------------------------------------------------------
    def _decode(self, raw: bytes, pos: int) -> str:
        if len(raw) >= NAMEDATALEN:
            raise _Refused("a name longer than PostgreSQL keeps (%d bytes)" % len(raw), pos)
        try:
            return raw.decode(self.codec)
        except (UnicodeDecodeError, LookupError):
            raise _Refused("a name that is not valid in the script's encoding", pos)

    def _name_of(self, tok: _Tok) -> str:
        if tok.kind == "ident":
            if any(b >= 0x80 for b in tok.value):
                raise _Refused("an unquoted name with non-ASCII characters (pg_dump quotes those)", tok.pos)
            return self._decode(tok.value, tok.pos)
        if tok.kind == "qident":
            return self._decode(tok.value, tok.pos)
        raise _Refused("a name expected, found %r" % tok.raw[:40].decode("latin-1"), tok.pos)

    def _name_in_string(self, tok: _Tok) -> tuple:
        """'schema.name' (quote_ident spelling, as pg_dump writes it in setval/nextval/regclass)."""
        if tok.kind != "string" or tok.raw[:1] == b"$":
            raise _Refused("a relation name must be a plain string literal", tok.pos)
        parts = []
        text = tok.value
        pos = 0
        while True:
            if text[pos:pos + 1] == b'"':
                end = pos + 1
                value = []
                while True:
                    close = text.find(b'"', end)
                    if close < 0:
                        raise _Refused("a malformed relation name in a string", tok.pos)
                    value.append(text[end:close])
                    if text[close + 1:close + 2] == b'"':
                        value.append(b'"')
                        end = close + 2
                        continue
                    break
                raw = b"".join(value)
                pos = close + 1
            else:
                match = _NAME_IN_STRING.match(text, pos)
                if not match:
                    raise _Refused("a malformed relation name in a string", tok.pos)
                raw = match.group(0)
                pos = match.end()
            if not raw or b"\\" in raw:
                raise _Refused("a malformed relation name in a string", tok.pos)
            parts.append(self._decode(raw, tok.pos))
            if pos == len(text):
                break
            if text[pos:pos + 1] != b".":
                raise _Refused("a malformed relation name in a string", tok.pos)
            pos += 1
        if len(parts) != 2:
            raise _Refused("relation name %r is not schema-qualified" % ".".join(parts), tok.pos)
        return tuple(parts)

    # -- statements ---------------------------------------------------------------------------
    def _check_statement(self, toks: list) -> None:
        cur = _Cursor(self, toks)
        first = toks[0]
        if first.is_kw("set"):
            self._check_set(cur)
        elif first.is_kw("select"):
            self._check_select(cur)
        elif first.is_kw("drop"):
            self._check_drop(cur)
        elif first.is_kw("create"):
            self._check_create(cur)
        elif first.is_kw("alter"):
            self._check_alter(cur)
        elif first.is_kw("copy"):
            pass  # checked with its data (_copy_data)
        elif first.is_kw("comment"):
            self._check_comment(cur)
        elif first.is_kw("grant", "revoke"):
            self._check_grant(cur)
        else:
            raise _Refused("a statement pg_restore does not write for tables: %s" % cur.preview(), first.pos)

    def _owned(self, pair: tuple, pos: int, what: str = "relation") -> tuple:
        if not self.own.relation(*pair):
            raise _Refused("%s %s.%s is not one of %s" % (what, pair[0], pair[1], self.own.describe()), pos)
        return pair

    def _use(self, kind: str, pair: tuple, pos: int) -> None:
        if is_system_schema(pair[0]):
            raise _Refused("%s %s.%s is in a system schema" % (kind, pair[0], pair[1]), pos)
        self.uses.append((kind, pair, pos, self.hint))

    def _check_set(self, cur: "_Cursor") -> None:
        cur.kw("set")
        tok = cur.take()
        name = tok.value.decode("ascii", "replace") if tok.kind == "ident" else ""
        if name not in _SETTINGS:
            raise _Refused("SET of a setting a restore does not change: %s" % cur.preview(), tok.pos)
        if not (cur.punct_op(b"=") or cur.kw("to")):
            raise _Refused("a malformed SET", tok.pos)
        value = cur.take()
        if value.kind not in ("ident", "string", "number") or not cur.done():
            raise _Refused("SET %s to something but a single value" % name, value.pos)
        text = value.value.decode("latin-1").lower()
        allowed = _SETTINGS[name]
        if allowed and text not in allowed:
            raise _Refused("SET %s = %s" % (name, text), value.pos)
        if name == "client_encoding":
            key = text.upper().replace("-", "_")
            if key in ("UNICODE", "UTF_8"):
                key = "UTF8"
            if key not in _CODECS:
                raise _Refused("client_encoding %s, in which a backslash or quote byte can be part of a "
                               "character (psql and this check could read the script differently)" % text, value.pos)
            self.codec = _CODECS[key]

    def _check_select(self, cur: "_Cursor") -> None:
        cur.kw("select")
        start = cur.peek()
        cur.expect_kw("pg_catalog")
        cur.expect_punct(b".")
        func = cur.take()
        if func.is_kw("set_config"):
            cur.expect_punct(b"(")
            arg = cur.take()
            if arg.kind == "string" and arg.raw == b"'search_path'" and cur.punct(b",") and \
                    cur.take().raw == b"''" and cur.punct(b",") and cur.take().is_kw("false") and \
                    cur.punct(b")") and cur.done():
                return
            raise _Refused("set_config other than pg_restore's search_path line", start.pos)
        if func.is_kw("setval"):
            cur.expect_punct(b"(")
            arg = cur.take()
            self._use("sequence", self._name_in_string(arg), arg.pos)
            cur.expect_punct(b",")
            cur.punct_op(b"-")
            if cur.take().kind != "number" or not cur.punct(b","):
                raise _Refused("a malformed setval", start.pos)
            if not cur.take().is_kw("true", "false") or not cur.punct(b")") or not cur.done():
                raise _Refused("a malformed setval", start.pos)
            return
        raise _Refused("a SELECT pg_restore does not write: %s" % cur.preview(), start.pos)

    def _check_drop(self, cur: "_Cursor") -> None:
        cur.kw("drop")
        kind = cur.take()
        if not kind.is_kw("table", "sequence", "index", "schema"):
            raise _Refused("a DROP of something but a table, sequence, index or schema: %s" % cur.preview(), kind.pos)
        cur.expect_kw("if")
        cur.expect_kw("exists")
        if kind.is_kw("schema"):
            tok = cur.peek()
            name = self._name_of(cur.take())
            if not self.own.schema(name):
                raise _Refused("DROP SCHEMA %s: only a whole-database category owns schemas" % name, tok.pos)
        else:
            tok = cur.peek()
            pair = cur.qualified(2)
            if kind.is_kw("table"):
                self._owned(pair, tok.pos, "table")
            elif kind.is_kw("sequence"):
                self._use("sequence", pair, tok.pos)
            else:
                self._use("index", pair, tok.pos)
                self.dropped_indexes.append((pair, tok.pos))
        if not cur.done():
            raise _Refused("DROP with more than IF EXISTS and a name: %s" % cur.preview(), kind.pos)

    def _check_create(self, cur: "_Cursor") -> None:
        cur.kw("create")
        tok = cur.peek()
        if cur.kw("schema"):
            name_tok = cur.peek()
            name = self._name_of(cur.take())
            if not self.own.schema(name) or not cur.done():
                raise _Refused("CREATE SCHEMA %s: only a whole-database category creates (bare) schemas" % name,
                               name_tok.pos)
            return
        cur.kw("unlogged")
        if cur.kw("table"):
            self._check_create_table(cur)
        elif cur.kw("sequence"):
            name_tok = cur.peek()
            self._use("sequence", cur.qualified(2), name_tok.pos)
            self._sequence_options(cur, stop=None)
        elif cur.kw("unique") or cur.peek().is_kw("index"):
            cur.expect_kw("index")
            name_tok = cur.peek()
            index = self._name_of(cur.take())
            cur.expect_kw("on")
            cur.kw("only")
            table_tok = cur.peek()
            table = self._owned(cur.qualified(2), table_tok.pos, "table")
            if (table[0], index) in self.index_table:
                raise _Refused("index %s.%s created twice" % (table[0], index), name_tok.pos)
            self.index_table[(table[0], index)] = table
            self._expression(cur.rest(), "CREATE INDEX")
        else:
            raise _Refused("a CREATE of something but a table, sequence, index or schema: %s" % cur.preview(), tok.pos)

    def _check_create_table(self, cur: "_Cursor") -> None:
        tok = cur.peek()
        self._owned(cur.qualified(2), tok.pos, "table")
        body = cur.parenthesized()
        if body is None:
            raise _Refused("CREATE TABLE without a column list (AS, OF, PARTITION OF ...)", tok.pos)
        self._expression(body, "CREATE TABLE")
        if cur.kw("inherits"):
            parents = cur.parenthesized()
            if not parents:
                raise _Refused("a malformed INHERITS", tok.pos)
            sub = _Cursor(self, parents)
            while True:
                ptok = sub.peek()
                self._owned(sub.qualified(2), ptok.pos, "parent table")
                if sub.done():
                    break
                sub.expect_punct(b",")
        if cur.kw("with"):
            params = cur.parenthesized()
            if params is None:
                raise _Refused("a malformed WITH", tok.pos)
            self._expression(params, "CREATE TABLE")
        if not cur.done():
            raise _Refused("CREATE TABLE options pg_restore does not write here: %s" % cur.preview(), tok.pos)

    def _sequence_options(self, cur: "_Cursor", stop) -> None:
        words = ("as", "start", "with", "increment", "by", "minvalue", "maxvalue", "no", "cache", "cycle",
                 "smallint", "integer", "bigint", "int", "int2", "int4", "int8")
        while not cur.done():
            tok = cur.take()
            if tok.kind == "number" or tok.is_kw(*words) or (tok.kind == "op" and tok.raw == b"-"):
                continue
            if stop is not None and tok.kind == "punct" and tok.raw == stop:
                cur.back()
                return
            raise _Refused("a sequence option pg_restore does not write: %r" % tok.raw[:40].decode("latin-1"), tok.pos)

    def _check_alter(self, cur: "_Cursor") -> None:
        cur.kw("alter")
        start = cur.peek()
        if cur.kw("sequence"):
            seq_tok = cur.peek()
            seq = cur.qualified(2)
            cur.expect_kw("owned")
            cur.expect_kw("by")
            tab_tok = cur.peek()
            target = cur.qualified(3)
            table = self._owned(target[:2], tab_tok.pos, "table")
            if not cur.done():
                raise _Refused("a malformed ALTER SEQUENCE ... OWNED BY", start.pos)
            self._claim_sequence(seq, table, seq_tok.pos)
            return
        if not cur.kw("table"):
            raise _Refused("an ALTER of something but a table or sequence: %s" % cur.preview(), start.pos)
        if_exists = False
        if cur.kw("if"):
            cur.expect_kw("exists")
            if_exists = True
        cur.kw("only")
        tab_tok = cur.peek()
        table = self._owned(cur.qualified(2), tab_tok.pos, "table")
        action = cur.take()
        if action.is_kw("add"):
            cur.expect_kw("constraint")
            self._name_of(cur.take())
            self._expression(cur.rest(), "ADD CONSTRAINT")
        elif action.is_kw("drop") and if_exists:
            cur.expect_kw("constraint")
            cur.expect_kw("if")
            cur.expect_kw("exists")
            self._name_of(cur.take())
        elif action.is_kw("alter"):
            self._alter_column(cur, table, if_exists)
        elif action.is_kw("replica"):
            cur.expect_kw("identity")
            if cur.kw("using"):
                cur.expect_kw("index")
                self._name_of(cur.take())
            elif not cur.kw("default", "full", "nothing"):
                raise _Refused("a malformed REPLICA IDENTITY", action.pos)
        elif action.is_kw("cluster"):
            cur.expect_kw("on")
            self._name_of(cur.take())
        else:
            raise _Refused("an ALTER TABLE pg_restore does not write for tables: %s" % cur.preview(), action.pos)
        if not cur.done():
            raise _Refused("more than one ALTER TABLE action: %s" % cur.preview(), action.pos)

    def _alter_column(self, cur: "_Cursor", table: tuple, if_exists: bool) -> None:
        cur.kw("column")
        self._name_of(cur.take())
        tok = cur.take()
        if tok.is_kw("drop") and if_exists:
            cur.expect_kw("default")
        elif tok.is_kw("set") and cur.kw("default"):
            self._expression(cur.rest(), "SET DEFAULT")
        elif tok.is_kw("set") and cur.kw("statistics"):
            cur.punct_op(b"-")
            if cur.take().kind != "number":
                raise _Refused("a malformed SET STATISTICS", tok.pos)
        elif tok.is_kw("set") and cur.kw("storage"):
            if not cur.kw("plain", "external", "extended", "main", "default"):
                raise _Refused("a malformed SET STORAGE", tok.pos)
        elif tok.is_kw("set") and cur.kw("compression"):
            self._name_of(cur.take())
        elif tok.is_kw("set") and cur.kw("not"):
            cur.expect_kw("null")
        elif tok.is_kw("set") and cur.peek().kind == "punct" and cur.peek().raw == b"(":
            self._expression(cur.rest(), "SET (...)")
        elif tok.is_kw("add"):
            cur.expect_kw("generated")
            if not (cur.kw("always") or (cur.kw("by") and cur.expect_kw("default"))):
                raise _Refused("a malformed ADD GENERATED", tok.pos)
            cur.expect_kw("as")
            cur.expect_kw("identity")
            cur.expect_punct(b"(")
            cur.expect_kw("sequence")
            cur.expect_kw("name")
            seq_tok = cur.peek()
            seq = cur.qualified(2)
            self._sequence_options(cur, stop=b")")
            cur.expect_punct(b")")
            self._claim_sequence(seq, table, seq_tok.pos)
        else:
            raise _Refused("an ALTER COLUMN pg_restore does not write: %s" % cur.preview(), tok.pos)

    def _claim_sequence(self, seq: tuple, table: tuple, pos: int) -> None:
        if is_system_schema(seq[0]):
            raise _Refused("sequence %s.%s is in a system schema" % seq, pos)
        known = self.seq_owner.get(seq)
        if known and known != table:
            raise _Refused("sequence %s.%s claimed by two tables" % seq, pos)
        self.seq_owner[seq] = table

    def _check_comment(self, cur: "_Cursor") -> None:
        cur.kw("comment")
        cur.expect_kw("on")
        kind = cur.take()
        tok = cur.peek()
        if kind.is_kw("table"):
            self._owned(cur.qualified(2), tok.pos, "table")
        elif kind.is_kw("sequence"):
            self._use("sequence", cur.qualified(2), tok.pos)
        elif kind.is_kw("index"):
            self._use("index", cur.qualified(2), tok.pos)
        elif kind.is_kw("column"):
            self._owned(cur.qualified(3)[:2], tok.pos, "table")
        elif kind.is_kw("constraint"):
            self._name_of(cur.take())
            cur.expect_kw("on")
            tok = cur.peek()
            self._owned(cur.qualified(2), tok.pos, "table")
        elif kind.is_kw("schema"):
            name = self._name_of(cur.take())
            if not self.own.schema(name):
                raise _Refused("COMMENT ON SCHEMA %s: only a whole-database category owns schemas" % name, tok.pos)
        else:
            raise _Refused("a COMMENT on something but the category's tables: %s" % cur.preview(), kind.pos)
        cur.expect_kw("is")
        text = cur.take()
        if text.kind not in ("string", "estring") or not cur.done():
            raise _Refused("a COMMENT whose text is not a string literal", text.pos)

    def _check_grant(self, cur: "_Cursor") -> None:
        verb = cur.take()
        revoke = verb.is_kw("revoke")
        if revoke and cur.kw("grant"):
            cur.expect_kw("option")
            cur.expect_kw("for")
        while True:
            priv = cur.take()
            if not priv.is_kw(*_PRIVILEGES):
                raise _Refused("a GRANT/REVOKE of roles or unknown privileges: %s" % cur.preview(), priv.pos)
            cols = cur.parenthesized()
            if cols is not None:
                for col in cols:
                    if not (col.kind in ("ident", "qident") or (col.kind == "punct" and col.raw == b",")):
                        raise _Refused("a malformed column list in a GRANT", col.pos)
            if cur.kw("on"):
                break
            if not cur.punct(b","):
                cur.kw("privileges")
                cur.expect_kw("on")
                break
        kind = cur.take()
        tok = cur.peek()
        if kind.is_kw("table"):
            self._owned(cur.qualified(2), tok.pos, "table")
        elif kind.is_kw("sequence"):
            self._use("sequence", cur.qualified(2), tok.pos)
        elif kind.is_kw("schema"):
            name = self._name_of(cur.take())
            if not self.own.schema(name):
                raise _Refused("GRANT/REVOKE on schema %s: only a whole-database category owns schemas" % name,
                               tok.pos)
        else:
            raise _Refused("a GRANT/REVOKE on something but the category's tables: %s" % cur.preview(), kind.pos)
        if not cur.kw("from" if revoke else "to"):
            raise _Refused("a malformed GRANT/REVOKE", verb.pos)
        while True:
            cur.kw("group")
            grantee = cur.take()
            if grantee.kind not in ("ident", "qident"):
                raise _Refused("a malformed grantee", grantee.pos)
            if not cur.punct(b","):
                break
        if not revoke and cur.kw("with"):
            cur.expect_kw("grant")
            cur.expect_kw("option")
        if revoke:
            cur.kw("cascade", "restrict")
        if not cur.done():
            raise _Refused("a GRANT/REVOKE with more than privileges, object and roles: %s" % cur.preview(), verb.pos)

    def _check_copy(self, toks: list) -> None:
        cur = _Cursor(self, toks)
        cur.kw("copy")
        tok = cur.peek()
        self._owned(cur.qualified(2), tok.pos, "table")
        cols = cur.parenthesized()
        if cols is not None:
            for i, col in enumerate(cols):
                if i % 2 == 0 and col.kind not in ("ident", "qident"):
                    raise _Refused("a malformed COPY column list", col.pos)
                if i % 2 == 0:
                    self._name_of(col)
                if i % 2 == 1 and not (col.kind == "punct" and col.raw == b","):
                    raise _Refused("a malformed COPY column list", col.pos)
        cur.expect_kw("from")
        cur.expect_kw("stdin")
        if not cur.done():
            raise _Refused("a COPY that is not `COPY table (columns) FROM stdin;`: %s" % cur.preview(), tok.pos)

    # -- expressions (column definitions, defaults, checks, index definitions) -----------------
    def _expression(self, toks: list, where: str) -> None:
        """No denylisted function call, no subquery, no parameter; every relation named
        (REFERENCES, LIKE, 'x'::regclass, nextval/currval) is the category's."""
        count = len(toks)
        for i, tok in enumerate(toks):
            nxt = toks[i + 1] if i + 1 < count else None
            prev = toks[i - 1] if i else None
            if tok.kind in ("ident", "qident") and nxt is not None and nxt.kind == "punct" and nxt.raw == b"(":
                name = tok.value.decode("latin-1")
                if denied_function(name):
                    raise _Refused("%s calls %s()" % (where, name), tok.pos)
                if name.lower() in _SEQUENCE_FUNCTIONS:
                    arg = toks[i + 2] if i + 2 < count else None
                    if arg is None:
                        raise _Refused("%s() without a sequence" % name, tok.pos)
                    self._use("relation", self._name_in_string(arg), arg.pos)
                if name.lower() in ("regclass", "to_regclass"):
                    raise _Refused("%s names a relation through %s()" % (where, name), tok.pos)
            if tok.kind == "ident" and tok.value in (b"select", b"values"):
                raise _Refused("%s holds a query" % where, tok.pos)
            if tok.kind in ("ident", "qident") and tok.value == b"regclass":
                cast = prev is not None and prev.kind == "punct" and prev.raw in (b"::", b".")
                lit = toks[i - 2] if i >= 2 else None
                if prev is not None and prev.raw == b"." and i >= 3:
                    lit = toks[i - 4] if toks[i - 3].raw == b"::" and toks[i - 2].is_kw("pg_catalog") else None
                if not cast or lit is None or lit.kind != "string":
                    raise _Refused("%s uses regclass other than 'schema.name'::regclass" % where, tok.pos)
                self._use("relation", self._name_in_string(lit), lit.pos)
            if tok.is_kw("references") or (tok.is_kw("like") and nxt is not None and nxt.kind in ("ident", "qident")
                                           and i + 2 < count and toks[i + 2].raw == b"."):
                sub = _Cursor(self, toks[i + 1:])
                ref = sub.peek()
                self._owned(sub.qualified(2), ref.pos, "table")
            if tok.is_kw("inherits", "partition"):
                raise _Refused("%s: inheritance and partitions are not restored" % where, tok.pos)

    # -- what only the whole script settles -----------------------------------------------------
    def _settle(self) -> list:
        claims = []
        for seq, table in self.seq_owner.items():
            if not self.own.relation(*seq):
                claims.append(("sequence", seq, table))
        for kind, pair, pos, hint in self.uses:
            by_name = self.own.relation(*pair)
            entry = self._hint_entry((pair[1], kind.upper(), pair[0]) if kind in ("sequence", "index") else hint)
            if kind == "sequence" and not (by_name or pair in self.seq_owner):
                raise _Refused("sequence %s.%s is neither one of %s nor owned by one of them"
                               % (pair[0], pair[1], self.own.describe()), pos, entry)
            if kind == "index" and pair not in self.index_table:
                raise _Refused("index %s.%s is not one the script builds on one of %s"
                               % (pair[0], pair[1], self.own.describe()), pos, entry)
            if kind == "relation" and not (by_name or pair in self.seq_owner or pair in self.index_table):
                raise _Refused("relation %s.%s is not one of %s" % (pair[0], pair[1], self.own.describe()), pos, entry)
        for pair, _pos in self.dropped_indexes:
            claims.append(("index", pair, self.index_table[pair]))
        return claims


class _Cursor:
    """Walks the tokens of one statement."""

    def __init__(self, check: ScriptCheck, toks: list):
        self.check = check
        self.toks = toks
        self.i = 0

    def done(self) -> bool:
        return self.i >= len(self.toks)

    def peek(self) -> _Tok:
        if self.done():
            last = self.toks[-1] if self.toks else None
            raise _Refused("a statement that ends too early", last.pos if last else None)
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def back(self) -> None:
        self.i -= 1

    def kw(self, *words) -> bool:
        if not self.done() and self.toks[self.i].is_kw(*words):
            self.i += 1
            return True
        return False

    def expect_kw(self, word: str) -> bool:
        tok = self.peek()
        if not self.kw(word):
            found = tok.raw[:40].decode("latin-1")
            raise _Refused("%s expected, found %r in: %s" % (word.upper(), found, self.preview()), tok.pos)
        return True

    def punct(self, text: bytes) -> bool:
        if not self.done() and self.toks[self.i].kind == "punct" and self.toks[self.i].raw == text:
            self.i += 1
            return True
        return False

    def punct_op(self, text: bytes) -> bool:
        if not self.done() and self.toks[self.i].kind in ("op", "punct") and self.toks[self.i].raw == text:
            self.i += 1
            return True
        return False

    def expect_punct(self, text: bytes) -> None:
        tok = self.peek()
        if not self.punct(text):
            raise _Refused("%r expected in: %s" % (text.decode("latin-1"), self.preview()), tok.pos)

    def qualified(self, parts: int) -> tuple:
        """Exactly `parts` dot-separated names (schema.relation, schema.table.column)."""
        out = [self.check._name_of(self.take())]
        while self.punct(b"."):
            out.append(self.check._name_of(self.take()))
        if len(out) != parts:
            raise _Refused("%s is not a %s name" % (".".join(out), "schema-qualified" if parts == 2
                                                    else "schema.table.column"), self.toks[self.i - 1].pos)
        return tuple(out)

    def parenthesized(self):
        """The tokens inside a (...) group starting here (None if no group starts here)."""
        if self.done() or not (self.toks[self.i].kind == "punct" and self.toks[self.i].raw == b"("):
            return None
        depth = 0
        for j in range(self.i, len(self.toks)):
            tok = self.toks[j]
            if tok.kind == "punct" and tok.raw == b"(":
                depth += 1
            elif tok.kind == "punct" and tok.raw == b")":
                depth -= 1
                if depth == 0:
                    inner = self.toks[self.i + 1:j]
                    self.i = j + 1
                    return inner
        raise _Refused("unbalanced parentheses", self.toks[self.i].pos)

    def rest(self) -> list:
        out = self.toks[self.i:]
        self.i = len(self.toks)
        return out

    def preview(self) -> str:
        text = " ".join(t.raw.decode("latin-1") for t in self.toks[:12])
        return text[:160] + (" ..." if len(self.toks) > 12 or len(text) > 160 else "")
