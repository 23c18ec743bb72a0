# SPDX-License-Identifier: GPL-3.0-or-later
"""sources.py against a real PostgreSQL 15 cluster (tests/harness/postgres.py)
and the sample appliance (tests/harness/appliance.py)."""

from __future__ import annotations

import copy
import glob
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.sar.backup.plugins.module_utils import sources, store
from ansible_collections.sar.backup.plugins.module_utils.errors import SarError, SourceError, ValidationError
from harness import appliance
from harness.postgres import PostgresCluster

ALL = ["core", "cdr_voicemail", "announcements"]


# -- fixtures ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pg():
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def app(pg, tmp_path_factory):
    """The sample appliance; tests must not change it (use `scratch_db` for that)."""
    root = str(tmp_path_factory.mktemp("appliance"))
    profile = store.validate_profile(appliance.build_appliance(root, pg))
    # Extra relations to exercise pattern semantics: another schema with a cdr* table
    # (not visible through the search_path) and a mixed-case name.
    pg.psql('SET ROLE %s; CREATE SCHEMA archive; CREATE TABLE archive.cdr_old (id int PRIMARY KEY, note text);'
            'INSERT INTO archive.cdr_old VALUES (1, \'old\'); CREATE TABLE public."CamelCase" (x int);'
            'CREATE TABLE public."dollar$name" (x int);'
            'CREATE TABLE public.ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);'
            'CREATE VIEW public.user_logins AS SELECT login FROM public.users;' % pg.user, db=appliance.DATABASE)
    return {"root": root, "profile": profile}


@pytest.fixture
def scratch_db(pg, tmp_path, request):
    """A private copy of the sample database (own name), dropped afterwards."""
    name = "scratch_%s" % re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:40]
    appliance.build_database(pg, name)
    root = str(tmp_path / "root")
    appliance.build_files(root)
    yield name, store.validate_profile(appliance.make_profile(root, pg, name=name))
    pg.drop_database(name)


@pytest.fixture
def staging(tmp_path):
    path = tmp_path / "staging"
    path.mkdir(mode=0o700)
    return str(path)


def with_db(profile: dict, **changes) -> dict:
    out = copy.deepcopy(profile)
    out["database"].update(changes)
    return out


def with_categories(profile: dict, **cats) -> dict:
    out = copy.deepcopy(profile)
    for cat, spec in cats.items():
        out["categories"][cat] = dict({"tables": [], "exclude_tables": [], "paths": []}, **spec)
    return store.validate_profile(out)


def toc(dump_path: str) -> list:
    """(type, schema, name) of every entry `pg_restore -l` lists."""
    out = subprocess.run(["pg_restore", "-l", dump_path], check=True, stdout=subprocess.PIPE, text=True).stdout
    entries = []
    for line in out.splitlines():
        if not line or line.startswith(";"):
            continue
        # "215; 1259 16390 TABLE public cdr sar_test"
        match = re.match(r"^\d+; \d+ \d+ (TABLE DATA|SEQUENCE SET|SEQUENCE OWNED BY|[A-Z]+(?: [A-Z]+)?) (\S+) (\S+) ", line)
        if match:
            entries.append(match.groups())
    return entries


def dumped_relations(dump_path: str) -> list:
    return sorted("%s.%s" % (schema, name) for kind, schema, name in toc(dump_path) if kind in ("TABLE", "SEQUENCE", "VIEW"))


def dumped_tables(dump_path: str) -> list:
    return sorted("%s.%s" % (schema, name) for kind, schema, name in toc(dump_path) if kind == "TABLE DATA")


# -- plan ---------------------------------------------------------------------------
@pytest.mark.parametrize("combo", [list(c) for n in (1, 2, 3) for c in itertools.permutations(ALL, n)],
                         ids="+".join)
