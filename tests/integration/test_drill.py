# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore drills (plugins/module_utils/drill.py) against a real PostgreSQL cluster and real trees: the
newest archive restores into a scratch database and a scratch folder, its checks pass, the live database
and trees are byte for byte what they were (also after a drill that fails halfway), targets rotate,
leftovers of killed drills go, and the result reaches the status file, the metrics and `sar-backup status`."""

from __future__ import annotations

import json
import os
import pwd
import re

from harness import appliance as sample
from harness.playbook import run_playbook

from ansible_collections.sar.backup.plugins.module_utils.job import validate_job

import pytest

from test_restore import Pbx  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def pbx(tmp_path, appliance):
    box = Pbx(tmp_path, appliance.cluster)
    try:
        yield box
    finally:
        appliance.cluster.psql("DROP DATABASE IF EXISTS %s" % box.db)


def drill_job(pbx, tmp_path, **over):
    second = tmp_path / "second-disk"
    second.mkdir(exist_ok=True)
    raw = {"name": "nightly", "data": ["core", "cdr_voicemail", "announcements"], "interval": "daily",
           "start": "2026-01-01 02:30", "targets": [{"type": "local"}, {"type": "local", "path": str(second)}],
           "drill": {"interval": "weekly", "start": "2026-01-04 05:00"}}
    raw.update(over)
    pbx.store.write_job(validate_job(raw))


def databases(cluster) -> list:
    return sorted(n for n in cluster.psql("SELECT datname FROM pg_database").split() if n.startswith("sar_drill"))


def status(pbx) -> dict:
    with open(os.path.join(pbx.settings["status_dir"], "nightly.json")) as handle:
        return json.load(handle)


def test_drill_proves_the_newest_archive_and_touches_nothing_live(pbx, tmp_path, capsys):
    drill_job(pbx, tmp_path)
    assert pbx.sar("run", "nightly") == 0
    pbx.change()  # live data moves on after the backup: the drill must neither see nor touch it
    live = pbx.snapshot()
    # A scratch database a killed drill left behind.
    pbx.cluster.psql("CREATE DATABASE sar_drill_nightly_20200101000000")
    capsys.readouterr()
    assert pbx.sar("drill", "nightly") == 0
    out = capsys.readouterr().out
    assert out.startswith("OK nightly: restore drill from target 0")
    assert re.search(r"table public\.users\s+\d+ rows", out) and "tree  files/announcements/0" in out
    assert pbx.snapshot() == live
    assert databases(pbx.cluster) == []                    # its own scratch database and the leftover are gone
    assert [n for n in os.listdir(pbx.settings["staging_dir"]) if not n.startswith(".lock")] == []
    st = status(pbx)
    drill = st["last_drill"]
    assert drill["code"] == "successful" and drill["target"] == 0 and st["last_drill_success"] == drill["finished"]
    assert drill["isolation"] == "scratch_database" and drill["database"].startswith("sar_drill_nightly_")
    assert drill["checks"]["tables"] == len(sample.CORE_TABLES) + len(sample.CDR_TABLES)
    assert drill["checks"]["files"] > 0 and all(t["ok"] for t in drill["tables"] + drill["trees"])
    assert st["code"] == "successful"                      # the run's own result is kept
    metrics = open(os.path.join(pbx.settings["status_dir"], "sar_backup.prom")).read()
    assert re.search(r'^sar_backup_last_drill_success\{backup_job="nightly"\} 1$', metrics, re.M)
    assert re.search(r'^sar_backup_last_drill_success_timestamp_seconds\{backup_job="nightly"\} [1-9]\d+$', metrics, re.M)
    assert pbx.sar("status") == 0
    assert "last drill passed" in capsys.readouterr().out

    # rotate: the next drill proves the other target's copy, then back to the first.
    assert pbx.sar("drill", "nightly") == 0
    assert status(pbx)["last_drill"]["target"] == 1
    assert pbx.sar("drill", "nightly") == 0
    assert status(pbx)["last_drill"]["target"] == 0
    assert pbx.snapshot() == live


def test_a_drill_failing_halfway_changes_nothing_and_is_critical(pbx, tmp_path, capsys):
    drill_job(pbx, tmp_path)
    assert pbx.sar("run", "nightly") == 0
    live = pbx.snapshot()
    # The trees are restored into scratch, then the database part fails (a restore role that does not exist).
    settings = json.loads(json.dumps(pbx.settings))
    settings["profile"]["database"]["restore_role"] = "no_such_role_for_drills"
    pbx.store.write_settings(settings)
    capsys.readouterr()
    assert pbx.sar("drill", "nightly") == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED nightly")
    assert pbx.snapshot() == live
    assert databases(pbx.cluster) == []
    assert [n for n in os.listdir(pbx.settings["staging_dir"]) if n.startswith(".drill")] == []
    drill = status(pbx)["last_drill"]
    assert drill["code"] != "successful" and drill["error"]
    assert pbx.sar("status") == 2
    assert "last drill" in capsys.readouterr().out


def test_module_drill(pbx, tmp_path):
    drill_job(pbx, tmp_path, targets=[{"type": "local"}])
    assert pbx.sar("run", "nightly") == 0
    result = run_playbook([
        {"name": "Drill", "sar.backup.sar_backup_restore": {"config_dir": pbx.store.config_dir, "job": "nightly",
                                                            "drill": True}, "register": "d"},
        {"name": "Drill, check mode", "sar.backup.sar_backup_restore": {"config_dir": pbx.store.config_dir,
                                                                        "job": "nightly", "drill": True},
         "check_mode": True},
    ], str(tmp_path))
    assert result.rc == 0, result.stdout + result.stderr
    res = result.results()["Drill"]
    assert res["changed"] is False and res["code"] == "successful" and res["verified"] is True
    assert res["checks"]["tables"] > 0 and res["drill"]["target"] == 0
    assert result.results()["Drill, check mode"]["skipped"] is True


def test_row_counts_recorded_at_backup_are_checked(pbx, tmp_path, capsys):
    """The manifest carries each table's rows in the dump's own snapshot; a restore that brings back fewer
    fails the drill naming the table (an archive claiming one row more, repacked and opened with --trust any)."""
    from test_restore_trust import repack
    drill_job(pbx, tmp_path, targets=[{"type": "local"}])
    assert pbx.sar("run", "nightly") == 0
    folder = os.path.join(pbx.settings["archive_dir"], "starface-backup", "nightly")
    (name,) = os.listdir(folder)
    path = os.path.join(folder, name)
    with open(path, "rb") as handle:
        import zstandard
        raw = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read(256 * 1024)
    manifest = json.loads(raw[512:raw.index(b"\n}\n") + 3])
    rows = {s["category"]: s["rows"] for s in manifest["sources"] if s["kind"] == "postgresql"}
    assert rows["core"]["public.users"] == 40 and rows["cdr_voicemail"]["public.cdr"] == 300

    def one_more(manifest):
        for src in manifest["sources"]:
            if src["kind"] == "postgresql" and "public.users" in src["rows"]:
                src["rows"]["public.users"] += 1
    crafted = path + ".crafted"
    repack(path, crafted, one_more)
    os.replace(crafted, path)
    capsys.readouterr()
    assert pbx.sar("drill", "nightly", "--trust", "any") == 1
    out = capsys.readouterr().out
    assert "table public.users: 40 rows restored, 41 recorded at backup time" in out
    assert status(pbx)["last_drill"]["code"] == "verifyFailed"


# -- a profile user without CREATEDB: the private temporary cluster ------------------------------------------
def postmasters_under(path: str) -> list:
    """PIDs of PostgreSQL servers whose command line names a directory below `path`."""
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"postgres" and any(a.startswith(os.fsencode(path)) for a in argv):
            out.append(int(pid))
    return out


@pytest.fixture
def no_createdb(pbx, tmp_path):
    """The profile's user becomes a role without CREATEDB that may only read the appliance's tables; a second
    role gets a grant on users (the dump carries that ACL: the private cluster must know the role). Staging moves
    to a folder the cluster's OS user (postgres) can reach (pytest's own tmp is root-only)."""
    import secrets
    import shutil
    import tempfile
    from harness.postgres import quote_literal
    suffix = secrets.token_hex(4)
    user, reader = "drill_nocreate_%s" % suffix, "pbx_reporting_%s" % suffix
    password = "pw:%s\\x" % secrets.token_urlsafe(8)
    cluster = pbx.cluster
    cluster.psql("CREATE ROLE %s LOGIN NOCREATEDB NOSUPERUSER PASSWORD %s; CREATE ROLE %s NOLOGIN;"
                 % (user, quote_literal(password), reader))
    cluster.psql("GRANT USAGE ON SCHEMA public TO %s; GRANT SELECT ON ALL TABLES IN SCHEMA public TO %s; "
                 "GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO %s; GRANT SELECT ON users TO %s;"
                 % (user, user, user, reader), db=pbx.db)
    root = tempfile.mkdtemp(prefix="sar-drill-")
    os.chmod(root, 0o755)
    settings = json.loads(json.dumps(pbx.settings))
    settings["profile"]["database"].update(user=user, password=password)
    settings["staging_dir"] = os.path.join(root, "staging")
    pbx.store.write_settings(settings)
    pbx.settings = settings
    try:
        yield {"user": user, "reader": reader, "staging": settings["staging_dir"]}
    finally:
        for pid in postmasters_under(root):
            os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)
        for role in (user, reader):
            cluster.psql("DROP OWNED BY %s" % role, db=pbx.db)
            cluster.psql("DROP ROLE %s" % role)


def test_drill_without_createdb_restores_into_a_private_cluster(pbx, no_createdb, tmp_path, capsys):
    from ansible_collections.sar.backup.plugins.module_utils import pgcluster
    drill_job(pbx, tmp_path)
    assert pbx.sar("run", "nightly") == 0
    pbx.change()
    live = pbx.snapshot()
    before = databases(pbx.cluster)
    staging = no_createdb["staging"]
    # A drill killed with its private cluster running: the server still runs on its folder in staging.
    killed = os.path.join(staging, ".drill-abcd1234")
    os.mkdir(killed, 0o700)
    major = pgcluster.server_major(pbx.cluster.psql("SHOW server_version_num").strip())
    left = pgcluster.PrivateCluster(killed, pgcluster.find_server_binaries(major)).start()
    (left_pid,) = postmasters_under(killed)
    os.chown(staging, 0, 0)    # its drill never gave staging back its group and mode: a rollout did (0700, root)
    os.chmod(staging, 0o700)
    staging_before = os.stat(staging)
    assert staging_before.st_mode & 0o777 == 0o700                # as runs make it: postgres cannot enter
    capsys.readouterr()

    assert pbx.sar("drill", "nightly") == 0
    out = capsys.readouterr().out
    assert out.startswith("OK nightly: restore drill from target 0"), out
    assert "database isolation: a private temporary PostgreSQL cluster" in out
    drill = status(pbx)["last_drill"]
    assert drill["code"] == "successful" and drill["isolation"] == "private_cluster"
    assert drill["checks"]["tables"] == len(sample.CORE_TABLES) + len(sample.CDR_TABLES)
    assert all(t["ok"] and t["rows"] == t["recorded"] for t in drill["tables"])
    assert {t["table"]: t["rows"] for t in drill["tables"]}["public.users"] == 40
    assert pbx.snapshot() == live                               # the live database and trees byte for byte
    assert databases(pbx.cluster) == before == []               # nothing created on the live server
    assert left_pid not in postmasters_under(staging)            # the killed drill's server is stopped ...
    assert not os.path.exists(killed) and [n for n in os.listdir(staging) if n.startswith(".drill")] == []
    assert postmasters_under(staging) == []                     # ... and its own is stopped too
    after = os.stat(staging)                                    # staging's group and mode are given back
    assert (after.st_mode, after.st_gid, after.st_uid) == (staging_before.st_mode, staging_before.st_gid,
                                                           staging_before.st_uid)

    # A drill failing in the private cluster (a restore role that does not exist) stops and removes it as well.
    settings = json.loads(json.dumps(pbx.settings))
    settings["profile"]["database"]["restore_role"] = "no_such_role_for_drills"
    pbx.store.write_settings(settings)
    capsys.readouterr()
    assert pbx.sar("drill", "nightly") == 1
    drill = status(pbx)["last_drill"]
    assert drill["code"] != "successful" and drill["isolation"] == "private_cluster"
    assert "no_such_role_for_drills" in drill["error"]
    assert postmasters_under(staging) == [] and [n for n in os.listdir(staging) if n.startswith(".drill")] == []
    assert pbx.snapshot() == live and databases(pbx.cluster) == []


@pytest.mark.parametrize("since", ["untouched", "regrouped"])
def test_a_killed_drills_staging_change_is_given_back_by_the_next_cleanup(pbx, since):
    """A drill killed with its private cluster running never gave staging back its group and mode: the next run,
    restore or drill (clean_staging) stops the server and puts them back, unless staging's group changed since."""
    import shutil
    import tempfile
    from ansible_collections.sar.backup.plugins.module_utils import pgcluster
    from ansible_collections.sar.backup.plugins.module_utils.fsutil import clean_staging
    root = tempfile.mkdtemp(prefix="sar-drill-")
    os.chmod(root, 0o755)
    staging = os.path.join(root, "staging")
    os.mkdir(staging, 0o700)  # as runs make it: the cluster's user (postgres) cannot enter
    killed = os.path.join(staging, ".drill-abcd1234")
    os.mkdir(killed, 0o700)
    try:
        major = pgcluster.server_major(pbx.cluster.psql("SHOW server_version_num").strip())
        pgcluster.PrivateCluster(killed, pgcluster.find_server_binaries(major)).start()  # then "killed": no stop()
        (left_pid,) = postmasters_under(killed)
        changed = os.stat(staging)
        postgres_gid = pwd.getpwnam(pgcluster.CLUSTER_OS_USER).pw_gid
        assert (changed.st_gid, changed.st_mode & 0o777) == (postgres_gid, 0o710)
        if since == "regrouped":  # an admin gave staging a group of their own meanwhile: it stays
            os.chown(staging, 0, 4)
            os.chmod(staging, 0o750)
        said = []
        assert clean_staging(staging, log=said.append) == [killed]
        assert left_pid not in postmasters_under(root) and not os.path.exists(killed)
        after = os.stat(staging)
        if since == "untouched":
            assert (after.st_uid, after.st_gid, after.st_mode & 0o7777) == (0, 0, 0o700)
            assert any("gave %s back its group 0 and mode 0700" % staging in line for line in said), said
        else:
            assert (after.st_uid, after.st_gid, after.st_mode & 0o7777) == (0, 4, 0o750)
            assert not [line for line in said if "gave" in line], said
    finally:
        for pid in postmasters_under(root):
            os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)


