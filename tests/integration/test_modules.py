# SPDX-License-Identifier: GPL-3.0-or-later
"""sar_backup_settings, sar_backup_job and sar_backup_run through real playbooks
on localhost, against a real PostgreSQL cluster and file trees (the sample
appliance the harness builds)."""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest

from harness.playbook import run_adhoc, run_playbook

from ansible_collections.sar.backup.plugins.module_utils import archive as sar_archive

SFTP_SECRET = "sftp-pw-Zx81"
SMB_SECRET = "smb-pw-Kq55"
PASSPHRASE = "archive-passphrase-Wd7"


@pytest.fixture
def env(tmp_path, appliance):
    """Settings vars of a scratch host: config, archives, staging, status, lock in tmp."""
    base = tmp_path
    settings = {
        "config_dir": str(base / "etc"),
        "profile": appliance.profile,
        "archive_dir": str(base / "archives"),
        "staging_dir": str(base / "staging"),
        "status_dir": str(base / "status"),
        "lock_path": str(base / "lock" / "sar-backup.lock"),
    }
    return {"base": base, "settings": settings, "config_dir": settings["config_dir"], "appliance": appliance}


def settings_task(env, name="settings", check=False):
    task = {"name": name, "sar.backup.sar_backup_settings": env["settings"], "register": "r"}
    if check:
        task["check_mode"] = True
    return task


def job_task(env, job, name, check=False, extra=None):
    args = dict(job, config_dir=env["config_dir"])
    if extra:
        args.update(extra)
    task = {"name": name, "sar.backup.sar_backup_job": args}
    if check:
        task["check_mode"] = True
    return task


def run_task(env, name, job=None, definition=None, check=False, ignore_errors=False, **extra):
    args = {"config_dir": env["config_dir"]}
    if job:
        args["job"] = job
    if definition:
        args["definition"] = definition
    args.update(extra)
    task = {"name": name, "sar.backup.sar_backup_run": args}
    if check:
        task["check_mode"] = True
    if ignore_errors:
        task["ignore_errors"] = True
    return task