def test_plan_default_profile_every_combination(combo):
    profile = store.validate_profile(None)
    got = sources.plan(combo, profile)
    expected = []
    for cat in combo:
        if cat == "core":
            expected += [("core", "postgresql", "db/core.pgdump"), ("core", "files", "files/core/0"),
                         ("core", "files", "files/core/1")]
        elif cat == "cdr_voicemail":
            expected += [("cdr_voicemail", "postgresql", "db/cdr_voicemail.pgdump"),
                         ("cdr_voicemail", "files", "files/cdr_voicemail/0")]
        else:
            expected += [("announcements", "files", "files/announcements/0")]
    assert [(s.category, s.kind, s.member) for s in got] == expected
    by_member = {s.member: s for s in got}
    if "core" in combo:
        core = by_member["db/core.pgdump"]
        assert core.tables == [] and core.exclude_tables == ["public.cdr*"]
        assert core.origin == "postgresql://postgres@/var/run/postgresql:5432/asterisk?exclude_tables=public.cdr*"
        assert by_member["files/core/0"].origin == "/etc/asterisk"
        assert by_member["files/core/1"].origin == "/var/lib/starface/config"
    if "cdr_voicemail" in combo:
        cdr = by_member["db/cdr_voicemail.pgdump"]
        assert cdr.tables == ["public.cdr*"] and cdr.exclude_tables == []
        assert cdr.origin.endswith("/asterisk?tables=public.cdr*")
        assert by_member["files/cdr_voicemail/0"].origin == "/var/spool/asterisk/voicemail"
    for src in got:
        assert src.size is None and src.files is None and src.local_path is None


def test_plan_profile_variants():
    profile = with_categories(
        store.validate_profile({"database": {"password": "s3cret:pw", "host": "db.example", "port": 6543,
                                             "user": "backup", "name": "pbx"}}),
        core={"tables": ["users", "public.groups"], "paths": ["/a/", "/b/c"]},
        cdr_voicemail={"paths": ["/spool"]},                       # neither tables nor exclude: no dump
        announcements={"exclude_tables": ["big_*"], "paths": []},  # dump only, no tree
    )
    got = sources.plan(["announcements", "cdr_voicemail", "core", "core"], profile)
    assert [(s.category, s.kind, s.member, s.origin) for s in got] == [
        ("announcements", "postgresql", "db/announcements.pgdump",
         "postgresql://backup@db.example:6543/pbx?exclude_tables=big_*"),
        ("cdr_voicemail", "files", "files/cdr_voicemail/0", "/spool"),
        ("core", "postgresql", "db/core.pgdump", "postgresql://backup@db.example:6543/pbx?tables=users,public.groups"),
        ("core", "files", "files/core/0", "/a"),
        ("core", "files", "files/core/1", "/b/c"),
    ]
    assert got[2].tables == ["users", "public.groups"] and got[2].exclude_tables == []
    assert all("s3cret" not in s.origin for s in got)


def test_plan_category_with_nothing_and_unknown_category():
    profile = with_categories(store.validate_profile(None), announcements={})
    assert sources.plan(["announcements"], profile) == []
    with pytest.raises(ValidationError) as err:
        sources.plan(["core", "voicemail"], profile)
    assert err.value.field == "data[1]"


def test_harness_profile_matches_default_profile(app):
    default = store.DEFAULT_PROFILE["categories"]
    prof = app["profile"]["categories"]
    assert set(prof) == set(default)
    for cat, spec in default.items():
        assert prof[cat]["tables"] == spec["tables"]
        assert prof[cat]["exclude_tables"] == spec["exclude_tables"]
        assert prof[cat]["paths"] == [app["root"] + p for p in spec["paths"]]


def test_store_accepts_pg_bin_dir():
    assert store.validate_profile(None)["database"]["pg_bin_dir"] is None
    assert store.validate_profile({"database": {"pg_bin_dir": "/usr/lib/postgresql/15/bin"}})["database"]["pg_bin_dir"] \
        == "/usr/lib/postgresql/15/bin"


# -- check ----------------------------------------------------------------------------
def test_check_ok(app):
    plan = sources.plan(ALL, app["profile"])
    sources.check(plan, app["profile"])  # no exception


def test_check_missing_path_is_named(app, tmp_path):
    missing = str(tmp_path / "var/spool/asterisk/voicemail")
    profile = with_categories(app["profile"], cdr_voicemail={"tables": ["public.cdr*"], "paths": [missing]})
    with pytest.raises(SourceError) as err:
        sources.check(sources.plan(["core", "cdr_voicemail"], profile), profile)
    assert str(err.value) == "cdr_voicemail: source path %s does not exist" % missing
    assert err.value.code == "sourceFailed"


