# SPDX-License-Identifier: GPL-3.0-or-later
"""The `sar-backup` command as timers and monitoring use it: scheduled runs and
the maintenance lock (defer/retry), report mails (a real SMTP server), status
exit codes, the checkmk section and the Prometheus textfile."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys

import pytest

from harness.smtp import SmtpServer

from ansible_collections.sar.backup.plugins.module_utils import cli
from ansible_collections.sar.backup.plugins.module_utils.job import validate_job
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings

SFTP_SECRET = "never-show-this-sftp-pw"
SMTP_SECRET = "never-show-this-smtp-pw"


@pytest.fixture
def host(tmp_path, appliance):
    """A scratch host: settings pointing at the sample appliance, an SMTP relay."""
    smtp = SmtpServer(str(tmp_path / "smtp"), mode="plain", username="relay", password=SMTP_SECRET)
    os.makedirs(str(tmp_path / "smtp"), exist_ok=True)
    smtp.start()
    store = Store(str(tmp_path / "etc"))
    settings = validate_settings({
        "profile": appliance.profile,
        "smtp": smtp.settings(),
        "archive_dir": str(tmp_path / "archives"),
        "staging_dir": str(tmp_path / "staging"),
        "status_dir": str(tmp_path / "status"),
        "lock_path": str(tmp_path / "lock" / "sar-backup.lock"),
    })
    store.write_settings(settings)
    try:
        yield {"store": store, "settings": settings, "smtp": smtp, "tmp": tmp_path}
    finally:
        smtp.stop()


def save_job(store, **over):
    raw = {"name": "nightly", "data": ["announcements"], "interval": "daily", "start": "2024-01-01 02:00",
           "report_to": ["ops@example.com"], "targets": [{"type": "local"}]}
    raw.update(over)
    job = validate_job(raw)
    store.write_job(job)
    return job


def sar(host, *argv):
    return cli.main(["--config-dir", host["store"].config_dir] + list(argv))


def hold_lock(path, seconds):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    code = ("import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.flock(f,fcntl.LOCK_EX)\n"
            "print('locked',flush=True)\ntime.sleep(float(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, path, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def status_of(host, job="nightly"):
    with open(os.path.join(host["settings"]["status_dir"], "%s.json" % job)) as handle:
        return json.load(handle)


def test_scheduled_run_defers_then_runs(host, capsys):
    save_job(host["store"], defer="1s", retries=5)
    holder = hold_lock(host["settings"]["lock_path"], 2.5)
    try:
        rc = sar(host, "run", "nightly", "--scheduled")
    finally:
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 0, err
    assert re.search(r"deferred 1/5", err)
    assert status_of(host)["code"] == "successful"
    assert host["smtp"].messages == []  # report_on: failure, and it succeeded


def test_scheduled_run_gives_up_and_mails(host, capsys):
    save_job(host["store"], defer="1s", retries=2)
    holder = hold_lock(host["settings"]["lock_path"], 120)
    try:
        rc = sar(host, "run", "nightly", "--scheduled")
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 1
    assert "deferred 2/2" in err
    status = status_of(host)
    assert status["code"] == "alreadyRunning" and status["success"] is False
    assert status["targets"][0]["code"] == "alreadyRunning"
    assert len(host["smtp"].messages) == 1
    mail = host["smtp"].messages[0]
    assert mail.rcpt_tos == ["ops@example.com"]
    assert "alreadyRunning" in mail.message["Subject"] and "nightly" in mail.message["Subject"]
    body = mail.raw.decode("utf-8", "replace")
    assert "maintenance lock" in body and SMTP_SECRET not in body


def test_adhoc_run_fails_at_once_when_locked(host, capsys):
    save_job(host["store"])
    holder = hold_lock(host["settings"]["lock_path"], 120)
    try:
        rc = sar(host, "run", "nightly")
    finally:
        holder.kill()
        holder.wait()
    assert rc == 1
    assert "alreadyRunning" in capsys.readouterr().err
    assert status_of(host)["code"] == "alreadyRunning"


def test_failed_target_report_mail_has_codes_and_no_secret(host):
    save_job(host["store"], targets=[
        {"type": "local"},
        {"type": "sftp", "server": "127.0.0.1", "port": 1, "username": "pbx", "password": SFTP_SECRET}])
    rc = sar(host, "run", "nightly")
    assert rc == 1
    status = status_of(host)
    assert [t["code"] for t in status["targets"]] == ["successful", "connectFailed"]
    assert status["archive"]["name"].endswith(".sar")
    mail = host["smtp"].messages[0]
    text = mail.raw.decode("utf-8", "replace")
    assert "connectFailed" in text and "successful" in text and status["archive"]["name"] in text
    assert mail.message.get_body(("html",)) is not None
    for secret in (SFTP_SECRET, SMTP_SECRET):
        assert secret not in text
        assert secret not in json.dumps(status)


def test_report_on_always_and_never(host):
    save_job(host["store"], report_on="always")
    assert sar(host, "run", "nightly") == 0
    assert len(host["smtp"].messages) == 1 and "successful" in host["smtp"].messages[0].message["Subject"]
    save_job(host["store"], report_on="never", targets=[{"type": "sftp", "server": "127.0.0.1", "port": 1,
                                                         "username": "u", "password": SFTP_SECRET}])
    assert sar(host, "run", "nightly") == 1
    assert len(host["smtp"].messages) == 1


def test_not_due_before_start(host, capsys):
    future = (datetime.datetime.now() + datetime.timedelta(days=3)).strftime("%Y-%m-%d %H:%M")
    save_job(host["store"], start=future)
    assert sar(host, "run", "nightly", "--scheduled") == 0
    assert "not due" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(host["settings"]["status_dir"], "nightly.json"))


def test_status_exit_codes_checkmk_and_metrics(host, capsys):
    save_job(host["store"])
    assert sar(host, "status") == 1  # no run yet
    capsys.readouterr()
    assert sar(host, "run", "nightly") == 0
    capsys.readouterr()
    assert sar(host, "status", "--warn", "26h", "--crit", "50h") == 0
    out = capsys.readouterr().out
    assert out.startswith("OK - nightly") and "'nightly_age'=" in out

    # Stale: pretend the last success was 30 h ago, then 60 h ago.
    path = os.path.join(host["settings"]["status_dir"], "nightly.json")
    status = json.load(open(path))
    for hours, expected in ((30, 1), (60, 2)):
        old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=hours)).isoformat()
        status["last_success"] = old
        json.dump(status, open(path, "w"))
        assert sar(host, "status") == expected
    capsys.readouterr()

    assert sar(host, "status", "--format", "checkmk") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "<<<starface_backups>>>"
    assert re.match(r"^\[HDD\]%s \d{13} de\.vertico\.backup\.successful$" % re.escape(host["settings"]["archive_dir"]),
                    lines[1]), lines

    metrics = open(os.path.join(host["settings"]["status_dir"], "sar_backup.prom")).read()
    assert re.search(r'^sar_backup_target_result\{backup_job="nightly",target="0",type="local",.*code="successful"\} 1$',
                     metrics, re.M)
    assert re.search(r'^sar_backup_archive_bytes\{backup_job="nightly"\} [1-9]\d*$', metrics, re.M)
    # Checkmk sites without the STARFACE plugin: a <<<local>>> service per job (60 h old: critical).
    assert sar(host, "status", "nightly", "--format", "checkmk-local") == 0
    assert re.match(r'^<<<local>>>\n2 "sar-backup_nightly" age=\d+;93600;180000\|size=\d+;;\|duration=[\d.]+;; nightly: ',
                    capsys.readouterr().out)

    # A failed run is CRITICAL whatever its age.
    save_job(host["store"], targets=[{"type": "sftp", "server": "127.0.0.1", "port": 1, "username": "u",
                                      "password": SFTP_SECRET}], report_to=[])
    assert sar(host, "run", "nightly") == 1
    assert sar(host, "status") == 2
    capsys.readouterr()
    # Unreadable status: UNKNOWN.
    with open(path, "w") as handle:
        handle.write("{not json")
    assert sar(host, "status") == 3


def test_crash_report_records_a_failed_run_once(host, capsys, monkeypatch):
    save_job(host["store"], targets=[{"type": "local"}, {"type": "sftp", "server": "127.0.0.1", "port": 1,
                                                         "username": "u", "password": SFTP_SECRET}])
    save_job(host["store"])
    assert sar(host, "run", "nightly") == 0
    capsys.readouterr()
    good = status_of(host)
    assert sar(host, "status") == 0

    # A run that failed and mailed its own report (exit status 1): the hook adds nothing.
    monkeypatch.setenv("MONITOR_SERVICE_RESULT", "exit-code")
    monkeypatch.setenv("MONITOR_EXIT_STATUS", "1")
    assert sar(host, "crash-report", "nightly") == 0
    assert "reported it itself" in capsys.readouterr().out
    assert host["smtp"].messages == [] and status_of(host) == good

    # Killed: the status file says failed (monitoring goes CRITICAL), the last success is kept, one mail.
    monkeypatch.setenv("MONITOR_SERVICE_RESULT", "signal")
    monkeypatch.setenv("MONITOR_EXIT_STATUS", "KILL")
    assert sar(host, "crash-report", "nightly") == 0
    status = status_of(host)
    assert status["code"] == "failed" and status["crash"] is True and "ended with signal" in status["error"]
    assert status["last_success"] == good["last_success"]
    assert [t["location"] for t in status["targets"]] == [good["targets"][0]["location"]]
    capsys.readouterr()
    assert sar(host, "status") == 2
    assert "CRITICAL" in capsys.readouterr().out
    assert sar(host, "status", "--format", "checkmk") == 0
    assert re.search(r"^\[HDD\]\S+ \d{13} de\.vertico\.backup\.failed$", capsys.readouterr().out, re.M)
    metrics = open(os.path.join(host["settings"]["status_dir"], "sar_backup.prom")).read()
    assert re.search(r'^sar_backup_target_result\{backup_job="nightly",target="0",.*code="failed"\} 1$', metrics, re.M)
    assert re.search(r'^sar_backup_target_success\{backup_job="nightly",target="0",.*\} 0$', metrics, re.M)
    assert re.search(r'^sar_backup_duration_seconds\{backup_job="nightly"\} 0$', metrics, re.M)  # never "None"
    assert len(host["smtp"].messages) == 1
    assert "ended with signal" in host["smtp"].messages[0].raw.decode("utf-8", "replace")

    # A configuration error (exit 2) never reached the runner's report: reported too.
    monkeypatch.setenv("MONITOR_SERVICE_RESULT", "exit-code")
    monkeypatch.setenv("MONITOR_EXIT_STATUS", "2")
    assert sar(host, "crash-report", "nightly") == 0
    assert len(host["smtp"].messages) == 2


def test_crash_report_of_a_drill_records_a_failed_drill_once(host, capsys, monkeypatch):
    from ansible_collections.sar.backup.plugins.module_utils import drill, report
    job = save_job(host["store"])
    assert sar(host, "run", "nightly") == 0
    settings = host["settings"]
    passed = drill.drill_record(job, datetime.datetime.now(datetime.timezone.utc), "successful", 0)
    report.write_drill(settings, "nightly", passed)
    before = status_of(host)
    assert before["last_drill_success"] == passed["finished"]
    capsys.readouterr()

    # A drill that failed and mailed its own report (exit status 1): nothing added.
    monkeypatch.setenv("MONITOR_SERVICE_RESULT", "exit-code")
    monkeypatch.setenv("MONITOR_EXIT_STATUS", "1")
    assert sar(host, "crash-report", "nightly", "--drill") == 0
    assert "sar-backup-drill@nightly.service: the drill failed and reported it itself" in capsys.readouterr().out
    assert host["smtp"].messages == [] and status_of(host) == before

    # Killed (out of memory, say): last_drill says failed, the run's result and the last passed drill stay.
    monkeypatch.setenv("MONITOR_SERVICE_RESULT", "oom-kill")
    monkeypatch.setenv("MONITOR_EXIT_STATUS", "KILL")
    assert sar(host, "crash-report", "nightly", "--drill") == 0
    status = status_of(host)
    crashed = status["last_drill"]
    assert crashed["code"] == "failed" and crashed["success"] is False and crashed["crash"] is True
    assert crashed["error"].startswith("the restore drill service sar-backup-drill@nightly.service ended with oom-kill")
    assert status["last_drill_success"] == passed["finished"]
    assert {k: status[k] for k in ("code", "last_success", "targets")} == \
        {k: before[k] for k in ("code", "last_success", "targets")}
    metrics = open(os.path.join(settings["status_dir"], "sar_backup.prom")).read()
    assert re.search(r'^sar_backup_last_drill_success\{backup_job="nightly"\} 0$', metrics, re.M)
    assert len(host["smtp"].messages) == 1
    mail = host["smtp"].messages[0].message
    assert "restore drill of nightly" in mail["Subject"] and "FAILED" in mail["Subject"]
    text = "".join(part.get_content() for part in mail.walk() if part.get_content_type() == "text/plain")
    assert "ended with oom-kill" in text, text


def test_a_run_removes_what_killed_runs_of_any_job_left_in_staging(host, capsys):
    save_job(host["store"])
    staging = host["settings"]["staging_dir"]
    left = [".weekly-ab12cd34", ".restore-x9y8z7w6", ".nightly-00aa11bb"]
    for name in left:
        os.makedirs(os.path.join(staging, name, "sub"))
        with open(os.path.join(staging, name, "sub", "x.sar.partial"), "wb") as handle:
            handle.write(b"left by a killed run")
    foreign = os.path.join(staging, "operator-notes.txt")  # not ours: never touched
    with open(foreign, "w") as handle:
        handle.write("keep me")
    assert sar(host, "run", "nightly") == 0
    assert sorted(os.listdir(staging)) == ["operator-notes.txt"]
    assert capsys.readouterr().err.count("removing leftover") == 3


def test_list_and_verify(host, capsys):
    save_job(host["store"])
    assert sar(host, "run", "nightly") == 0
    capsys.readouterr()
    assert sar(host, "list", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)["jobs"]
    assert rows[0]["name"] == "nightly" and rows[0]["schedule"]["on_calendar"] == ["*-*-* 02:00:00"]
    assert rows[0]["last_run"] == status_of(host)
    archive = status_of(host)["archive"]
    # With the archives of every target; a target that cannot be listed makes the exit code 1.
    assert sar(host, "list", "nightly", "--archives") == 0
    text = capsys.readouterr().out
    assert "0. local" in text and archive["name"] in text
    save_job(host["store"], name="offsite", targets=[{"type": "sftp", "server": "127.0.0.1", "port": 1,
                                                      "username": "u", "password": SFTP_SECRET}])
    assert sar(host, "list", "--archives", "--format", "json") == 1
    data = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in data["archives"]] == [archive["name"]]
    assert [(u["job"], u["code"]) for u in data["unreachable_targets"]] == [("offsite", "connectFailed")]
    assert SFTP_SECRET not in json.dumps(data)
    assert sar(host, "list", "nope") == 2
    assert "no job named 'nope'" in capsys.readouterr().err
    folder = os.path.join(host["settings"]["archive_dir"], "starface-backup", "nightly")
    assert sar(host, "verify", os.path.join(folder, archive["name"])) == 0
    assert "OK" in capsys.readouterr().out
    # One flipped byte in the middle: corrupt.
    path = os.path.join(folder, archive["name"])
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    assert sar(host, "verify", path) == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_run_on_a_terminal_shows_progress_and_plain_lines_otherwise(host):
    import pty
    save_job(host["store"], data=["core", "cdr_voicemail", "announcements"])
    code = "import sys; from ansible_collections.sar.backup.plugins.module_utils import cli; sys.exit(cli.main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--config-dir", host["store"].config_dir, "run", "nightly"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait() == 0
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert re.search(r"archive: [\d.]+ MB / [\d.]+ MB \(\s*\d+%\)  ETA \d+:\d\d  [\d.]+ MB/s", screen), screen
    assert re.search(r"\[\s*[\d.]+s\] nightly: successful", screen)
    # Not a terminal (systemd): phase lines only, no progress redraws.
    plain = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert plain.returncode == 0
    assert "\r" not in plain.stderr and "ETA" not in plain.stderr
    assert "nightly: successful" in plain.stderr


def test_local_target_path_must_exist(host, capsys):
    """A typo or a backup disk that is not mounted must not fill the root file system: the target's path must
    exist (mountfail naming it), only starface-backup/<job>/ below it is created; the other targets still run."""
    missing = os.path.join(os.path.dirname(host["settings"]["archive_dir"]), "usb-disk-not-mounted")
    save_job(host["store"], report_to=[], targets=[{"type": "local"}, {"type": "local", "path": missing}])
    assert sar(host, "run", "nightly") == 1
    status = status_of(host)
    assert [t["code"] for t in status["targets"]] == ["successful", "mountfail"]
    assert missing in status["targets"][1]["error"] and "not mounted" in status["targets"][1]["error"]
    assert not os.path.exists(missing)
    os.makedirs(missing)
    assert sar(host, "run", "nightly") == 0
    assert os.listdir(os.path.join(missing, "starface-backup", "nightly"))


def test_two_runs_in_one_second_never_replace_an_archive(host):
    """Archive names carry the start to the second; a second run in the same second waits for the next one."""
    import datetime
    from ansible_collections.sar.backup.plugins.module_utils.runner import run_job
    job = save_job(host["store"], report_to=[], targets=[{"type": "local", "keep": 0}])
    moment = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=990000)
    first = run_job(job, host["store"], now=moment)
    second = run_job(job, host["store"], now=moment)
    assert first["code"] == second["code"] == "successful"
    assert first["archive"]["name"] != second["archive"]["name"]
    folder = os.path.join(host["settings"]["archive_dir"], "starface-backup", "nightly")
    assert sorted(os.listdir(folder)) == sorted([first["archive"]["name"], second["archive"]["name"]])


def test_verify_says_what_is_wrong_only_damage_is_corrupt(host, capsys, tmp_path):
    save_job(host["store"], report_to=[], encryption={"passphrase": "verify-pass-Xy7"})
    assert sar(host, "run", "nightly") == 0
    capsys.readouterr()
    folder = os.path.join(host["settings"]["archive_dir"], "starface-backup", "nightly")
    path = os.path.join(folder, os.listdir(folder)[0])
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("verify-pass-Xy7\n")
    wrong.write_text("not-it\n")
    assert sar(host, "verify", path, "--passphrase-file", str(right)) == 0
    assert capsys.readouterr().out.startswith("OK ")
    assert sar(host, "verify", path) == 1
    assert capsys.readouterr().out.startswith("ENCRYPTED ")
    assert sar(host, "verify", path, "--passphrase-file", str(wrong)) == 1
    out = capsys.readouterr().out
    assert out.startswith("ENCRYPTED ") and "wrong passphrase" in out
    assert sar(host, "verify", str(tmp_path / "missing.sar")) == 2
    captured = capsys.readouterr()
    assert "CORRUPT" not in captured.out and "cannot read" in captured.err


def test_calendar_retention_on_a_real_target_and_check_mode_lists_it(host):
    """keep + keep_daily on a local target: the archives of older days go, one per day stays; check mode says
    beforehand what a run would prune, and prunes nothing."""
    from ansible_collections.sar.backup.plugins.module_utils.runner import dry_run_job, run_job
    job = save_job(host["store"], report_to=[], targets=[{"type": "local", "keep": 1, "keep_daily": 3}])
    folder = os.path.join(host["settings"]["archive_dir"], "starface-backup", "nightly")
    os.makedirs(folder)
    # Archives of earlier nights (two on one day), as earlier runs left them (names carry the UTC time).
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc).replace(hour=12, minute=0)
    earlier = []
    for days, hour in ((1, 1), (1, 3), (2, 1), (3, 1), (4, 1)):
        moment = now - datetime.timedelta(days=days)
        name = "nightly_%s_%s.sar" % (run_host(), moment.replace(hour=hour).strftime("%Y%m%dT%H%M%SZ"))
        open(os.path.join(folder, name), "wb").close()
        earlier.append(name)
    plan = dry_run_job(job, host["store"])
    # Kept: the new archive (keep 1, its day), the newest of yesterday and of the day before (3 days with archives).
    assert sorted(plan["targets"][0]["would_prune"]) == sorted([earlier[0], earlier[3], earlier[4]])
    assert sorted(os.listdir(folder)) == sorted(earlier)      # check mode removed nothing
    res = run_job(job, host["store"])
    assert res["code"] == "successful"
    assert sorted(res["targets"][0]["pruned"]) == sorted([earlier[0], earlier[3], earlier[4]])
    assert sorted(os.listdir(folder)) == sorted([res["archive"]["name"], earlier[1], earlier[2]])


def run_host() -> str:
    from ansible_collections.sar.backup.plugins.module_utils.fsutil import short_hostname
    return short_hostname()
