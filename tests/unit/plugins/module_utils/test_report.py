# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import re

from ansible_collections.sar.backup.plugins.module_utils import report

NOW = 1_800_000_000.0


def iso(epoch):
    import datetime
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def status(code="successful", finished=NOW - 3600, last_success=NOW - 3600, targets=None):
    return {
        "job": "nightly", "code": code, "finished": iso(finished), "started_epoch_ms": int((finished - 60) * 1000),
        "last_success": iso(last_success) if last_success else None, "duration": 12.5,
        "archive": {"name": "x.sar", "size": 1234, "sha256": "ab"},
        "targets": targets if targets is not None else [
            {"index": 0, "type": "smb", "location": "192.0.2.6:/Backup_Starface", "code": code},
            {"index": 1, "type": "usb", "location": "", "code": "successful"},
        ],
    }


def test_nagios_ok_warn_crit_unknown():
    assert report.nagios_status({"nightly": status()}, 26 * 3600, 50 * 3600, NOW)[0] == 0
    stale = status(finished=NOW - 30 * 3600, last_success=NOW - 30 * 3600)
    assert report.nagios_status({"nightly": stale}, 26 * 3600, 50 * 3600, NOW)[0] == 1
    old = status(finished=NOW - 60 * 3600, last_success=NOW - 60 * 3600)
    assert report.nagios_status({"nightly": old}, 26 * 3600, 50 * 3600, NOW)[0] == 2
    failed = status(code="mountfail", last_success=NOW - 7200)
    code, text = report.nagios_status({"nightly": failed}, 26 * 3600, 50 * 3600, NOW)
    assert code == 2 and "mountfail" in text
    assert report.nagios_status({"nightly": None}, 26 * 3600, 50 * 3600, NOW)[0] == 1
    assert report.nagios_status({}, 26 * 3600, 50 * 3600, NOW)[0] == 3


def test_nagios_perfdata():
    _code, text = report.nagios_status({"nightly": status()}, 100, 200, NOW)
    summary, perf = text.split(" | ")
    assert summary.startswith("CRITICAL")  # an hour is over crit=200s
    assert re.search(r"'nightly_age'=3600s;100;200;0", perf)
    assert "'nightly_size'=1234B" in perf


def test_checkmk_section_format():
    text = report.checkmk_section({"nightly": status(code="sftpRightProblem", targets=[
        {"index": 0, "type": "sftp", "location": "sftp.example.com:/archiv", "code": "sftpRightProblem"},
        {"index": 1, "type": "usb", "location": "", "code": "successful"},
        {"index": 2, "type": "email", "location": "ops@example.com", "code": "mailtobig"},
        {"index": 3, "type": "local", "location": "/var/lib/sar-backup/archives", "code": "successful"}]),
        "never": None})
    lines = text.splitlines()
    assert lines[0] == "<<<starface_backups>>>"
    pattern = re.compile(r"^\[(HDD|SMB|SFTP|DROPBOX|USB|MAIL)\](\S*) (\d{13}) de\.vertico\.backup\.(\w+)$")
    parsed = [pattern.match(line).groups() for line in lines[1:]]
    assert parsed[0] == ("SFTP", "sftp.example.com:/archiv", str(int((NOW - 3660) * 1000)), "sftpRightProblem")
    assert parsed[1][0:2] == ("USB", "")
    assert parsed[2][0] == "MAIL" and parsed[2][3] == "mailtobig"
    assert parsed[3][0] == "HDD"
    assert len(parsed) == 4


def test_prometheus_text():
    text = report.prometheus_text({"nightly": status(code="mountfail", last_success=NOW - 7200), "idle": None})
    assert 'sar_backup_last_success_timestamp_seconds{backup_job="nightly"} %d' % int(NOW - 7200) in text
    where = 'backup_job="nightly",target="0",type="smb",location="192.0.2.6:/Backup_Starface"'
    assert "sar_backup_target_success{%s} 0" % where in text
    assert 'sar_backup_target_result{%s,code="mountfail"} 1' % where in text
    assert 'sar_backup_target_result{%s,code="successful"} 0' % where in text
    assert 'sar_backup_target_success{backup_job="nightly",target="1",type="usb",location=""} 1' in text
    assert 'sar_backup_last_run_success{backup_job="nightly"} 0' in text
    assert 'sar_backup_archive_bytes{backup_job="nightly"} 1234' in text
    assert "idle" not in text
    # Never the scrape-clashing `job` label.
    assert not re.search(r'[{,]job="', text)
    for line in text.splitlines():
        assert line.startswith("#") or re.match(r'^[a-z_]+\{[^}]*\} [0-9.]+$', line), line