def local_job(name="nightly", keep=7, data=("core", "cdr_voicemail", "announcements"), **extra):
    job = {"name": name, "data": list(data), "targets": [{"type": "local", "keep": keep, "verify": "full"}]}
    job.update(extra)
    return job


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def test_settings_check_apply_check_apply(env):
    run = run_playbook([settings_task(env, "c1", True), settings_task(env, "a1"),
                        settings_task(env, "c2", True), settings_task(env, "a2")], str(env["base"]))
    assert run.rc == 0, run.stdout + run.stderr
    res = run.results()
    assert [res[n]["changed"] for n in ("c1", "a1", "c2", "a2")] == [True, True, False, False]
    path = os.path.join(env["config_dir"], "settings.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(env["config_dir"]).st_mode) == 0o700
    saved = json.load(open(path))
    assert saved["staging_dir"] == env["settings"]["staging_dir"]
    assert saved["profile"]["database"]["name"] == env["appliance"].profile["database"]["name"]


def test_job_check_apply_check_apply_and_diff(env):
    job = {"name": "weekly", "interval": "weekly", "start": "2026-12-02 03:15", "data": ["core"],
           "report_to": ["ops@example.com"], "encryption": {"passphrase": PASSPHRASE},
           "targets": [{"type": "local"},
                       {"type": "sftp", "server": "127.0.0.1", "username": "pbx", "password": SFTP_SECRET,
                        "host_key_policy": "accept_new", "keep": 3}]}
    changed_job = dict(job, targets=[job["targets"][0], dict(job["targets"][1], password=SFTP_SECRET + "x")])
    run = run_playbook([job_task(env, job, "c1", True), job_task(env, job, "a1"),
                        job_task(env, job, "c2", True), job_task(env, job, "a2"),
                        job_task(env, changed_job, "change-secret")],
                       str(env["base"]), diff=True)
    assert run.rc == 0, run.stdout + run.stderr
    res = run.results()
    assert [res[n]["changed"] for n in ("c1", "a1", "c2", "a2")] == [True, True, False, False]
    assert res["change-secret"]["changed"] is True
    assert res["change-secret"]["diff"]["after"]["targets"][1]["password"] == "<secret changed>"
    assert res["a2"]["diff"]["after"]["targets"][1]["password"] == "<secret unchanged>"
    assert res["a1"]["job"]["targets"][1]["password"] == "********"
    assert res["a1"]["job"]["targets"][1]["port"] == 22  # type default filled in
    assert res["a1"]["schedule"]["on_calendar"] == ["Wed *-*-* 03:15:00"]
    assert len(res["a1"]["schedule"]["next_runs"]) == 3
    path = os.path.join(env["config_dir"], "jobs", "weekly.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SFTP_SECRET not in run.stdout and PASSPHRASE not in run.stdout


def test_job_absent_and_clash_warning(env):
    a = {"name": "a", "interval": "daily", "start": "2026-12-01 02:00", "targets": [{"type": "local"}]}
    b = {"name": "b", "interval": "hourly", "start": "2026-12-01 05:00", "targets": [{"type": "local"}]}
    run = run_playbook([job_task(env, a, "a"), job_task(env, b, "b"),
                        job_task(env, {"name": "a", "state": "absent"}, "rm"),
                        job_task(env, {"name": "a", "state": "absent"}, "rm-again")], str(env["base"]))
    assert run.rc == 0, run.stdout
    res = run.results()
    assert any("same minute" in w or "both start" in w for w in res["b"].get("warnings", [])), res["b"]
    assert res["rm"]["changed"] is True and res["rm-again"]["changed"] is False
    assert not os.path.exists(os.path.join(env["config_dir"], "jobs", "a.json"))


def test_run_archive_matches_sources(env, appliance, tmp_path):
    run = run_playbook([settings_task(env), job_task(env, local_job(), "job"),
                        run_task(env, "run", job="nightly")], str(env["base"]))
    assert run.rc == 0, run.stdout + run.stderr
    res = run.results()["run"]
    assert res["code"] == "successful" and res["changed"] is True
    arch = res["archive"]
    assert arch["path"] and os.path.isfile(arch["path"])
    assert arch["path"].startswith(env["settings"]["archive_dir"] + "/starface-backup/nightly/")
    assert sha256_file(arch["path"]) == arch["sha256"] and os.path.getsize(arch["path"]) == arch["size"]
    assert res["targets"][0]["status"] == "ok" and res["targets"][0]["code"] == "successful"
    # Status file for monitoring.
    status = json.load(open(os.path.join(env["settings"]["status_dir"], "nightly.json")))
    assert status["code"] == "successful" and status["archive"]["sha256"] == arch["sha256"]
    # Nothing left in staging.
    assert os.listdir(env["settings"]["staging_dir"]) == []

    info = sar_archive.verify(arch["path"])
    manifest = info["manifest"]
    assert manifest["job"] == "nightly" and manifest["categories"] == ["core", "cdr_voicemail", "announcements"]
    out = tmp_path / "extract"
    out.mkdir()
    sar_archive.extract(arch["path"], str(out))
    # Database: restore each dump into a fresh database and compare rows table by table.
    for src in manifest["sources"]:
        if src["kind"] == "postgresql":
            db = "restored_%s_%d" % (src["category"], os.getpid())
            appliance.create_database(db)
            appliance.restore_dump(str(out / src["member"]), db)
            for table in appliance.tables_of(src["category"]):
                assert appliance.table_rows(table, db) == appliance.table_rows(table), table
        else:
            cmp = filecmp.dircmp(src["origin"], str(out / src["member"]))
            _assert_same_tree(cmp)


def _assert_same_tree(cmp):
    assert not cmp.left_only and not cmp.right_only and not cmp.funny_files, (cmp.left, cmp.left_only, cmp.right_only)
    _match, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
    assert not mismatch and not errors, (cmp.left, mismatch, errors)
    for sub in cmp.subdirs.values():
        _assert_same_tree(sub)


def test_fetch_to_and_retention(env):
    fetch = env["base"] / "controller"
    tasks = [settings_task(env), job_task(env, local_job(keep=2, data=["announcements"]), "job")]
    for i in range(3):
        tasks.append(run_task(env, "run%d" % i, job="nightly"))
        tasks.append({"name": "pause%d" % i, "ansible.builtin.pause": {"seconds": 1}})
    tasks.append(run_task(env, "fetch", job="nightly", fetch_to=str(fetch)))
    run = run_playbook(tasks, str(env["base"]))
    assert run.rc == 0, run.stdout + run.stderr
    res = run.results()
    folder = os.path.join(env["settings"]["archive_dir"], "starface-backup", "nightly")
    left = sorted(os.listdir(folder))
    assert len(left) == 2 and all(n.endswith(".sar") for n in left)
    assert res["fetch"]["archive"]["name"] in left
    assert res["fetch"]["targets"][0]["pruned"]  # the older ones went
    fetched = res["fetch"]["fetched_path"]
    assert fetched == str(fetch / "localhost" / res["fetch"]["archive"]["name"])
    assert sha256_file(fetched) == res["fetch"]["archive"]["sha256"]


def test_fetch_to_without_local_target_removes_staging_copy(env):
    definition = {"name": "usbless", "data": ["announcements"],
                  "targets": [{"type": "email", "to": ["ops@example.com"], "max_size": 1}]}
    # The e-mail target refuses (mailtobig) -> the run fails and nothing is fetched.
    run = run_playbook([settings_task(env), run_task(env, "run", definition=definition, ignore_errors=True,
                                                     fetch_to=str(env["base"] / "ctl"))], str(env["base"]))
    res = run.results()["run"]
    assert res["failed"] and res["targets"][0]["code"] == "mailtobig"
    assert not (env["base"] / "ctl" / "localhost").exists() or not os.listdir(env["base"] / "ctl" / "localhost")
    staging = env["settings"]["staging_dir"]
    assert not any(n.endswith(".sar") for n in os.listdir(staging))


def _hold_lock(path, seconds):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    code = ("import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.flock(f,fcntl.LOCK_EX)\n"
            "print('locked',flush=True)\ntime.sleep(float(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, path, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_run_while_lock_held(env):
    setup = run_playbook([settings_task(env), job_task(env, local_job(data=["announcements"]), "job")], str(env["base"]))
    assert setup.rc == 0, setup.stdout
    holder = _hold_lock(env["settings"]["lock_path"], 600)
    try:
        run = run_playbook([run_task(env, "run", job="nightly", ignore_errors=True)], str(env["base"]))
    finally:
        holder.kill()
        holder.wait()
    res = run.results()["run"]
    assert res["failed"] is True and res["code"] == "alreadyRunning"
    assert "maintenance lock" in res["msg"]
    status = json.load(open(os.path.join(env["settings"]["status_dir"], "nightly.json")))
    assert status["code"] == "alreadyRunning" and status["success"] is False
    assert not os.path.exists(os.path.join(env["settings"]["archive_dir"], "starface-backup", "nightly"))

    # With wait, the run goes ahead once the holder lets go.
    holder = _hold_lock(env["settings"]["lock_path"], 3)
    try:
        run = run_playbook([run_task(env, "run", job="nightly", wait="2m")], str(env["base"]))
    finally:
        holder.wait()
    assert run.rc == 0, run.stdout
    assert run.results()["run"]["code"] == "successful"


def test_check_mode_is_a_dry_run(env):
    run = run_playbook([settings_task(env), job_task(env, local_job(), "job"),
                        run_task(env, "dry", job="nightly", check=True)], str(env["base"]))
    assert run.rc == 0, run.stdout
    res = run.results()["dry"]
    assert res["code"] == "successful" and res["estimated_size"] > 0
    assert res["targets"][0]["status"] == "ok"
    assert not os.path.exists(os.path.join(env["settings"]["archive_dir"], "starface-backup"))
    assert not os.path.exists(os.path.join(env["settings"]["status_dir"], "nightly.json"))


def test_adhoc_run(env):
    setup = run_playbook([settings_task(env), job_task(env, local_job(data=["core"]), "job")], str(env["base"]))
    assert setup.rc == 0, setup.stdout
    proc = run_adhoc("sar.backup.sar_backup_run", "job=nightly config_dir=%s" % env["config_dir"], str(env["base"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "successful" in proc.stdout


BAD_JOBS = [
    ({"name": "bad name!"}, "name"),
    ({"name": "-leading-dash"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"data": ["core", "voicemail"]}, "data"),
    ({"data": []}, "data"),
    ({"interval": "daily"}, "start"),
    ({"interval": "daily", "start": "02:00"}, "start"),
    ({"interval": "weekly", "start": "2026-13-01 02:00"}, "start"),
    ({"interval": "dayly", "start": "2026-12-01 02:00"}, "interval"),
    ({"report_on": "sometimes"}, "report_on"),
    ({"report_to": ["not-an-address"]}, "report_to"),
    ({"targets": []}, "targets"),
    ({"targets": [{"type": "ftp"}]}, "type"),
    ({"targets": [{"type": "local", "keep": -1}]}, "keep"),
    ({"targets": [{"type": "local", "path": "relative/dir"}]}, "path"),
    ({"targets": [{"type": "local", "server": "x"}]}, "server"),
    ({"targets": [{"type": "smb", "share": "s", "username": "u", "password": "pw-bad-input"}]}, "server"),
    ({"targets": [{"type": "smb", "server": "h", "username": "u", "password": "pw-bad-input"}]}, "share"),
    ({"targets": [{"type": "smb", "server": "smb://h", "share": "s", "username": "u", "password": "pw-bad-input"}]}, "server"),
    ({"targets": [{"type": "smb", "server": "h", "share": "s/../x", "username": "u", "password": "pw-bad-input"}]}, "share"),
    ({"targets": [{"type": "sftp", "server": "h", "username": "u"}]}, "password"),
    ({"targets": [{"type": "sftp", "server": "h", "username": "u", "password": "pw-bad-input",
                   "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"}]}, "password"),
    ({"targets": [{"type": "sftp", "server": "h", "username": "u", "password": "pw-bad-input", "port": 70000}]}, "port"),
    ({"targets": [{"type": "sftp", "server": "h", "username": "u", "password": "pw-bad-input", "path": "rel"}]}, "path"),
    ({"targets": [{"type": "sftp", "server": "h", "username": "u", "password": "pw-bad-input", "host_key": "nonsense"}]}, "host_key"),
    ({"targets": [{"type": "dropbox", "refresh_token": "t"}]}, "app_key"),
    ({"targets": [{"type": "dropbox"}]}, "refresh_token"),
    ({"targets": [{"type": "usb", "label": "A", "uuid": "B"}]}, "uuid"),
    ({"targets": [{"type": "email"}]}, "to"),
    ({"targets": [{"type": "email", "to": ["ops@example.com"], "max_size": "20 parsecs"}]}, "max_size"),
    ({"targets": [{"type": "local", "verify": "maybe"}]}, "verify"),
    ({"compression": "bzip2"}, "compression"),
    ({"encryption": {"passphrase": "short"}}, "passphrase"),
    ({"encryption": {"recipients": ["ssh-rsa AAAA"]}}, "recipients"),
    ({"defer": "soon"}, "defer"),
    ({"retries": -2}, "retries"),
]


def test_bad_input_names_the_field_and_writes_nothing(env):
    tasks = []
    for i, (override, _field) in enumerate(BAD_JOBS):
        job = {"name": "good", "targets": [{"type": "local"}]}
        job.update(override)
        task = job_task(env, job, "bad%d" % i)
        task["ignore_errors"] = True
        tasks.append(task)
    run = run_playbook(tasks, str(env["base"]))
    res = run.results()
    assert len(BAD_JOBS) >= 25
    for i, (override, field) in enumerate(BAD_JOBS):
        result = res["bad%d" % i]
        assert result.get("failed") is True, (override, result)
        assert field in result["msg"], (override, field, result["msg"])
        assert "changed" not in result or result["changed"] is False
    jobs_dir = os.path.join(env["config_dir"], "jobs")
    assert not os.path.isdir(jobs_dir) or os.listdir(jobs_dir) == []


def test_no_secret_in_verbose_diff_output_or_status(env):
    settings = dict(env["settings"])
    settings["profile"] = json.loads(json.dumps(env["appliance"].profile))
    settings["smtp"] = {"host": "127.0.0.1", "port": 1, "username": "relay", "password": SMB_SECRET + "smtp"}
    job = {"name": "secretive", "data": ["announcements"], "encryption": {"passphrase": PASSPHRASE},
           "targets": [{"type": "local"},
                       {"type": "sftp", "server": "127.0.0.1", "port": 1, "username": "u", "password": SFTP_SECRET},
                       {"type": "smb", "server": "127.0.0.1", "port": 1, "share": "s", "username": "u",
                        "password": SMB_SECRET}]}
    # As in real playbooks, the secrets come from (vault) variables, not the playbook text.
    secret_vars = {"v_sftp": SFTP_SECRET, "v_smb": SMB_SECRET, "v_pass": PASSPHRASE, "v_smtp": SMB_SECRET + "smtp"}
    settings["smtp"]["password"] = "{{ v_smtp }}"
    job["encryption"]["passphrase"] = "{{ v_pass }}"
    job["targets"][1]["password"] = "{{ v_sftp }}"
    job["targets"][2]["password"] = "{{ v_smb }}"
    tasks = [{"name": "settings", "sar.backup.sar_backup_settings": settings},
             job_task(env, job, "job"),
             run_task(env, "run", job="secretive", ignore_errors=True),
             run_task(env, "inline", definition=dict(job, name="inline"), ignore_errors=True)]
    run = run_playbook(tasks, str(env["base"]), extravars=secret_vars, verbosity=3, diff=True, json_out=False)
    text = run.stdout + run.stderr
    assert "secretive" in text  # the output is there
    status_text = ""
    for name in os.listdir(env["settings"]["status_dir"]):
        status_text += open(os.path.join(env["settings"]["status_dir"], name)).read()
    assert "secretive" in status_text
    secrets = [SFTP_SECRET, SMB_SECRET, PASSPHRASE, SMB_SECRET + "smtp"]
    if env["appliance"].profile["database"].get("password"):
        secrets.append(env["appliance"].profile["database"]["password"])
    for secret in secrets:
        assert secret not in text
        assert secret not in status_text


def test_async_run_and_fetch_to_refused_with_async(env):
    tasks = [settings_task(env), job_task(env, local_job(data=["announcements"]), "job"),
             dict(run_task(env, "async-run", job="nightly"), **{"async": 120, "poll": 1}),
             dict(run_task(env, "async-fetch", job="nightly", fetch_to=str(env["base"] / "ctl"), ignore_errors=True),
                  **{"async": 120, "poll": 1})]
    run = run_playbook(tasks, str(env["base"]))
    res = run.results()
    assert res["async-run"].get("failed") is not True, res["async-run"]
    assert res["async-run"]["code"] == "successful" and res["async-run"]["archive"]["name"].endswith(".sar")
    assert res["async-fetch"]["failed"] is True and "async" in res["async-fetch"]["msg"]
