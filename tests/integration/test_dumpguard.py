# SPDX-License-Identifier: GPL-3.0-or-later
"""dumpguard.py: a database dump restores only what its category owns, against a real
PostgreSQL 15 cluster with the real pg_dump, pg_restore and psql (tests/harness).

Legitimate dumps of the sample appliance pass and restore as before; dumps crafted
with the real pg_dump from scratch databases shaped for an attack (other categories'
tables, functions, views, triggers, extensions, schemas, a DATABASE entry, default
privileges, dangerous calls in DEFAULT/CHECK, backslash-laden names) and real dumps
patched byte for byte (a COMMENT that breaks out of its string, COPY data with an
early end-of-data line) are refused and change nothing."""

from __future__ import annotations

import copy
import os
import re
import stat
import subprocess
import uuid

import pytest

from ansible_collections.sar.backup.plugins.module_utils import dumpguard, sources, store
from ansible_collections.sar.backup.plugins.module_utils.errors import SarError, SourceError
from harness import appliance
from harness.postgres import PostgresCluster

RESTORER = "sar_restorer"


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg():
    cluster = PostgresCluster().start()
    try:
        cluster.psql("CREATE ROLE %s NOSUPERUSER NOLOGIN" % RESTORER)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def victim(pg, tmp_path_factory):
    """The sample appliance database (the one the crafted dumps attack) and legitimate
    dumps of it as sources.dump() makes them for the default profile."""
    root = str(tmp_path_factory.mktemp("victim"))
    appliance.build_database(pg)
    # something of core that a cdr dump could try to hijack: a standalone sequence, an index
    pg.psql("SET ROLE %s; CREATE SEQUENCE public.invoice_no START 1000; SELECT nextval('public.invoice_no');"
            "CREATE INDEX users_login_lower ON public.users (lower(login));" % pg.user, db=appliance.DATABASE)
    profile = store.validate_profile(appliance.make_profile(root, pg))
    staging = os.path.join(root, "staging")
    os.mkdir(staging, 0o700)
    dumps = dump_databases(profile, staging)
    nothing = with_category(profile, "cdr_voicemail", tables=["public.no_such_table*"])
    empty = os.path.join(staging, "empty.pgdump")
    sources.dump(sources.plan(["cdr_voicemail"], nothing)[0], nothing, empty)
    return dict(dumps, profile=profile, empty=empty, root=root)


@pytest.fixture
def flag_dir(reachable_tmp):
    """Where a payload that ran would leave its flag: writable by psql's \\! (the client, root) and by the
    server (postgres: COPY TO PROGRAM, lo_export), so a payload that ran cannot go unnoticed (pytest's
    tmp_path is closed to postgres)."""
    path = reachable_tmp / "flags"
    path.mkdir()
    os.chmod(str(path), 0o777)
    return path


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "work"
    path.mkdir(mode=0o700)
    return str(path)


@pytest.fixture
def scratch(pg, tmp_path):
    """A fresh copy of the sample database and a profile for it."""
    name = "scratch_%s" % uuid.uuid4().hex[:8]
    appliance.build_database(pg, name)
    yield name, store.validate_profile(appliance.make_profile(str(tmp_path), pg, name=name))
    pg.drop_database(name)


@pytest.fixture
def evil(pg, tmp_path, victim):
    """make(sql, category, **spec): a scratch database shaped by `sql` (run as the test role),
    dumped by sources.dump() as `category` with the victim's patterns (or `spec`)."""
    made = []

    def make(sql: str, category: str, extra_args=(), **spec) -> str:
        name = "evil_%s" % uuid.uuid4().hex[:8]
        pg.create_database(name)
        made.append(name)
        pg.psql("SET ROLE %s;\n%s" % (pg.user, sql), db=name)
        prof = copy.deepcopy(victim["profile"])
        prof["database"]["name"] = name
        if spec:
            prof = with_category(prof, category, **spec)
        dest = str(tmp_path / ("%s-%s.pgdump" % (category, name)))
        src = sources.plan([category], prof)[0]
        if extra_args:
            with sources._client_env(prof) as env:  # pylint: disable=protected-access
                subprocess.run(sources.dump_argv(src, prof, dest) + list(extra_args), env=env, check=True)
        else:
            sources.dump(src, prof, dest)
        return dest

    yield make
    for name in made:
        pg.drop_database(name)


def dump_databases(profile: dict, staging: str) -> dict:
    """{category: dump path} of core and cdr_voicemail, made by sources.dump() (the trees are not needed)."""
    out = {}
    for src in sources.plan(["core", "cdr_voicemail"], profile):
        if src.kind == sources.KIND_DB:
            out[src.category] = os.path.join(staging, "%s.pgdump" % src.category)
            sources.dump(src, profile, out[src.category])
    return out