def test_check_path_that_is_a_file(app, tmp_path):
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    profile = with_categories(app["profile"], announcements={"paths": [str(afile)]})
    with pytest.raises(SourceError, match=r"^announcements: source path .*not-a-dir is not a directory"):
        sources.check(sources.plan(["announcements"], profile), profile)


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root and /usr/bin/python3 to run the check as another user")
def test_check_unreadable_path_is_named(app):
    # root reads everything: run the check as `nobody`, who cannot enter a 0700 root directory
    # (below a world-traversable temp dir, so only the last step is refused)
    base = tempfile.mkdtemp(prefix="sar-src-")
    try:
        os.chmod(base, 0o755)
        secret = os.path.join(base, "private")
        os.mkdir(secret, 0o700)
        profile = with_categories(app["profile"], announcements={"paths": [secret]})
        code = ("import json, sys\nfrom ansible_collections.sar.backup.plugins.module_utils import sources\n"
                "p = json.loads(sys.argv[1])\n"
                "try:\n    sources.check(sources.plan(['announcements'], p), p)\nexcept sources.SourceError as e:\n"
                "    print(e)\n")
        proc = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code, json.dumps(profile)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/", check=False,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert proc.stdout.strip() == "announcements: source path %s is not readable (permission denied)" % secret, \
            proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_check_unreachable_database_wrong_port(app, pg):
    profile = with_db(app["profile"], port=pg.port + 1 if pg.port < 65535 else pg.port - 1)
    with pytest.raises(SourceError) as err:
        sources.check(sources.plan(["announcements", "core"], profile), profile)
    msg = str(err.value)
    prefix = "core: cannot connect to PostgreSQL database 'asterisk' at %s:%d as 'sar_test': " % (
        pg.socket_dir, profile["database"]["port"])
    assert msg.startswith(prefix), msg
    assert "connection to server" in msg and "\n" not in msg
    assert pg.password not in msg


def test_check_wrong_password_names_auth_failure_without_the_password(app, pg):
    profile = with_db(app["profile"], password="wrong:pass\\word")
    with pytest.raises(SourceError) as err:
        sources.check(sources.plan(["cdr_voicemail"], profile), profile)
    assert str(err.value).startswith("cdr_voicemail: cannot connect to PostgreSQL database 'asterisk'")
    assert "password authentication failed" in str(err.value)
    assert "wrong:pass" not in str(err.value)


def test_check_without_password_fails_clearly(app):
    profile = with_db(app["profile"], password=None)
    with pytest.raises(SourceError, match="no password supplied"):
        sources.check(sources.plan(["core"], profile), profile)


def test_check_tcp_connection(app, pg):
    profile = with_db(app["profile"], host="127.0.0.1")
    sources.check(sources.plan(["core"], profile), profile)
    assert sources.relations(sources.plan(["cdr_voicemail"], profile)[0], profile)[0] == "public.cdr"


def test_check_too_many_dots_in_pattern(app):
    profile = with_categories(app["profile"], cdr_voicemail={"tables": ["a.b.c.d"]})
    with pytest.raises(SourceError, match=r"^cdr_voicemail: table pattern 'a.b.c.d' has too many dotted names"):
        sources.check(sources.plan(["cdr_voicemail"], profile), profile)


def test_missing_client_tools_are_named(app, tmp_path):
    profile = with_db(app["profile"], pg_bin_dir=str(tmp_path))
    with pytest.raises(SourceError, match=r"^core: PostgreSQL client pg_dump not found in profile.database.pg_bin_dir"):
        sources.check(sources.plan(["core"], profile), profile)


def test_explicit_pg_bin_dir(app, pg):
    profile = with_db(app["profile"], pg_bin_dir=pg.bin_dir)
    assert sources.find_tool("pg_dump", profile) == os.path.join(pg.bin_dir, "pg_dump")
    sources.check(sources.plan(["core"], profile), profile)


def _is_pg_wrapper(path) -> bool:
    return bool(path) and os.path.basename(os.path.realpath(path)) == "pg_wrapper"


@pytest.mark.skipif(not _is_pg_wrapper(shutil.which("pg_dump")), reason="PATH's pg_dump is not Debian's pg_wrapper here")
def test_debian_pg_wrapper_is_not_called_when_the_host_is_named(app, staging, spy):
    """PATH's psql and pg_dump are postgresql-common's Perl dispatcher; with the host named it would exec the
    newest version, so the run calls that version itself (no Perl start-up per call)."""
    profile = app["profile"]
    assert profile["database"]["host"] and not profile["database"].get("pg_bin_dir")
    plan = sources.plan(["core"], profile)
    sources.check(plan, profile)
    sources.estimate(plan, profile)
    sources.prepare(plan, profile, staging)
    assert {os.path.basename(c["argv"][0]) for c in spy} == {"psql", "pg_dump"}
    for call in spy:
        assert not _is_pg_wrapper(call["argv"][0]) and call["argv"][0].startswith("/usr/lib/postgresql/"), call["argv"][0]
    with open(os.path.join(staging, "core.pgdump"), "rb") as handle:
        assert handle.read(5) == b"PGDMP"


