# SPDX-License-Identifier: GPL-3.0-or-later
"""sar_backup_info through real playbooks on localhost: jobs (masked), schedule,
last run from the status file, archives on real targets (the appliance's disk,
a real sshd), targets that cannot be reached or lack their library, bad
names, invalid job files, check mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from harness.playbook import run_playbook
from harness.proc import free_port
from harness.sshd import SshServer

SFTP_SECRET = "sftp-pw-Info-Qm41"
SMB_SECRET = "smb-pw-Info-Lp92"
PASSPHRASE = "archive-passphrase-Info-Hx3"


# -- helpers ------------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path, appliance):
    """A scratch host: config, archives, staging, status and lock under tmp."""
    settings = {
        "config_dir": str(tmp_path / "etc"),
        "profile": appliance.profile,
        "archive_dir": str(tmp_path / "archives"),
        "staging_dir": str(tmp_path / "staging"),
        "status_dir": str(tmp_path / "status"),
        "lock_path": str(tmp_path / "lock" / "sar-backup.lock"),
    }
    return {"base": tmp_path, "settings": settings, "config_dir": settings["config_dir"]}


def settings_task(env):
    return {"name": "settings", "sar.backup.sar_backup_settings": env["settings"]}


def job_task(env, job, name=None):
    return {"name": name or "job " + job["name"], "sar.backup.sar_backup_job": dict(job, config_dir=env["config_dir"])}


def run_task(env, job, name, ignore_errors=False):
    task = {"name": name, "sar.backup.sar_backup_run": {"job": job, "config_dir": env["config_dir"]}}
    if ignore_errors:
        task["ignore_errors"] = True
    return task


def info_task(env, title, check=False, ignore_errors=False, **args):
    task = {"name": title, "sar.backup.sar_backup_info": dict(args, config_dir=env["config_dir"])}
    if check:
        task["check_mode"] = True
    if ignore_errors:
        task["ignore_errors"] = True
    return task


def pause(name):
    # Archive names carry the time to the second: two runs need distinct seconds.
    return {"name": name, "ansible.builtin.pause": {"seconds": 1}}


def play(env, tasks, **kwargs):
    run = run_playbook(tasks, str(env["base"]), **kwargs)
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    return run.results()


def status_of(env, job):
    with open(os.path.join(env["settings"]["status_dir"], job + ".json"), encoding="utf-8") as handle:
        return json.load(handle)


def by_name(jobs):
    return {j["name"]: j for j in jobs}


def closed_port() -> int:
    return free_port()  # nothing listens there: connection refused


def local_job(name, **extra):
    job = {"name": name, "data": ["announcements"], "targets": [{"type": "local"}]}
    job.update(extra)
    return job


def tree_state(*roots):
    """Every file and directory under roots with size, mode and mtime (to prove nothing changed)."""
    state = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                state[path] = (st.st_size, st.st_mode, st.st_mtime_ns)
    return state


# -- jobs -----------------------------------------------------------------------------------
def test_jobs_masked_schedule_and_last_run(env):
    secret_job = {
        "name": "weekly", "interval": "weekly", "start": "2030-01-02 03:15", "data": ["core"],
        "encryption": {"passphrase": "{{ v_pass }}"},
        "targets": [{"type": "local"},
                    {"type": "sftp", "server": "127.0.0.1", "port": closed_port(), "username": "pbx",
                     "password": "{{ v_sftp }}", "host_key_policy": "accept_new"},
                    {"type": "smb", "server": "127.0.0.1", "port": closed_port(), "share": "backup/pbx",
                     "username": "EXAMPLE\\backup", "password": "{{ v_smb }}"}]}
    secret_vars = {"v_sftp": SFTP_SECRET, "v_smb": SMB_SECRET, "v_pass": PASSPHRASE}
    play(env, [settings_task(env), job_task(env, secret_job), job_task(env, local_job("adhoc"))],
         extravars=secret_vars)

    res = play(env, [info_task(env, "before"), run_task(env, "adhoc", "run"), info_task(env, "after", name=["adhoc"])])
    before = res["before"]
    assert before["changed"] is False and "archives" not in before and "unreachable_targets" not in before
    assert [j["name"] for j in before["jobs"]] == ["adhoc", "weekly"]  # sorted by name
    weekly = by_name(before["jobs"])["weekly"]
    assert weekly["job"]["encryption"]["passphrase"] == "********"
    assert weekly["job"]["targets"][1]["password"] == "********"
    assert weekly["job"]["targets"][2]["password"] == "********"
    assert weekly["job"]["targets"][1]["port"] > 0 and weekly["job"]["targets"][0]["keep"] == 7  # normalized
    assert weekly["schedule"]["on_calendar"] == ["Wed *-*-* 03:15:00"]
    runs = weekly["schedule"]["next_runs"]
    assert [r[:16] for r in runs] == ["2030-01-02T03:15", "2030-01-09T03:15", "2030-01-16T03:15"]
    assert all(r[-6] in "+-" and r[-3] == ":" for r in runs)  # ISO 8601 with UTC offset
    assert weekly["last_run"] is None and "error" not in weekly
    adhoc = by_name(before["jobs"])["adhoc"]
    assert adhoc["last_run"] is None
    assert adhoc["schedule"] == {"on_calendar": [], "next_runs": [],  # manual, no drill
                                 "drill": {"on_calendar": [], "next_runs": []}}

    assert res["run"]["code"] == "successful"
    after = res["after"]["jobs"]
    assert [j["name"] for j in after] == ["adhoc"]
    assert after[0]["last_run"] == status_of(env, "adhoc")
    assert after[0]["last_run"]["code"] == "successful"
    assert after[0]["last_run"]["archive"]["name"] == res["run"]["archive"]["name"]

    # The secrets appear nowhere, even at -vvv with archives listed (the unreachable
    # sftp/smb targets put their own messages in the output too).
    verbose = run_playbook([info_task(env, "verbose", archives=True)], str(env["base"]), verbosity=3,
                           json_out=False)
    text = verbose.stdout + verbose.stderr
    assert verbose.rc == 0, text[-6000:]
    assert "weekly" in text and "********" in text and "unreachable_targets" in text  # the result was printed
    for secret in (SFTP_SECRET, SMB_SECRET, PASSPHRASE):
        assert secret not in text


def test_unknown_or_bad_name_fails_naming_the_field(env):
    res = play(env, [settings_task(env), job_task(env, local_job("real")),
                     info_task(env, "nope", name=["nope"], ignore_errors=True),
                     info_task(env, "mixed", name=["real", "nope"], archives=True, ignore_errors=True),
                     info_task(env, "sneaky", name=["../settings"], ignore_errors=True),
                     info_task(env, "ok", name=["real", "real"]),
                     info_task(env, "empty", name=[])])
    for task in ("nope", "mixed"):
        assert res[task]["failed"] is True and res[task]["field"] == "name", res[task]
        assert "nope" in res[task]["msg"] and "real" in res[task]["msg"]  # names the saved jobs too
        assert res[task]["changed"] is False
    assert res["sneaky"]["failed"] is True and res["sneaky"]["field"] == "name"
    assert "jobs" not in res["sneaky"]  # nothing read from outside jobs/
    assert [j["name"] for j in res["ok"]["jobs"]] == ["real"]  # duplicates once
    assert [j["name"] for j in res["empty"]["jobs"]] == ["real"]  # an empty list restricts nothing


def test_invalid_job_file_does_not_hide_the_others(env):
    play(env, [settings_task(env), job_task(env, local_job("good"))])
    jobs_dir = os.path.join(env["config_dir"], "jobs")
    with open(os.path.join(jobs_dir, "good.json"), encoding="utf-8") as handle:
        broken = json.load(handle)
    broken.update(name="edited", interval="dayly")
    broken["targets"][0]["password"] = "hand-edited-secret-Vb7"  # not an option of local: also invalid
    with open(os.path.join(jobs_dir, "edited.json"), "w", encoding="utf-8") as handle:
        json.dump(broken, handle)
    with open(os.path.join(jobs_dir, "garbage.json"), "w", encoding="utf-8") as handle:
        handle.write("{not json")
    run = run_playbook([info_task(env, "info", archives=True)], str(env["base"]))
    assert run.rc == 0, run.stdout
    res = run.results()["info"]
    jobs = by_name(res["jobs"])
    assert sorted(jobs) == ["edited", "garbage", "good"]
    assert jobs["good"]["job"]["name"] == "good" and "error" not in jobs["good"]
    for name in ("edited", "garbage"):
        assert jobs[name]["job"] is None and jobs[name]["schedule"] is None, jobs[name]
        assert name + ".json" in jobs[name]["error"]
        assert any(name in w for w in res["warnings"]), res["warnings"]
    assert "interval" in jobs["edited"]["error"]
    assert res["unreachable_targets"] == [] and res["archives"] == []
    assert "hand-edited-secret-Vb7" not in run.stdout


# -- archives -------------------------------------------------------------------------------
def test_archives_of_local_target_newest_first(env):
    job = local_job("twice", targets=[{"type": "local", "keep": 5},
                                      {"type": "email", "to": ["ops@example.com"]}])
    other = local_job("other")
    res = play(env, [settings_task(env), job_task(env, job), job_task(env, other),
                     info_task(env, "empty", archives=True),
                     run_task(env, "twice", "run1", ignore_errors=True), pause("p1"),
                     run_task(env, "twice", "run2", ignore_errors=True), pause("p2"),
                     run_task(env, "other", "run3"),
                     info_task(env, "all", archives=True),
                     info_task(env, "one", archives=True, name=["twice"])])
    assert res["empty"]["archives"] == [] and res["empty"]["unreachable_targets"] == []
    runs = [res["run1"], res["run2"], res["run3"]]
    # No SMTP relay: the email target fails, the local one has the archive.
    assert [r["targets"][0]["code"] for r in runs] == ["successful"] * 3
    assert runs[0]["targets"][1]["code"] == "connectFailed"

    archives = res["all"]["archives"]
    assert [a["name"] for a in archives] == [r["archive"]["name"] for r in reversed(runs)]  # newest first
    for entry, run in zip(archives, reversed(runs)):
        path = os.path.join(env["settings"]["archive_dir"], "starface-backup", entry["job"], entry["name"])
        assert entry["size"] == run["archive"]["size"] == os.path.getsize(path)
        assert entry["created"] == run["archive"]["created"]
        assert entry["target"] == 0 and entry["type"] == "local"
        assert entry["location"] == env["settings"]["archive_dir"]
    assert [a["job"] for a in archives] == ["other", "twice", "twice"]
    # The email target has nothing to list, and that is not a failure.
    assert res["all"]["unreachable_targets"] == [] and not res["all"].get("warnings")
    assert [a["name"] for a in res["one"]["archives"]] == [runs[1]["archive"]["name"], runs[0]["archive"]["name"]]


def test_unreachable_target_reported_module_succeeds(env):
    port = closed_port()
    job = {"name": "halfway", "data": ["announcements"],
           "targets": [{"type": "local"},
                       {"type": "sftp", "server": "127.0.0.1", "port": port, "username": "pbx",
                        "password": "{{ v_sftp }}", "host_key_policy": "accept_new"}]}
    res = play(env, [settings_task(env), job_task(env, job), run_task(env, "halfway", "run", ignore_errors=True),
                     info_task(env, "info", archives=True)], extravars={"v_sftp": SFTP_SECRET})
    run = res["run"]
    assert run["failed"] is True and run["targets"][1]["code"] == "connectFailed"
    info = res["info"]
    assert info.get("failed") is not True and info["changed"] is False
    [unreachable] = info["unreachable_targets"]
    assert unreachable["job"] == "halfway" and unreachable["target"] == 1 and unreachable["type"] == "sftp"
    assert unreachable["code"] == "connectFailed"
    assert unreachable["location"] == "127.0.0.1:."
    assert "127.0.0.1:%d" % port in unreachable["error"]
    assert any("halfway" in w and "connectFailed" in w for w in info["warnings"]), info["warnings"]
    # The local target still lists the archive the failed run left there.
    assert [a["name"] for a in info["archives"]] == [run["archive"]["name"]]
    assert not os.path.exists(os.path.join(env["config_dir"], "known_hosts"))  # nobody answered


def _python_without_paramiko():
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        return None
    probe = subprocess.run([python, "-c", "import paramiko"], capture_output=True, check=False)
    return python if probe.returncode != 0 else None


@pytest.mark.skipif(_python_without_paramiko() is None, reason="needs /usr/bin/python3 without paramiko")
def test_missing_library_reported_per_target_in_ansible_wording(env):
    job = {"name": "nolib", "data": ["announcements"],
           "targets": [{"type": "local"},
                       {"type": "sftp", "server": "127.0.0.1", "port": closed_port(), "username": "pbx",
                        "password": "{{ v_sftp }}", "host_key_policy": "accept_new"}]}
    play(env, [settings_task(env), job_task(env, job), run_task(env, "nolib", "run", ignore_errors=True)],
         extravars={"v_sftp": SFTP_SECRET})
    task = info_task(env, "info", archives=True)
    task["vars"] = {"ansible_python_interpreter": _python_without_paramiko()}
    res = play(env, [task])["info"]
    assert res.get("failed") is not True
    [entry] = res["unreachable_targets"]
    assert entry["target"] == 1 and entry["code"] == "missingLibrary"
    assert entry["error"].startswith("sftp target: Failed to import the required Python library (paramiko) on ")
    assert "ansible_python_interpreter" in entry["error"]  # Ansible's missing_required_lib wording
    assert [a["type"] for a in res["archives"]] == ["local"]


def test_check_mode_returns_the_same_and_changes_nothing(env):
    job = local_job("steady", interval="daily", start="2030-03-01 01:00",
                    targets=[{"type": "local"},
                             {"type": "sftp", "server": "127.0.0.1", "port": closed_port(), "username": "pbx",
                              "password": "pw-check-mode-Rt6", "host_key_policy": "accept_new"}])
    play(env, [settings_task(env), job_task(env, job), run_task(env, "steady", "run", ignore_errors=True)])
    roots = [env["config_dir"], env["settings"]["archive_dir"], env["settings"]["status_dir"]]
    before = tree_state(*roots)
    res = play(env, [info_task(env, "real", archives=True), info_task(env, "check", archives=True, check=True)])
    assert tree_state(*roots) == before
    real, check = res["real"], res["check"]
    assert real["changed"] is False and check["changed"] is False
    for key in ("jobs", "archives", "unreachable_targets"):
        assert check[key] == real[key], key
    assert len(real["archives"]) == 1 and len(real["unreachable_targets"]) == 1
    assert real["jobs"][0]["schedule"]["next_runs"][0].startswith("2030-03-01T01:00:00")


# -- sftp with a real sshd ------------------------------------------------------------------
needs_sshd = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("sshd"),
                                reason="needs root and OpenSSH sshd (apt-get install openssh-server)")


@pytest.fixture
def sshd():
    server = SshServer().start()
    yield server
    server.stop()


@needs_sshd
def test_archives_on_a_real_sftp_server(env, sshd):
    job = {"name": "offsite", "data": ["announcements"],
           "targets": [{"type": "sftp", "server": "127.0.0.1", "port": sshd.port, "username": sshd.user,
                        "password": "{{ v_sftp }}", "host_key": sshd.host_key_line()}]}
    secrets = {"v_sftp": sshd.password}
    res = play(env, [settings_task(env), job_task(env, job), run_task(env, "offsite", "run"),
                     info_task(env, "info", archives=True)], extravars=secrets)
    run = res["run"]
    assert run["code"] == "successful"
    name = run["archive"]["name"]
    remote = os.path.join(sshd.home, "starface-backup", "offsite", name)
    [entry] = res["info"]["archives"]
    assert entry == {"job": "offsite", "target": 0, "type": "sftp", "location": "127.0.0.1:.", "name": name,
                     "size": os.path.getsize(remote), "created": run["archive"]["created"]}
    assert entry["size"] == run["archive"]["size"]
    assert res["info"]["unreachable_targets"] == []
    # Anything else in the folder is not an archive of this job.
    with open(os.path.join(sshd.home, "starface-backup", "offsite", "notes.txt"), "w", encoding="utf-8") as handle:
        handle.write("not an archive")
    again = play(env, [info_task(env, "info", archives=True)])["info"]
    assert [a["name"] for a in again["archives"]] == [name]
    # A wrong password: the same target cannot be listed now, and nothing leaks.
    run2 = run_playbook([job_task(env, dict(job, targets=[dict(job["targets"][0], password="wrong-{{ v_sftp }}")])),
                         info_task(env, "info", archives=True)], str(env["base"]), extravars=secrets)
    assert run2.rc == 0, run2.stdout
    [bad] = run2.results()["info"]["unreachable_targets"]
    assert bad["code"] == "sftpRightProblem" and bad["target"] == 0  # SFTP's code for a refused login
    assert sshd.password not in run2.stdout