def with_category(profile: dict, category: str, **spec) -> dict:
    out = copy.deepcopy(profile)
    out["categories"][category] = dict({"tables": [], "exclude_tables": [], "paths": []}, **spec)
    return store.validate_profile(out)


def live_state(pg, db: str) -> dict:
    """Rows of every public table, every relation and function of the database, sequence values."""
    rels = pg.psql("SELECT string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || "
                   "pg_get_userbyid(c.relowner), ',' ORDER BY 1) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'", db=db)
    funcs = pg.psql("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')", db=db)
    seqs = pg.psql("SELECT string_agg(schemaname || '.' || sequencename || '=' || coalesce(last_value, 0), ',' "
                   "ORDER BY 1) FROM pg_sequences", db=db)
    return {"rows": appliance.database_snapshot(pg, db), "relations": rels, "functions": funcs, "sequences": seqs}


def patch(path: str, old: bytes, new: bytes) -> None:
    """Replace `old` (exactly once in the file) by `new` of the same length: a crafted archive
    that still reads as a valid custom-format dump (-Z0 stores TOC and data uncompressed)."""
    new = new.ljust(len(old), b"-") if len(new) < len(old) else new
    assert len(new) == len(old), (len(new), len(old))
    with open(path, "rb") as handle:
        data = handle.read()
    assert data.count(old) == 1, data.count(old)
    with open(path, "wb") as handle:
        handle.write(data.replace(old, new))


def refused(path: str, category: str, profile: dict, workdir: str) -> str:
    with pytest.raises(SarError) as err:
        dumpguard.check_dump(path, category, profile, workdir, member="db/%s.pgdump" % category)
    assert err.value.code == "verifyFailed"
    msg = str(err.value)
    assert msg.startswith("db/%s.pgdump: " % category), msg
    assert os.listdir(workdir) == [], os.listdir(workdir)  # no script, no list left behind
    return msg


def assert_restore_refused(pg, victim, path: str, category: str, workdir: str, match: str | None = None) -> None:
    """restore_dumps with the crafted dump next to a legitimate one: refused, nothing changed."""
    before = live_state(pg, appliance.DATABASE)
    other = "core" if category == "cdr_voicemail" else "cdr_voicemail"
    with pytest.raises(SarError) as err:
        sources.restore_dumps([(other, victim[other], "db/%s.pgdump" % other), (category, path, "db/%s.pgdump" % category)],
                              victim["profile"], workdir)
    if match:
        assert re.search(match, str(err.value)), str(err.value)
    assert live_state(pg, appliance.DATABASE) == before
    assert os.listdir(workdir) == []


# -- legitimate dumps -------------------------------------------------------------------------------
@pytest.mark.parametrize("dump,category", [("core", "core"), ("cdr_voicemail", "cdr_voicemail"),
                                           ("empty", "cdr_voicemail")])
def test_legitimate_dumps_pass_and_script_is_what_pg_restore_writes(victim, workdir, dump, category):
    script = dumpguard.check_dump(victim[dump], category, victim["profile"], workdir, member="db/%s.pgdump" % category)
    assert os.path.dirname(script) == workdir and stat.S_IMODE(os.stat(script).st_mode) == 0o600
    assert os.listdir(workdir) == [os.path.basename(script)]
    # exactly what today's unfiltered pg_restore writes, but for the (random) \restrict key
    plain = subprocess.run([sources.find_tool("pg_restore", victim["profile"]), "--clean", "--if-exists", "--no-owner",
                            "-f", "-", victim[dump]], check=True, stdout=subprocess.PIPE).stdout
    with open(script, "rb") as handle:
        ours = handle.read()
    key = re.compile(rb"^(\\(?:un)?restrict) \S+$", re.M)
    assert key.sub(rb"\1 KEY", ours) == key.sub(rb"\1 KEY", plain)
    if dump != "empty":
        assert b"\nCOPY public." in ours