# -- password handling -------------------------------------------------------------------
@pytest.fixture
def spy(monkeypatch):
    """Record every subprocess.run call sources makes (argv, env, the password file then)."""
    calls = []
    real = subprocess.run

    def recording(argv, *args, **kwargs):
        env = kwargs.get("env") or {}
        passfile = env.get("PGPASSFILE")
        info = {"argv": list(argv), "env": dict(env), "passfile": passfile}
        if passfile:
            st = os.stat(passfile)
            info["passfile_mode"] = stat.S_IMODE(st.st_mode)
        calls.append(info)
        return real(argv, *args, **kwargs)  # pylint: disable=subprocess-run-check

    monkeypatch.setattr(sources.subprocess, "run", recording)
    return calls


def test_password_never_in_argv_or_environment(app, pg, staging, spy, monkeypatch):
    # A wrong PGPASSWORD in our own environment must neither leak nor win.
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    profile = app["profile"]
    plan = sources.plan(ALL, profile)
    sources.check(plan, profile)
    sources.estimate(plan, profile)
    sources.prepare(plan, profile, staging)
    dumps = [c for c in spy if os.path.basename(c["argv"][0]) == "pg_dump"]
    assert len(dumps) == 2 and len(spy) >= 4  # the connection check, the size query of both dumps, two pg_dumps
    for call in spy:
        assert all(pg.password not in str(a) for a in call["argv"]), call["argv"]
        assert all(pg.password not in str(v) for v in call["env"].values())
        assert "PGPASSWORD" not in call["env"]
        assert call["passfile"] and call["passfile_mode"] == 0o600
        assert not os.path.exists(call["passfile"])  # removed after the call
    for call in dumps:
        assert "--no-password" in call["argv"] and "-Fc" in call["argv"] and "-Z0" in call["argv"]
        assert os.path.dirname(call["passfile"]) == staging  # the dump's password file lives in staging
    assert sorted(os.listdir(staging)) == ["cdr_voicemail.pgdump", "core.pgdump"]


# -- dumps ------------------------------------------------------------------------------
def test_core_dump_excludes_cdr_and_cdr_dump_has_only_them(app, staging):
    profile = app["profile"]
    plan = sources.plan(["core", "cdr_voicemail"], profile)
    sources.prepare(plan, profile, staging)
    core, cdr = plan[0], plan[3]
    assert core.local_path == os.path.join(staging, "core.pgdump")
    assert dumped_tables(core.local_path) == ["archive.cdr_old", "public.CamelCase", "public.chat_history",
                                              "public.dollar$name", "public.group_members", "public.groups", "public.ident",
                                              "public.number_assignments", "public.phone_numbers", "public.users"]
    assert not [r for r in dumped_relations(core.local_path) if r.startswith("public.cdr")]
    assert dumped_tables(cdr.local_path) == ["public.cdr", "public.cdr_summary"]
    assert dumped_relations(cdr.local_path) == ["public.cdr", "public.cdr_id_seq", "public.cdr_summary"]
    for src in (core, cdr):
        assert src.size == os.path.getsize(src.local_path) > 0 and src.files == 1
        assert stat.S_IMODE(os.stat(src.local_path).st_mode) == 0o600
        with open(src.local_path, "rb") as handle:
            assert handle.read(5) == b"PGDMP"  # custom format


def test_relations_select_what_pg_dump_selects(app, staging):
    """sources' port of the pattern rules (used for estimates and empty selections) agrees with pg_dump."""
    for patterns in (["public.cdr*"], ["cdr*"], ["*.cdr*"], ["CDR"], ['"CamelCase"'], ["camelcase"],
                     ["public.user?"], ["archive.*", "users"], ["dollar$name"], ["asterisk.public.groups"],
                     ["public.group(s|_members)"], ["ident"], ["ident_id_seq"], ["user_logins"], ["nothing*"]):
        profile = with_categories(app["profile"], cdr_voicemail={"tables": patterns})
        src = sources.plan(["cdr_voicemail"], profile)[0]
        selected = sources.relations(src, profile)
        dest = os.path.join(staging, "x.pgdump")
        sources.dump(src, profile, dest)
        assert selected == dumped_relations(dest), patterns  # [] when nothing matches: the dump is empty
    for patterns in (["public.cdr*"], ["cdr"], ["public.ident_id_seq"], ["ident", "archive.*", "user_logins"]):
        profile = with_categories(app["profile"], core={"exclude_tables": patterns})
        src = sources.plan(["core"], profile)[0]
        dest = os.path.join(staging, "y.pgdump")
        sources.dump(src, profile, dest)
        assert sources.relations(src, profile) == dumped_relations(dest), patterns
    # unqualified names see only the search_path: archive.cdr_old is not "cdr*"
    src = sources.plan(["cdr_voicemail"], with_categories(app["profile"], cdr_voicemail={"tables": ["cdr*"]}))[0]
    assert "archive.cdr_old" not in sources.relations(src, app["profile"])


