# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore (SPEC sections 6 and 9): `sar-backup restore` and
`sar.backup.sar_backup_restore` against a real PostgreSQL database and real file
trees. Each test gets its own appliance (its own database on the session's
cluster, its own trees), backs it up, changes it, restores and compares."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

from harness import appliance as sample
from harness.playbook import run_playbook

from ansible_collections.sar.backup.plugins.module_utils import cli
from ansible_collections.sar.backup.plugins.module_utils.job import validate_job
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings

PASSPHRASE = "restore-passphrase-Qv3"


class Pbx:
    def __init__(self, tmp, cluster):
        self.tmp = tmp
        self.cluster = cluster
        self.root = str(tmp / "appliance")
        self.db = "restore_%s" % uuid.uuid4().hex[:10]
        sample.build_files(self.root)
        sample.build_database(cluster, name=self.db)
        self.profile = sample.make_profile(self.root, cluster, name=self.db)
        self.store = Store(str(tmp / "etc"))
        self.settings = validate_settings({
            "profile": self.profile,
            "archive_dir": str(tmp / "archives"),
            "staging_dir": str(tmp / "staging"),
            "status_dir": str(tmp / "status"),
            "lock_path": str(tmp / "lock" / "sar-backup.lock"),
        })
        self.store.write_settings(self.settings)

    def paths(self, category):
        return self.profile["categories"][category]["paths"]

    def snapshot(self):
        trees = {p: sample.tree_snapshot(p) for cat in sample.CATEGORY_LAYOUT for p in self.paths(cat)}
        return {"db": sample.database_snapshot(self.cluster, db=self.db), "trees": trees}

    def save_job(self, **over):
        raw = {"name": "nightly", "data": ["core", "cdr_voicemail", "announcements"], "targets": [{"type": "local"}]}
        raw.update(over)
        self.store.write_job(validate_job(raw))

    def sar(self, *argv):
        return cli.main(["--config-dir", self.store.config_dir] + list(argv))

    def backup(self, job="nightly"):
        assert self.sar("run", job) == 0
        folder = os.path.join(self.settings["archive_dir"], "starface-backup", job)
        return os.path.join(folder, sorted(os.listdir(folder))[-1])

    def change(self):
        """Later data: new rows in core and CDR tables, changed trees."""
        sample.add_rows(self.cluster, "users", 3, db=self.db)
        sample.add_rows(self.cluster, "cdr", 7, db=self.db)
        sample.change_files(self.root)


@pytest.fixture
def pbx(tmp_path, appliance):
    box = Pbx(tmp_path, appliance.cluster)
    try:
        yield box
    finally:
        appliance.cluster.psql("DROP DATABASE IF EXISTS %s" % box.db)


def test_restore_everything_exactly_as_archived(pbx, capsys):
    # A link out of its tree (as Asterisk's moh -> /usr/share/asterisk/moh) and one inside.
    os.symlink("/usr/share/asterisk/moh", os.path.join(pbx.paths("core")[0], "moh"))
    os.symlink("sip.conf", os.path.join(pbx.paths("core")[0], "sip-link.conf"))
    pbx.save_job()
    path = pbx.backup()
    assert pbx.sar("verify", path) == 0  # a link leaving its tree no longer makes the archive unverifiable
    before = pbx.snapshot()
    pbx.change()
    changed = pbx.snapshot()
    assert changed != before

    # Without --yes nothing happens; --dry-run lists and changes nothing.
    assert pbx.sar("restore", path) == 2
    assert pbx.sar("restore", path, "--dry-run") == 0
    listing = capsys.readouterr().out
    assert "would restore core: postgresql" in listing and "would restore announcements: files" in listing
    assert pbx.snapshot() == changed

    assert pbx.sar("restore", path, "--yes") == 0
    after = pbx.snapshot()
    assert after["db"] == before["db"]
    assert after["trees"] == before["trees"]
    assert os.readlink(os.path.join(pbx.paths("core")[0], "moh")) == "/usr/share/asterisk/moh"
    # Nothing left next to the trees or in staging.
    for cat in sample.CATEGORY_LAYOUT:
        for tree in pbx.paths(cat):
            parent = os.path.dirname(tree)
            assert not [n for n in os.listdir(parent) if ".sar-" in n], parent
    assert os.listdir(pbx.settings["staging_dir"]) == []