def test_restore_both_categories_exactly_as_archived(pg, victim, scratch, workdir):
    name, profile = scratch
    before = appliance.database_snapshot(pg, name)
    staging = os.path.join(workdir, "..", "staging")
    os.mkdir(staging)
    dumps = dump_databases(profile, staging)
    appliance.add_rows(pg, "users", 3, db=name)
    appliance.add_rows(pg, "cdr", 7, db=name)
    pg.psql("DELETE FROM cdr_summary WHERE day < date '2024-02-10'", db=name)
    assert appliance.database_snapshot(pg, name) != before
    logged = []
    sources.restore_dumps([("core", dumps["core"], "db/core.pgdump"),
                           ("cdr_voicemail", dumps["cdr_voicemail"], "db/cdr_voicemail.pgdump")], profile, workdir,
                          log=logged.append)
    assert appliance.database_snapshot(pg, name) == before
    assert pg.psql("SELECT nextval('cdr_id_seq')", db=name).strip() == "301"
    assert os.listdir(workdir) == []
    # the test role is a superuser: said once, before restoring
    assert any("which is a superuser" in line and "restore_role" in line for line in logged), logged
    assert any("db/core.pgdump, db/cdr_voicemail.pgdump" in line for line in logged), logged


def test_empty_dump_restores_nothing(pg, victim, workdir):
    before = live_state(pg, appliance.DATABASE)
    sources.restore_dumps([("cdr_voicemail", victim["empty"], "db/cdr_voicemail.pgdump")], victim["profile"], workdir)
    assert live_state(pg, appliance.DATABASE) == before


def test_backslashes_in_strings_defaults_comments_and_data_are_legitimate(pg, evil, victim, workdir, flag_dir):
    flag = str(flag_dir / "never")
    sql = r"""
        CREATE TABLE public.cdr (id bigserial PRIMARY KEY, note text DEFAULT E'\\! touch %(f)s',
                                 path text DEFAULT 'C:\temp\' CHECK (path <> E'\\.'), tag text DEFAULT $q$\$q$);
        COMMENT ON TABLE public.cdr IS E'back\\slash ''quoted''\n\\. on its own line\n\\! touch %(f)s';
        COMMENT ON COLUMN public.cdr.note IS 'plain \ backslash';
        INSERT INTO public.cdr (note) VALUES (E'line\n\\.\nSELECT 1;'), (E'\\.'), ('\! touch %(f)s');
        CREATE TABLE public.cdr_summary (day date PRIMARY KEY, calls integer NOT NULL, total_seconds integer NOT NULL);
    """ % {"f": flag}
    path = evil(sql, "cdr_voicemail")
    script = dumpguard.check_dump(path, "cdr_voicemail", victim["profile"], workdir)
    os.unlink(script)
    fresh = "fresh_%s" % uuid.uuid4().hex[:8]
    pg.create_database(fresh)
    try:
        prof = copy.deepcopy(victim["profile"])
        prof["database"]["name"] = fresh
        sources.restore_dump(path, "cdr_voicemail", prof, workdir=workdir)
        rows = appliance.table_rows(pg, "cdr", fresh)
        assert [r["note"] for r in rows] == ["line\n\\.\nSELECT 1;", "\\.", "\\! touch %s" % flag]
        assert pg.psql("SELECT obj_description('public.cdr'::regclass)", db=fresh).startswith("back\\slash 'quoted'\n\\.")
    finally:
        pg.drop_database(fresh)
    assert not os.path.exists(flag)


# -- crafted dumps: what a category does not own ---------------------------------------------------------
def test_core_dump_carrying_a_cdr_table_is_refused(pg, evil, victim, workdir):
    path = evil("CREATE TABLE public.users (id int PRIMARY KEY, login text);"
                "CREATE TABLE public.cdr (id int PRIMARY KEY, src text); INSERT INTO public.cdr VALUES (1, 'evil');",
                "core", exclude_tables=["public.nothing_excluded"])
    msg = refused(path, "core", victim["profile"], workdir)
    assert re.search(r"TOC entry \d+ \(TABLE public cdr\): public\.cdr is not one of the core category's tables "
                     r"\(profile: every table but exclude_tables public\.cdr\*\)", msg), msg
    assert re.search(r"TOC entry \d+ \(TABLE DATA public cdr\)", msg), msg
    assert "TABLE public users" not in msg  # the core table itself is fine
    assert_restore_refused(pg, victim, path, "core", workdir)


def test_cdr_dump_carrying_users_is_refused(pg, evil, victim, workdir):
    path = evil("CREATE TABLE public.cdr (id int PRIMARY KEY); CREATE TABLE public.users (id int PRIMARY KEY, login text);"
                "INSERT INTO public.users VALUES (1, 'intruder');", "cdr_voicemail", tables=["public.cdr*", "public.users"])
    msg = refused(path, "cdr_voicemail", victim["profile"], workdir)
    assert re.search(r"TOC entry \d+ \(TABLE public users\): public\.users is not one of the cdr_voicemail category's "
                     r"tables \(profile: tables public\.cdr\*\)", msg), msg
    assert re.search(r"TOC entry \d+ \(CONSTRAINT public users users_pkey\)", msg), msg
    assert_restore_refused(pg, victim, path, "cdr_voicemail", workdir)


