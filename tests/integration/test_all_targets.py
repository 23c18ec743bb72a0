# SPDX-License-Identifier: GPL-3.0-or-later
"""One job with every target type at once (seed step 3: locations written in
parallel), through real playbooks: each target gets the same verified archive,
and one failing target neither stops the others nor hides: the run fails and
names it."""

from __future__ import annotations

import hashlib
import os

import pytest

from harness import smbd as smbd_harness
from harness.dropbox_emulator import DropboxEmulator
from harness.playbook import run_playbook
from harness.smtp import SmtpServer
from harness.sshd import SshServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("all-targets")
    started = []
    try:
        sshd = SshServer().start()
        started.append(sshd)
        smbd = smbd_harness.SmbServer().start()
        started.append(smbd)
        os.makedirs(str(base / "dropbox"), exist_ok=True)
        emu = DropboxEmulator(str(base / "dropbox")).start()
        started.append(emu)
        os.makedirs(str(base / "smtp"), exist_ok=True)
        smtp = SmtpServer(str(base / "smtp"), mode="starttls").start()
        started.append(smtp)
        yield {"sshd": sshd, "smbd": smbd, "dropbox": emu, "smtp": smtp}
    finally:
        for server in reversed(started):
            server.stop()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_one_job_all_targets_one_failing(servers, appliance, tmp_path):
    sshd, smbd, emu, smtp = servers["sshd"], servers["smbd"], servers["dropbox"], servers["smtp"]
    config_dir = str(tmp_path / "etc")
    settings = {
        "config_dir": config_dir,
        "profile": appliance.profile,
        "smtp": smtp.settings(),
        "archive_dir": str(tmp_path / "archives"),
        "staging_dir": str(tmp_path / "staging"),
        "status_dir": str(tmp_path / "status"),
        "lock_path": str(tmp_path / "sar-backup.lock"),
    }
    secrets = {"v_sftp": sshd.password, "v_smb": smbd.password, "v_dbx": emu.refresh_token,
               "v_dbx_secret": emu.app_secret}
    targets = [
        {"type": "local", "verify": "full"},
        {"type": "sftp", "server": "127.0.0.1", "port": sshd.port, "username": sshd.user, "password": "{{ v_sftp }}",
         "host_key": sshd.host_key_line(), "verify": "full"},
        {"type": "smb", "server": "127.0.0.1", "port": smbd.port, "share": "secure/pbx/site1", "username": smbd.user,
         "password": "{{ v_smb }}", "verify": "full"},
        {"type": "dropbox", "app_key": emu.app_key, "app_secret": "{{ v_dbx_secret }}", "refresh_token": "{{ v_dbx }}",
         "path": "/backups", "verify": "full"},
        {"type": "email", "to": ["ops@example.com"], "max_size": "20MB"},
        {"type": "smb", "server": "127.0.0.1", "port": smbd.port, "share": "share", "username": smbd.user,
         "password": "wrong-{{ v_smb }}"},
    ]
    job = {"name": "everywhere", "data": ["core", "announcements"], "targets": targets, "config_dir": config_dir}
    tasks = [{"name": "settings", "sar.backup.sar_backup_settings": settings},
             {"name": "job", "sar.backup.sar_backup_job": job},
             {"name": "run", "sar.backup.sar_backup_run": {"job": "everywhere", "config_dir": config_dir},
              "ignore_errors": True}]
    run = run_playbook(tasks, str(tmp_path), extravars=secrets, env=emu.env())
    res = run.results()["run"]
    assert res["failed"] is True
    codes = [t["code"] for t in res["targets"]]
    assert codes == ["successful"] * 5 + ["authFailed"], res["targets"]
    assert res["code"] == "authFailed"
    assert "target 5 (smb" in res["msg"]
    name, digest = res["archive"]["name"], res["archive"]["sha256"]

    # Each location holds the same archive under starface-backup/<job>/.
    with open(os.path.join(settings["archive_dir"], "starface-backup", "everywhere", name), "rb") as handle:
        assert sha256_of(handle.read()) == digest
    with open(os.path.join(sshd.home, "starface-backup", "everywhere", name), "rb") as handle:
        assert sha256_of(handle.read()) == digest
    with open(os.path.join(smbd.share_path("secure"), "pbx", "site1", "starface-backup", "everywhere", name), "rb") as handle:
        assert sha256_of(handle.read()) == digest
    assert sha256_of(emu.read_file("/backups/starface-backup/everywhere/" + name)) == digest
    mails = smtp.messages
    assert len(mails) == 1
    [(filename, payload, _ctype)] = mails[0].attachments()
    assert filename == name and sha256_of(payload) == digest
    # The failing share got nothing, not even a partial.
    assert not os.path.exists(os.path.join(smbd.share_path("share"), "starface-backup"))
    # No secret in what the play printed.
    for secret in secrets.values():
        assert secret not in run.stdout