def test_restore_one_category_leaves_the_others(pbx):
    pbx.save_job()
    path = pbx.backup()
    before = pbx.snapshot()
    pbx.change()
    changed = pbx.snapshot()
    # What a restore killed half way leaves next to the tree: removed by the next one.
    tree = pbx.paths("cdr_voicemail")[0]
    parent, base = os.path.split(tree)
    stale = [os.path.join(parent, ".%s.sar-restore-ab12cd34" % base), os.path.join(parent, ".%s.sar-old-zz99yy88" % base)]
    for path_ in stale:
        os.makedirs(os.path.join(path_, "INBOX"))
    assert pbx.sar("restore", path, "--data", "cdr_voicemail", "--yes") == 0
    assert not any(os.path.exists(p) for p in stale)
    after = pbx.snapshot()
    for table in sample.CDR_TABLES:
        assert after["db"][table] == before["db"][table]          # later CDR rows gone
    for table in sample.CORE_TABLES:
        assert after["db"][table] == changed["db"][table]         # core untouched
    for tree in pbx.paths("cdr_voicemail"):
        assert after["trees"][tree] == before["trees"][tree]
    for cat in ("core", "announcements"):
        for tree in pbx.paths(cat):
            assert after["trees"][tree] == changed["trees"][tree]


def test_damaged_archive_changes_nothing(pbx, capsys):
    pbx.save_job()
    path = pbx.backup()
    pbx.change()
    changed = pbx.snapshot()
    damaged = str(pbx.tmp / "damaged.sar")
    with open(path, "rb") as src:
        data = bytearray(src.read())
    data[len(data) // 2] ^= 0x40
    with open(damaged, "wb") as out:
        out.write(data)
    assert pbx.sar("restore", damaged, "--yes") == 1
    assert "corrupt" in capsys.readouterr().err
    truncated = str(pbx.tmp / "truncated.sar")
    with open(truncated, "wb") as out:
        out.write(data[: len(data) * 2 // 3])
    assert pbx.sar("restore", truncated, "--yes") == 1
    assert pbx.snapshot() == changed


def test_database_failure_puts_the_trees_back(pbx, capsys):
    pbx.save_job()
    path = pbx.backup()
    pbx.change()
    # Something made after the backup depends on a core table: DROP TABLE users fails,
    # so the database transaction rolls back, and the trees swapped in must go back too.
    pbx.cluster.psql("SET ROLE %s; CREATE VIEW later_users AS SELECT * FROM users" % pbx.cluster.user, db=pbx.db)
    changed = pbx.snapshot()
    assert pbx.sar("restore", path, "--yes") == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert pbx.snapshot() == changed


def test_restore_from_the_jobs_target_encrypted(pbx, tmp_path, capsys):
    pbx.save_job(encryption={"passphrase": PASSPHRASE}, data=["announcements", "core"])
    pbx.backup()
    first = pbx.snapshot()
    pbx.change()
    pbx.backup()  # the latest archive holds the changed state
    latest = pbx.snapshot()
    sample.add_rows(pbx.cluster, "users", 2, db=pbx.db)
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-passphrase\n")
    assert pbx.sar("restore", "--job", "nightly", "--passphrase-file", str(wrong), "--yes") == 1
    pw = tmp_path / "pw"
    pw.write_text(PASSPHRASE + "\n")
    assert pbx.sar("restore", "--job", "nightly", "--passphrase-file", str(pw), "--yes") == 0
    after = pbx.snapshot()
    for table in sample.CORE_TABLES:
        assert after["db"][table] == latest["db"][table]
    assert after["db"]["cdr"] == latest["db"]["cdr"]  # cdr_voicemail was not in the archive: untouched
    assert after["trees"] == latest["trees"]
    # An older one by name.
    folder = os.path.join(pbx.settings["archive_dir"], "starface-backup", "nightly")
    oldest = sorted(os.listdir(folder))[0]
    assert pbx.sar("restore", "--job", "nightly", "--archive", oldest, "--passphrase-file", str(pw),
                   "--data", "core", "--yes") == 0
    assert pbx.snapshot()["db"]["users"] == first["db"]["users"]
    assert pbx.sar("restore", "--job", "nightly", "--archive", "nightly_x_20200101T000000Z.sar",
                   "--passphrase-file", str(pw), "--yes") == 1
    assert "is not on target 0" in capsys.readouterr().err


def test_restore_waits_for_the_maintenance_lock(pbx, capsys):
    pbx.save_job(data=["announcements"])
    path = pbx.backup()
    pbx.change()
    changed = pbx.snapshot()
    lock = pbx.settings["lock_path"]
    code = "import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\ntime.sleep(30)\n"
    holder = subprocess.Popen([sys.executable, "-c", code, lock], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert pbx.sar("restore", path, "--yes") == 1
        assert "maintenance lock" in capsys.readouterr().err
        assert pbx.snapshot() == changed
    finally:
        holder.kill()
        holder.wait()
    assert pbx.sar("restore", path, "--yes") == 0


def test_module_check_mode_restore_and_no_secret(pbx):
    pbx.save_job(encryption={"passphrase": PASSPHRASE})
    pbx.backup()
    before = pbx.snapshot()
    pbx.change()
    changed = pbx.snapshot()
    args = {"config_dir": pbx.store.config_dir, "job": "nightly", "passphrase": PASSPHRASE}
    check_run = run_playbook([{"name": "check", "sar.backup.sar_backup_restore": args, "check_mode": True}],
                             str(pbx.tmp), verbosity=3)
    assert check_run.rc == 0, check_run.stdout[-3000:]
    check = check_run.results()["check"]
    assert check["changed"] is True and check["verified"] is True
    assert check["categories"] == ["core", "cdr_voicemail", "announcements"]
    assert {e["origin"] for e in check["restored"] if e["kind"] == "files"} == \
        {p for cat in sample.CATEGORY_LAYOUT for p in pbx.paths(cat)}
    assert pbx.snapshot() == changed  # check mode changed nothing

    tasks = [
        {"name": "bad", "sar.backup.sar_backup_restore": dict(args, data=["core"], archive="../etc/passwd"),
         "ignore_errors": True},
        {"name": "restore", "sar.backup.sar_backup_restore": args},
    ]
    run = run_playbook(tasks, str(pbx.tmp), verbosity=3)
    res = run.results()
    assert run.rc == 0, run.stdout[-3000:]
    assert res["bad"]["failed"] is True and res["bad"]["field"] == "archive"
    assert res["restore"]["changed"] is True
    assert res["restore"]["archive"]["job"] == "nightly"
    assert res["restore"]["archive"]["from"]["type"] == "local"
    for out in (check_run.stdout, check_run.stderr, run.stdout, run.stderr):
        assert PASSPHRASE not in out
    assert pbx.snapshot() == before


def test_restore_playbook(pbx):
    from harness.playbook import ROOT
    pbx.save_job(data=["core", "announcements"])
    pbx.backup()
    before = pbx.snapshot()
    pbx.change()
    changed = pbx.snapshot()
    # The playbook runs the module with <install_dir>/venv/bin/python, as on an appliance.
    python = pbx.tmp / "install" / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec %s \"$@\"\n" % sys.executable)
    python.chmod(0o755)
    extravars = {"sar_backup_hosts": "localhost", "sar_backup_install_dir": str(pbx.tmp / "install"),
                 "sar_backup_config_dir": pbx.store.config_dir, "job": "nightly", "sar_backup_become": False}
    playbook = os.path.join(ROOT, "playbooks", "restore.yml")
    check = run_playbook(None, str(pbx.tmp), extravars=extravars, check=True, playbook_path=playbook)
    assert check.rc == 0, check.stdout[-3000:]
    assert check.results()["Verify and restore the archive"]["categories"] == ["core", "announcements"]
    assert pbx.snapshot() == changed
    run = run_playbook(None, str(pbx.tmp), extravars=extravars, playbook_path=playbook)
    assert run.rc == 0, run.stdout[-3000:]
    after = pbx.snapshot()
    assert after["trees"] == before["trees"] | {p: changed["trees"][p] for p in pbx.paths("cdr_voicemail")}
    assert after["db"]["users"] == before["db"]["users"] and after["db"]["cdr"] == changed["db"]["cdr"]
    # From a file on the controller (a fetch_to download, say): copied over, restored, removed.
    controller_copy = pbx.tmp / "downloads" / "copy.sar"
    controller_copy.parent.mkdir()
    folder = os.path.join(pbx.settings["archive_dir"], "starface-backup", "nightly")
    shutil.copy(os.path.join(folder, sorted(os.listdir(folder))[-1]), str(controller_copy))
    pbx.change()
    assert pbx.snapshot() != after
    upload_vars = {k: v for k, v in extravars.items() if k != "job"}
    upload_vars["archive_file"] = str(controller_copy)
    uploaded = run_playbook(None, str(pbx.tmp), extravars=upload_vars, playbook_path=playbook)
    assert uploaded.rc == 0, uploaded.stdout[-3000:]
    restored = uploaded.results()["Verify and restore the archive"]
    assert restored["categories"] == ["core", "announcements"]
    temp_dir = uploaded.results()["A private directory on the host for the archive from the controller"]["path"]
    assert not os.path.exists(temp_dir)
    final = pbx.snapshot()
    assert final["trees"] == {**after["trees"], **{p: final["trees"][p] for p in pbx.paths("cdr_voicemail")}}
    assert final["db"]["users"] == before["db"]["users"]
    # Neither job nor path: the play stops before touching anything.
    bad = run_playbook(None, str(pbx.tmp), extravars=dict(extravars, job=None) | {"path": "/x.sar"},
                       playbook_path=playbook)
    assert bad.rc != 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("sshd"), reason="needs root and OpenSSH sshd")
def test_restore_latest_from_an_sftp_target(pbx, capsys):
    from harness.sshd import SshServer
    server = SshServer().start()
    try:
        sftp = {"type": "sftp", "server": "127.0.0.1", "port": server.port, "username": server.user,
                "password": server.password, "host_key": server.host_key_line("ssh-ed25519"), "path": "."}
        pbx.save_job(data=["cdr_voicemail"], targets=[{"type": "local"}, sftp])
        pbx.backup()
        before = pbx.snapshot()
        pbx.change()
        changed = pbx.snapshot()
        # The local copy is gone: only the SFTP server has it now.
        shutil.rmtree(os.path.join(pbx.settings["archive_dir"], "starface-backup"))
        assert pbx.sar("restore", "--job", "nightly", "--target", "0", "--yes") == 1
        assert "no archive of job 'nightly' on target 0" in capsys.readouterr().err
        assert pbx.sar("restore", "--job", "nightly", "--target", "1", "--yes") == 0
        logged = capsys.readouterr()
        assert "downloading nightly_" in logged.err and server.password not in logged.err + logged.out
        after = pbx.snapshot()
        assert after["db"]["cdr"] == before["db"]["cdr"] and after["db"]["users"] == changed["db"]["users"]
        for tree in pbx.paths("cdr_voicemail"):
            assert after["trees"][tree] == before["trees"][tree]
        assert os.listdir(pbx.settings["staging_dir"]) == []  # the download is gone
        assert pbx.sar("restore", "--job", "nightly", "--target", "2", "--yes") == 2  # no such target: usage
    finally:
        server.stop()


def test_restore_with_an_age_identity_and_wrong_categories(pbx, tmp_path, capsys):
    from ansible_collections.sar.backup.plugins.module_utils import agecrypt
    identity, recipient = agecrypt.generate_identity()
    pbx.save_job(data=["announcements"], encryption={"recipients": [recipient]})
    path = pbx.backup()
    before = pbx.snapshot()
    pbx.change()
    changed = pbx.snapshot()
    # Nothing to decrypt with, a category the archive does not hold: refused, nothing changed.
    assert pbx.sar("restore", path, "--yes") == 1
    assert "encrypted" in capsys.readouterr().err
    key_file = tmp_path / "key.txt"
    key_file.write_text("# created: by the test\n# public key: %s\n%s\n" % (recipient, identity))
    assert pbx.sar("restore", path, "--identity", str(key_file), "--data", "core", "--yes") == 2
    assert "data[0]: the archive holds announcements, not 'core'" in capsys.readouterr().err
    assert pbx.snapshot() == changed
    assert pbx.sar("restore", path, "--identity", str(key_file), "--yes") == 0
    after = pbx.snapshot()
    for tree in pbx.paths("announcements"):
        assert after["trees"][tree] == before["trees"][tree]
    assert after["db"] == changed["db"]  # no database part in this archive