FORBIDDEN_KINDS = [
    ("FUNCTION", "core", "CREATE FUNCTION public.evil() RETURNS int LANGUAGE sql AS 'SELECT 1';", {}, ()),
    ("VIEW", "cdr_voicemail", "CREATE TABLE public.cdr (id int); CREATE VIEW public.cdr_view AS SELECT * FROM public.cdr;",
     {}, ()),
    ("TRIGGER", "cdr_voicemail",
     "CREATE TABLE public.cdr (id int); CREATE FUNCTION public.f() RETURNS trigger LANGUAGE plpgsql AS "
     "$$BEGIN RETURN NEW; END$$; CREATE TRIGGER t BEFORE INSERT ON public.cdr FOR EACH ROW EXECUTE FUNCTION public.f();",
     {}, ()),
    ("EXTENSION", "core", "CREATE EXTENSION dblink;", {}, ()),
    ("SCHEMA", "cdr_voicemail", "CREATE SCHEMA evil; CREATE TABLE public.cdr (id int);",
     {"exclude_tables": ["public.not_there"]}, ()),
    ("DEFAULT ACL", "core", "CREATE TABLE public.users (id int);"
     "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC;", {}, ()),
]


@pytest.mark.parametrize("desc,category,sql,spec,extra", FORBIDDEN_KINDS, ids=[k[0] for k in FORBIDDEN_KINDS])
def test_entries_that_are_not_tables_are_refused(pg, evil, victim, workdir, desc, category, sql, spec, extra):
    path = evil(sql, category, extra_args=extra, **spec)
    msg = refused(path, category, victim["profile"], workdir)
    assert re.search(r"TOC entry \d+ \(%s " % desc, msg), msg
    assert_restore_refused(pg, victim, path, category, workdir)