def test_tables_matching_nothing_give_an_empty_dump(app, pg, staging):
    profile = with_categories(app["profile"], cdr_voicemail={"tables": ["public.no_such_table*"]})
    src = sources.plan(["cdr_voicemail"], profile)[0]
    logged = []
    size = sources.dump(src, profile, os.path.join(staging, "e.pgdump"), log=logged.append)
    assert size > 0 and toc(os.path.join(staging, "e.pgdump")) == []
    assert logged and "no table in database 'asterisk' matches public.no_such_table*" in logged[0]
    before = appliance.database_snapshot(pg)
    sources.restore_dump(os.path.join(staging, "e.pgdump"), "cdr_voicemail", profile)  # restores nothing, breaks nothing
    assert appliance.database_snapshot(pg) == before


def test_one_pattern_matching_nothing_is_fine_when_another_matches(app, staging):
    profile = with_categories(app["profile"], cdr_voicemail={"tables": ["public.cdr_summary", "public.missing"]})
    src = sources.plan(["cdr_voicemail"], profile)[0]
    sources.dump(src, profile, os.path.join(staging, "p.pgdump"))
    assert dumped_tables(os.path.join(staging, "p.pgdump")) == ["public.cdr_summary"]


@pytest.mark.parametrize("category", ["core", "cdr_voicemail"])  # whole database / chosen tables
def test_pg_dump_failure_raises_and_leaves_no_file(app, staging, category):
    profile = with_db(app["profile"], name="no_such_db")
    src = sources.plan([category], profile)[0]
    dest = os.path.join(staging, "%s.pgdump" % category)
    with pytest.raises(SourceError) as err:
        sources.dump(src, profile, dest)
    msg = str(err.value)
    assert msg.startswith("%s: pg_dump of database 'no_such_db' at " % category)
    assert 'database "no_such_db" does not exist' in msg
    assert os.listdir(staging) == []  # neither the dump nor the password file


def test_prepare_failure_in_second_source_keeps_staging_clean(app, staging):
    profile = with_categories(with_db(app["profile"], name="gone"), core={"exclude_tables": ["public.cdr*"]})
    with pytest.raises(SourceError, match="pg_dump"):
        sources.prepare(sources.plan(["announcements", "core"], profile), profile, staging)
    assert os.listdir(staging) == []


# -- restore ---------------------------------------------------------------------------
def test_dump_restored_into_fresh_database_is_identical(app, pg, staging):
    # A whole-database dump holding the view public.user_logins is refused (a dump restores
    # tables only, see test_dumpguard.py): this profile leaves the view out of core.
    plan = sources.plan(["core"], app["profile"])
    sources.prepare(plan, app["profile"], staging)
    with pytest.raises(SarError, match=r"^core\.pgdump: .*TOC entry \d+ \(VIEW public user_logins\)"):
        sources.restore_dump(plan[0].local_path, "core", app["profile"])
    os.unlink(plan[0].local_path)
    profile = with_categories(app["profile"], core={"exclude_tables": ["public.cdr*", "public.user_logins"]})
    plan = sources.plan(["core", "cdr_voicemail"], profile)
    sources.prepare(plan, profile, staging)
    dumps = {s.member: s.local_path for s in plan if s.kind == sources.KIND_DB}
    fresh = "fresh_restore"
    pg.create_database(fresh)
    try:
        fresh_profile = with_db(profile, name=fresh)
        sources.restore_dump(dumps["db/core.pgdump"], "core", fresh_profile)
        sources.restore_dump(dumps["db/cdr_voicemail.pgdump"], "cdr_voicemail", fresh_profile)
        assert appliance.database_snapshot(pg, fresh) == appliance.database_snapshot(pg)
        assert appliance.table_rows(pg, "archive.cdr_old", fresh) == [{"id": 1, "note": "old"}]
        # sequences come back too: the next id continues after the restored rows
        assert pg.psql("SELECT nextval('cdr_id_seq')", db=fresh).strip() == "301"
    finally:
        pg.drop_database(fresh)