def test_prometheus_result_codes_are_a_constant_set():
    """A code change flips values, never creates or removes series (no label churn)."""
    def series(code):
        text = report.prometheus_text({"nightly": status(code=code)})
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("sar_backup_target_result")}
    assert series("mountfail") == series("successful") == series("diskFull")
    assert len(series("mountfail")) == 2 * len(report_codes())


def report_codes():
    from ansible_collections.sar.backup.plugins.module_utils.errors import CODES
    return CODES


def test_prometheus_schedule_interval():
    daily = dict(status(), interval="daily")
    manual = dict(status(), interval="manual")
    text = report.prometheus_text({"nightly": daily, "adhoc": manual})
    assert 'sar_backup_schedule_interval_seconds{backup_job="nightly"} 86400' in text
    assert 'sar_backup_schedule_interval_seconds{backup_job="adhoc"} 0' in text


def test_nagios_manual_jobs_have_no_freshness():
    old = status(finished=NOW - 90 * 86400, last_success=NOW - 90 * 86400)
    assert report.nagios_status({"adhoc": old}, 26 * 3600, 50 * 3600, NOW, {"adhoc": "manual"})[0] == 0
    assert report.nagios_status({"adhoc": None}, 26 * 3600, 50 * 3600, NOW, {"adhoc": "manual"})[0] == 0
    failed = status(code="mountfail", last_success=None)
    assert report.nagios_status({"adhoc": failed}, 26 * 3600, 50 * 3600, NOW, {"adhoc": "manual"})[0] == 2
    # The status file's own interval counts when the job file says nothing.
    assert report.nagios_status({"adhoc": dict(old, interval="manual")}, 26 * 3600, 50 * 3600, NOW)[0] == 0
    assert report.nagios_status({"nightly": dict(old, interval="daily")}, 26 * 3600, 50 * 3600, NOW)[0] == 2


def test_nagios_perfdata_unknown_is_a_bare_u():
    _code, text = report.nagios_status({"nightly": status(last_success=None), "never": None}, 100, 200, NOW)
    perf = text.split(" | ")[1]
    assert "'nightly_age'=U;100;200;0" in perf and "'never_age'=U;100;200;0" in perf
    assert "Us" not in perf


def test_checkmk_local_section():
    text = report.checkmk_local({"nightly": status(), "broken": dict(status(code="mountfail"), job="broken"),
                                 "adhoc": None}, 26 * 3600, 50 * 3600, NOW, {"adhoc": "manual"})
    lines = text.splitlines()
    assert lines[0] == "<<<local>>>"
    by_name = {line.split('"')[1]: line for line in lines[1:]}
    assert by_name["sar-backup_nightly"].startswith('0 "sar-backup_nightly" age=3600;93600;180000|size=1234;;|duration=12.5;; ')
    assert by_name["sar-backup_broken"].startswith("2 ")
    assert by_name["sar-backup_adhoc"] == '0 "sar-backup_adhoc" - adhoc: manual, never run'


def test_report_mail_policy_and_text():
    job = {"report_to": ["ops@example.com"], "report_on": "failure"}
    assert report.wants_mail(job, {"code": "mountfail"})
    assert not report.wants_mail(job, {"code": "successful"})
    assert not report.wants_mail(job, {"code": "deferred"})
    assert report.wants_mail(dict(job, report_on="always"), {"code": "successful"})
    assert not report.wants_mail(dict(job, report_on="never"), {"code": "mountfail"})
    assert not report.wants_mail(dict(job, report_to=[]), {"code": "mountfail"})
    res = status(code="authFailed")
    res.update(host="pbx01", started=iso(NOW - 100), error="target 0 (smb): SMB login failed")
    subject, text, html = report.report_text(res)
    assert "nightly" in subject and "pbx01" in subject and "authFailed" in subject
    assert "192.0.2.6:/Backup_Starface" in text and "authFailed" in text and "1.2 KB" in text
    assert "<table" in html and "authFailed" in html