def test_private_cluster_needs_the_servers_own_version():
    """No server programs of the live server's major version: a clear error naming what is missing."""
    from ansible_collections.sar.backup.plugins.module_utils import pgcluster
    from ansible_collections.sar.backup.plugins.module_utils.errors import SourceError
    assert pgcluster.server_major("150010") == "15" and pgcluster.server_major("90624") == "9.6"
    with pytest.raises(SourceError) as caught:
        pgcluster.find_server_binaries("99")
    msg = str(caught.value)
    assert "PostgreSQL 99 server programs (initdb, pg_ctl, postgres) were not found" in msg
    assert "/usr/lib/postgresql/99/bin (no initdb, pg_ctl, postgres)" in msg and "postgresql-99" in msg
    assert caught.value.code == "sourceFailed"


def test_private_cluster_refuses_a_staging_dir_its_user_cannot_reach(pbx, no_createdb, tmp_path, closed_tmp):
    """A root-only folder (0700, like pytest's own tmp) is closed to postgres: the drill fails naming that
    directory, starts nothing, and leaves staging's group and mode as they were. (Not below tmp_path: under
    pytest-xdist its path is too long for the private cluster's socket, a check that comes first.)"""
    drill_job(pbx, tmp_path, targets=[{"type": "local"}])
    settings = json.loads(json.dumps(pbx.settings))
    settings["staging_dir"] = str(closed_tmp / "staging")
    pbx.store.write_settings(settings)
    assert pbx.sar("run", "nightly") == 0
    staging = settings["staging_dir"]
    before = os.stat(staging)
    live = pbx.snapshot()
    assert pbx.sar("drill", "nightly") == 1
    drill = status(pbx)["last_drill"]
    assert drill["code"] == "sourceFailed" and drill["isolation"] == "private_cluster"
    closed = [p for p in [str(closed_tmp)] + [str(d) for d in closed_tmp.parents]
              if not os.stat(p).st_mode & 0o001][0]   # the first directory above staging postgres cannot search
    assert "cannot search %s" % closed in drill["error"] and "'postgres'" in drill["error"], drill["error"]
    after = os.stat(staging)
    assert (after.st_mode, after.st_gid) == (before.st_mode, before.st_gid)
    assert postmasters_under(staging) == [] and [n for n in os.listdir(staging) if n.startswith(".drill")] == []
    assert pbx.snapshot() == live and databases(pbx.cluster) == []