def test_restore_over_live_database_brings_back_the_backed_up_rows(pg, scratch_db, staging):
    name, profile = scratch_db
    before = appliance.database_snapshot(pg, name)
    plan = sources.plan(["core", "cdr_voicemail"], profile)
    sources.prepare(plan, profile, staging)
    appliance.add_rows(pg, "users", 3, db=name)
    appliance.add_rows(pg, "cdr", 7, db=name)
    pg.psql("DELETE FROM cdr_summary WHERE day < date '2024-02-10'", db=name)
    assert appliance.database_snapshot(pg, name) != before
    sources.restore_dump(plan[0].local_path, "core", profile)   # core first, while the cdr tables stay in place
    assert appliance.table_rows(pg, "users", name) == before["users"]
    assert len(appliance.table_rows(pg, "cdr", name)) == 307  # other category untouched
    sources.restore_dump(plan[3].local_path, "cdr_voicemail", profile)
    assert appliance.database_snapshot(pg, name) == before


def test_restore_failure_is_a_clear_error_and_changes_nothing(pg, scratch_db, staging, tmp_path):
    name, profile = scratch_db
    src = sources.plan(["cdr_voicemail"], profile)[0]
    sources.dump(src, profile, os.path.join(staging, "cdr.pgdump"))
    before = appliance.database_snapshot(pg, name)
    broken = tmp_path / "broken.pgdump"
    data = open(os.path.join(staging, "cdr.pgdump"), "rb").read()
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(SarError, match=r"^broken\.pgdump: pg_restore (cannot read this dump|could not turn the dump into SQL)"):
        sources.restore_dump(str(broken), "cdr_voicemail", profile)
    assert appliance.database_snapshot(pg, name) == before


# -- sizes ------------------------------------------------------------------------------
def test_measure_and_estimate(app, staging):
    profile = app["profile"]
    voicemail = profile["categories"]["cdr_voicemail"]["paths"][0]
    expected = sum(os.lstat(p).st_size for p in glob.glob(voicemail + "/**", recursive=True) if not os.path.isdir(p))
    files = len([p for p in glob.glob(voicemail + "/**", recursive=True) if not os.path.isdir(p)])
    size, nfiles, ndirs = sources.measure_tree(voicemail)
    assert (size, nfiles) == (expected, files) and ndirs > 0
    os.symlink("/etc", os.path.join(voicemail, "link-not-followed"))
    try:
        assert sources.measure_tree(voicemail)[:2] == (expected + len("/etc"), files + 1)
    finally:
        os.unlink(os.path.join(voicemail, "link-not-followed"))
    plan = sources.plan(ALL, profile)
    total = sources.estimate(plan, profile)
    cdr_only = sources.database_sizes([plan[3]], profile)[0]
    core_db = sources.database_sizes([plan[0]], profile)[0]
    assert cdr_only > 0 and core_db > 0
    assert sources.database_sizes([plan[0], plan[3]], profile) == [core_db, cdr_only]
    assert sources.database_sizes([], profile) == []
    sources.prepare(plan, profile, staging)
    # an upper bound of what staging and the archive will hold
    assert total >= sum(s.size for s in plan)
    assert cdr_only >= plan[3].size * 0.5  # same order of magnitude as the real dump
    by_member = {s.member: s for s in plan}
    assert by_member["files/cdr_voicemail/0"].size == expected
    assert by_member["files/cdr_voicemail/0"].files == files
    assert by_member["files/core/0"].files == 4


def test_estimate_sizes_every_dump_with_one_psql_call(app, spy):
    profile = app["profile"]
    plan = sources.plan(ALL, profile)
    total = sources.estimate(plan, profile)
    assert [os.path.basename(c["argv"][0]) for c in spy] == ["psql"]
    assert total > sum(sources.database_sizes([s for s in plan if s.kind == sources.KIND_DB], profile))


def test_estimate_names_unreachable_database(app, pg):
    profile = with_db(app["profile"], port=pg.port + 1 if pg.port < 65535 else pg.port - 1)
    with pytest.raises(SourceError, match=r"^cdr_voicemail: psql on database 'asterisk'"):
        sources.estimate(sources.plan(["cdr_voicemail"], profile), profile)