def test_database_entries_are_never_restored(pg, evil, victim, workdir):
    """pg_dump -C adds DATABASE, DATABASE PROPERTIES and COMMENT/ACL on DATABASE entries; pg_restore
    without --create (we never pass it) neither lists nor writes them: the dump restores its tables only."""
    path = evil("CREATE TABLE public.cdr (id int); DO $$BEGIN "
                "EXECUTE format('ALTER DATABASE %I SET work_mem = %L', current_database(), '1MB'); "
                "EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), 'evil'); END$$;",
                "cdr_voicemail", extra_args=("-C",))
    script = dumpguard.check_dump(path, "cdr_voicemail", victim["profile"], workdir)
    with open(script, "rb") as handle:
        text = handle.read()
    assert b"DATABASE" not in text.replace(b"PostgreSQL database dump", b"") and b"\\connect" not in text
    os.unlink(script)
    fresh = "fresh_%s" % uuid.uuid4().hex[:8]
    pg.create_database(fresh)
    try:
        prof = copy.deepcopy(victim["profile"])
        prof["database"]["name"] = fresh
        sources.restore_dump(path, "cdr_voicemail", prof, workdir=workdir)
        assert pg.psql("SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                       "WHERE d.datname = '%s'" % fresh).strip() == "0"
        assert pg.psql("SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
                       "WHERE datname = '%s'" % fresh).strip() == ""
        assert appliance.table_names(pg, fresh) == ["cdr"]
    finally:
        pg.drop_database(fresh)


# -- crafted dumps: SQL the restore would not have written ----------------------------------------------
PLACEHOLDER = b"P" * 240


@pytest.mark.parametrize("payload,reason", [
    (b"x';\n\\! touch %(flag)s\n-- ", r"a backslash outside a string literal, which psql would run as a meta-command: "
                                      r"'\\\\! touch "),
    (b"x'; DROP TABLE IF EXISTS public.users; --", r"table public\.users is not one of the cdr_voicemail category's tables"),
    (b"x'; COPY (SELECT 1) TO PROGRAM 'touch %(flag)s'; --", r"a name expected, found '\('"),
    (b"x'; SELECT pg_catalog.lo_export(1, '%(flag)s'); --", r"a SELECT pg_restore does not write"),
    (b"x'; SET ROLE postgres; --", r"SET of a setting a restore does not change"),
    (b"x' ; SELECT :'DBNAME'; --", r"a psql variable reference"),
], ids=["meta-command", "second-statement", "copy-to-program", "lo_export", "set-role", "psql-variable"])
def test_a_comment_breaking_out_of_its_string_is_refused(pg, evil, victim, workdir, flag_dir, payload, reason):
    flag = str(flag_dir / "pwned").encode()
    path = evil("CREATE TABLE public.cdr (id int); COMMENT ON TABLE public.cdr IS '%s';" % PLACEHOLDER.decode(),
                "cdr_voicemail")
    patch(path, PLACEHOLDER, payload % {b"flag": flag})
    msg = refused(path, "cdr_voicemail", victim["profile"], workdir)
    assert "SQL the restore would not have written itself" in msg and re.search(reason, msg), msg
    assert re.search(r"TOC entry \d+ \(COMMENT public TABLE cdr\)", msg), msg
    assert_restore_refused(pg, victim, path, "cdr_voicemail", workdir)
    assert not os.path.exists(flag)


def test_copy_data_with_an_early_end_line_is_refused(pg, evil, victim, workdir, flag_dir):
    flag = str(flag_dir / "pwned")
    path = evil("CREATE TABLE public.cdr (id int, note text); INSERT INTO public.cdr VALUES (1, '%s'), (2, 'after');"
                % PLACEHOLDER.decode(), "cdr_voicemail")
    patch(path, PLACEHOLDER, b"x\n\\.\nCOPY (SELECT 1) TO PROGRAM 'touch %s';\n--" % flag.encode())
    msg = refused(path, "cdr_voicemail", victim["profile"], workdir)
    assert re.search(r"TOC entry \d+ \(TABLE DATA public cdr\).*a name expected", msg), msg
    assert_restore_refused(pg, victim, path, "cdr_voicemail", workdir)
    # a data line that starts with \. but is no end line: psql would go on with data, we would not
    path = evil("CREATE TABLE public.cdr (id int, note text); INSERT INTO public.cdr VALUES (1, '%s');"
                % PLACEHOLDER.decode(), "cdr_voicemail")
    patch(path, PLACEHOLDER, b"x\n\\.garbage")
    assert "a COPY data line starting with \\. that is not the end line" in refused(
        path, "cdr_voicemail", victim["profile"], workdir)
    assert not os.path.exists(flag)


@pytest.mark.parametrize("sql,reason", [
    ("CREATE TABLE public.cdr (id int, x int DEFAULT lo_export(0, '%(flag)s'));", r"CREATE TABLE calls lo_export\(\)"),
    ("CREATE TABLE public.cdr (id int, CONSTRAINT c CHECK (lo_export(id::oid, '%(flag)s') > 0));",
     r"CREATE TABLE calls lo_export\(\)"),
    ("CREATE TABLE public.cdr (id int); ALTER TABLE public.cdr ADD CONSTRAINT c CHECK "
     "(pg_catalog.pg_read_file('/etc/hostname') <> '') NOT VALID;", r"(ADD CONSTRAINT|CREATE TABLE) calls pg_read_file\(\)"),
    ("CREATE SEQUENCE public.invoice_no; CREATE TABLE public.cdr (id int DEFAULT nextval('public.invoice_no'));",
     r"relation public\.invoice_no is not one of the cdr_voicemail"),
    ('CREATE TABLE public."cdr_\\! touch %(flag)s" (id int);', r"a backslash in a (comment|quoted identifier)"),
    ('CREATE TABLE public."cdr_x\n\\! touch %(flag)s" (id int);', r"a backslash in a (comment|quoted identifier)"),
    ("CREATE TABLE public.users_x (id int PRIMARY KEY); CREATE TABLE public.cdr (id int);"
     "CREATE TABLE public.cdr_link (id int REFERENCES public.users_x(id));", r"table public\.users_x is not one of"),
], ids=["lo_export-default", "lo_export-check", "pg_read_file-check", "nextval-of-core-sequence",
        "backslash-identifier", "newline-identifier", "foreign-key-to-core"])
def test_dangerous_definitions_made_by_pg_dump_are_refused(pg, evil, victim, workdir, flag_dir, sql, reason):
    flag = str(flag_dir / "pwned")
    path = evil(sql % {"flag": flag}, "cdr_voicemail")
    msg = refused(path, "cdr_voicemail", victim["profile"], workdir)
    assert re.search(reason, msg), msg
    assert_restore_refused(pg, victim, path, "cdr_voicemail", workdir)
    assert not os.path.exists(flag)


# -- what only the live database can tell --------------------------------------------------------------
@pytest.mark.parametrize("sql,reason", [
    ("CREATE SEQUENCE public.invoice_no START 1; CREATE TABLE public.cdr (id int DEFAULT nextval('public.invoice_no'));"
     "ALTER SEQUENCE public.invoice_no OWNED BY public.cdr.id; SELECT setval('public.invoice_no', 1);",
     r"sequence public\.invoice_no is not owned by table public\.cdr"),
    ("CREATE TABLE public.cdr (id int, src text); CREATE INDEX users_login_lower ON public.cdr (src);",
     r"index public\.users_login_lower is not an index of table public\.cdr"),
], ids=["standalone-core-sequence", "core-index"])
def test_a_cdr_dump_cannot_take_over_core_sequences_or_indexes(pg, evil, victim, workdir, sql, reason):
    path = evil(sql, "cdr_voicemail")
    dumpguard.check_dump(path, "cdr_voicemail", victim["profile"], workdir)  # nothing in the dump itself tells
    for name in os.listdir(workdir):
        os.unlink(os.path.join(workdir, name))
    assert_restore_refused(pg, victim, path, "cdr_voicemail", workdir, match=reason)
    assert pg.psql("SELECT last_value FROM public.invoice_no", db=appliance.DATABASE).strip() == "1000"


# -- the script check itself (psql's lexical rules), on scripts written by hand -----------------------------
KEY = "k3y"
HEAD = "--\n-- header\n--\n\n\\restrict %s\n\nSET standard_conforming_strings = on;\n" % KEY
TAIL = "\n\\unrestrict %s\n\n" % KEY


@pytest.mark.parametrize("body,problem", [
    ("COMMENT ON TABLE public.cdr IS 'a' ; \\! id\n;", "meta-command"),
    ("COMMENT ON TABLE public.cdr IS E'it\\'s';", None),
    ("COMMENT ON TABLE public.cdr IS E'a'\n'\\'; \\! id --';", None),   # continued E'' string: \' is escaped there
    ("COMMENT ON TABLE public.cdr IS 'a'\n'\\'; \\! id --';", "meta-command"),
    ("COMMENT ON TABLE public.cdr IS $x$ \\! id ; $y$ $x$;", None),
    ("COMMENT ON TABLE public.cdr IS 'x' /* nested /* \\! */ still */;", "a backslash in a comment"),
    ("COMMENT ON TABLE public.cdr IS 'x' /* nested /* */ still */;", None),
    ("ALTER TABLE ONLY public.cdr ADD CONSTRAINT c CHECK ((id > 0); DROP TABLE public.users; SELECT (1));",
     "a semicolon inside parentheses"),
    ("ALTER TABLE ONLY public.cdr ALTER COLUMN id SET DEFAULT :foo;", "a psql variable reference"),
    ("SET standard_conforming_strings = off;", "SET standard_conforming_strings = off"),
    ("SET client_encoding = 'SJIS';", "client_encoding sjis"),
    ("SET client_encoding = 'LATIN1';", None),
    ("SELECT pg_catalog.set_config('search_path', 'public', false);", "set_config other than"),
    ("SELECT pg_catalog.setval('public.users_id_seq', 5, true);", "sequence public.users_id_seq is neither"),
    ("COPY public.cdr (id) FROM stdin;\n1\n\\.\n", None),
    ("COPY public.cdr (id) FROM stdin;\n\\.\n", None),
    ("COPY public.cdr (id, note) FROM stdin;\n1\ta \\\\. b\n2\t\\\\.\n\\.\r\nCOPY public.cdr_summary FROM stdin;\n\\.\n", None),
    ("COPY public.cdr (id) FROM stdin;\n1\n\\.\nx\n\\.\n", "meta-command"),
    ("COPY public.cdr (id) FROM stdin; COMMENT ON TABLE public.cdr IS 'x';\n1\n\\.\n", "text after a COPY statement"),
    ("COPY public.cdr (id) FROM stdin;\n1\n", "COPY data without its end line"),
    ("COPY public.cdr (id) FROM '/etc/passwd';", "STDIN expected"),
    ("COPY public.cdr (id) TO PROGRAM 'id';", "FROM expected"),
    ("COPY public.users (id) FROM stdin;\n\\.\n", "table public.users is not one of"),
    ("DROP TABLE IF EXISTS public.cdr CASCADE;", "DROP with more than IF EXISTS"),
    ("DROP TABLE public.cdr;", "IF expected"),
    ("GRANT pg_execute_server_program TO sar_restorer;", "a GRANT/REVOKE of roles"),
    ("GRANT SELECT ON TABLE public.cdr TO PUBLIC;", None),
    ("CREATE TABLE public.cdr_x AS SELECT * FROM public.users;", "CREATE TABLE without a column list"),
    ("CREATE TABLE public.cdr_x (a int) INHERITS (public.users);", "parent table public.users is not one of"),
    ("CREATE FUNCTION public.cdr_f() RETURNS int LANGUAGE sql BEGIN ATOMIC; SELECT 1; END;", "a CREATE of something"),
    ("ALTER TABLE ONLY public.cdr ALTER COLUMN id SET DEFAULT query_to_xml('select 1', true, true, '');",
     "calls query_to_xml"),
    ("ALTER TABLE ONLY public.cdr ALTER COLUMN id SET DEFAULT (SELECT 1);", "holds a query"),
    ("ALTER TABLE ONLY public.cdr ADD CONSTRAINT c CHECK (tableoid <> 'public.users'::\"regclass\");",
     "relation public.users is not one of"),
    ("ALTER TABLE ONLY public.cdr ALTER COLUMN id SET DEFAULT pg_catalog.\"lo_import\"('/etc/passwd');", "calls lo_import"),
    ("ALTER TABLE ONLY public.cdr ALTER COLUMN id SET DEFAULT pg_catalog.nextval('public.cdr_id_seq'::regclass);", None),
    ("ALTER TABLE ONLY public.cdr OWNER TO postgres;", "an ALTER TABLE pg_restore does not write"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_script_lexing_follows_psql(victim, tmp_path, body, problem):
    own = dumpguard.Ownership("cdr_voicemail", victim["profile"], "db/cdr_voicemail.pgdump")
    script = tmp_path / "s.sql"
    script.write_bytes((HEAD + body + TAIL).encode("utf-8"))
    for chunk in (dumpguard.ScriptCheck.chunk, 3):  # and searched a few bytes at a time
        check = dumpguard.ScriptCheck(own, "db/cdr_voicemail.pgdump", [], KEY)
        check.chunk = chunk
        if problem is None:
            check.run(str(script))
            continue
        with pytest.raises(SarError) as err:
            check.run(str(script))
        assert problem in str(err.value), str(err.value)


@pytest.mark.parametrize("text,problem", [
    ("SET lock_timeout = 0;\n" + TAIL, "SQL before pg_restore's \\restrict line"),
    (HEAD + "\\restrict other\n" + TAIL, "meta-command"),
    (HEAD + "\\unrestrict other\n", "meta-command"),
    (HEAD + TAIL + "SET lock_timeout = 0;\n", "text after pg_restore's \\unrestrict line"),
    (HEAD, "does not end with pg_restore's \\unrestrict line"),
    (HEAD + "SET lock_timeout = 0\n" + TAIL, "meta-command"),   # the statement would swallow \unrestrict
    (HEAD + "SET lock_timeout = 0;\0\n" + TAIL, "a NUL byte"),
])
def test_restrict_lines_nul_and_script_ends(victim, tmp_path, text, problem):
    own = dumpguard.Ownership("cdr_voicemail", victim["profile"], "db/cdr_voicemail.pgdump")
    script = tmp_path / "s.sql"
    script.write_bytes(text.encode("utf-8"))
    with pytest.raises(SarError) as err:
        dumpguard.ScriptCheck(own, "db/cdr_voicemail.pgdump", [], KEY).run(str(script))
    assert problem in str(err.value), str(err.value)


def test_pattern_semantics_are_pg_dumps(victim):
    core = dumpguard.Ownership("core", victim["profile"], "m")
    cdr = dumpguard.Ownership("cdr_voicemail", victim["profile"], "m")
    assert core.relation("public", "users") and not core.relation("public", "cdr") and not core.relation("public", "cdr_x")
    assert core.relation("archive", "cdr_old")            # exclude_tables public.cdr* spares other schemas
    assert not core.relation("pg_catalog", "pg_class") and not core.relation("information_schema", "tables")
    assert not core.relation("pg_temp", "x") and not core.relation("pg_toast", "x")
    assert cdr.relation("public", "cdr") and cdr.relation("public", "cdr_summary") and not cdr.relation("public", "users")
    assert not cdr.relation("archive", "cdr_old") and not cdr.relation("public", "CDR")
    patterns = ["cdr?", '"CamelCase"', "asterisk.archive.*", "public.group(s|_members)"]
    prof = with_category(victim["profile"], "cdr_voicemail", tables=patterns)
    own = dumpguard.Ownership("cdr_voicemail", prof, "m")
    # unqualified patterns take schema public (documented); upper case folds unless quoted
    assert own.relation("public", "cdrs") and not own.relation("public", "cdr") and not own.relation("other", "cdrs")
    assert own.relation("public", "CamelCase") and not own.relation("public", "camelcase")
    assert own.relation("archive", "anything") and own.relation("public", "groups") and own.relation("public", "group_members")
    assert core.schema("archive") and not cdr.schema("archive") and not core.schema("pg_catalog")
    with pytest.raises(SarError, match="the profile has no tables for category announcements"):
        dumpguard.Ownership("announcements", victim["profile"], "db/announcements.pgdump")


def test_unreadable_dump_is_refused(victim, workdir, tmp_path):
    broken = tmp_path / "broken.pgdump"
    data = open(victim["cdr_voicemail"], "rb").read()
    broken.write_bytes(data[: len(data) // 2])
    msg = refused(str(broken), "cdr_voicemail", victim["profile"], workdir)
    assert "pg_restore could not turn the dump into SQL" in msg or "pg_restore cannot read this dump" in msg


# -- restore_role ----------------------------------------------------------------------------------------
@pytest.fixture
def restorer_db(pg, tmp_path):
    """A copy of the sample database whose tables belong to the non-superuser RESTORER."""
    name = "owned_%s" % uuid.uuid4().hex[:8]
    pg.create_database(name)
    pg.psql("GRANT USAGE, CREATE ON SCHEMA public TO %s" % RESTORER, db=name)
    pg.psql(appliance.SCHEMA_SQL % {"role": RESTORER}, db=name)
    for table, count in appliance.INITIAL_ROWS:
        appliance.add_rows(pg, table, count, db=name)
    prof = store.validate_profile(appliance.make_profile(str(tmp_path), pg, name=name))
    yield name, prof
    pg.drop_database(name)


def test_restore_role_restores_as_that_role(pg, restorer_db, workdir, tmp_path):
    name, profile = restorer_db
    profile = copy.deepcopy(profile)
    profile["database"]["restore_role"] = RESTORER
    profile = store.validate_profile(profile)
    before = appliance.database_snapshot(pg, name)
    staging = tmp_path / "staging"
    staging.mkdir()
    dumps = dump_databases(profile, str(staging))
    appliance.add_rows(pg, "cdr", 5, db=name)
    pg.psql("DELETE FROM users WHERE id > 30", db=name)
    logged = []
    sources.restore_dumps([("core", dumps["core"], "db/core.pgdump"),
                           ("cdr_voicemail", dumps["cdr_voicemail"], "db/cdr_voicemail.pgdump")], profile, workdir,
                          log=logged.append)
    assert appliance.database_snapshot(pg, name) == before
    # the tables were re-created by the role the prologue switched to (--no-owner: the creator owns them)
    owners = pg.psql("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = 'public' AND relkind IN ('r', 'S', 'i')", db=name).split()
    assert owners == [RESTORER]
    assert not any("superuser" in line for line in logged), logged


def test_restore_role_keeps_server_programs_out_of_reach(restorer_db, reachable_tmp):
    """Had a COPY ... TO PROGRAM slipped past the check, the restore role could not run it."""
    _name, profile = restorer_db
    shared = reachable_tmp / "shared"  # not below tmp_path: the server (user postgres) could not reach it
    shared.mkdir()
    os.chmod(str(shared), 0o777)  # the server (user postgres) may write here
    flag = str(shared / "pwned")
    role_profile = copy.deepcopy(profile)
    role_profile["database"]["restore_role"] = RESTORER
    prologue = dumpguard.restore_prologue(role_profile, [])
    assert prologue.startswith("SET standard_conforming_strings = on;\nSET ROLE \"%s\";" % RESTORER)
    evil_sql = "COPY (SELECT 1) TO PROGRAM 'touch %s';" % flag
    with pytest.raises(SourceError, match="pg_execute_server_program"):
        sources.psql(role_profile, prologue + evil_sql)
    assert not os.path.exists(flag)
    sources.psql(profile, evil_sql)  # the superuser could: this is what restore_role is for
    assert os.path.exists(flag)


def test_unusable_restore_role_fails_before_anything_runs(pg, victim, workdir):
    profile = copy.deepcopy(victim["profile"])
    profile["database"]["restore_role"] = "no_such_role"
    before = live_state(pg, appliance.DATABASE)
    with pytest.raises(SourceError, match=r"profile\.database\.restore_role 'no_such_role' cannot be used by 'sar_test'"):
        sources.restore_dumps([("core", victim["core"], "db/core.pgdump")], profile, workdir)
    assert live_state(pg, appliance.DATABASE) == before
    assert os.listdir(workdir) == []


def test_store_accepts_restore_role():
    assert store.validate_profile(None)["database"]["restore_role"] is None
    assert store.validate_profile({"database": {"restore_role": "pbx_restore"}})["database"]["restore_role"] == "pbx_restore"
