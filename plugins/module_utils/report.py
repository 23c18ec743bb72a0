# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""What a run leaves for people and monitoring: the status file per job."""

from __future__ import annotations

import os

from .errors import SarError
from .fsutil import atomic_write_json, format_size, read_json
from .targets import types as target_types

STATUS_FORMAT = 1


def status_path(settings: dict, job: str) -> str:
    return os.path.join(settings["status_dir"], "%s.json" % job)


def read_status(settings: dict, job: str):
    """The job's status file content, or None when it never ran."""
    path = status_path(settings, job)
    if not os.path.exists(path):
        return None
    try:
        return read_json(path)
    except (OSError, ValueError) as exc:
        raise SarError("cannot read status file %s: %s" % (path, exc))


def write_status(settings: dict, result: dict) -> str:
    """Write <status_dir>/<job>.json (0644: monitoring reads it; it holds no
    secret). Carries the last success over from the previous status."""
    job = result["job"]
    previous = None
    try:
        previous = read_status(settings, job)
    except SarError:
        previous = None
    status = dict(result)
    status["format"] = STATUS_FORMAT
    if result.get("code") == "successful":
        status["last_success"] = result.get("finished")
    else:
        status["last_success"] = (previous or {}).get("last_success")
    for key in ("last_drill", "last_drill_success"):  # a run keeps what the last restore drill proved
        if key not in status and (previous or {}).get(key) is not None:
            status[key] = previous[key]
    path = status_path(settings, job)
    if not os.path.isdir(settings["status_dir"]):
        os.makedirs(settings["status_dir"], mode=0o755, exist_ok=True)
    atomic_write_json(path, status, mode=0o644)
    return path


def write_drill(settings: dict, job: str, drill: dict) -> str:
    """Record a restore drill in <status_dir>/<job>.json (`last_drill`, and `last_drill_success` when it
    passed), keeping the last run's result as it is."""
    try:
        status = read_status(settings, job) or {"job": job, "code": None, "targets": [], "last_success": None}
    except SarError:
        status = {"job": job, "code": None, "targets": [], "last_success": None}
    status["format"] = STATUS_FORMAT
    status["last_drill"] = drill
    if drill.get("code") == "successful":
        status["last_drill_success"] = drill.get("finished")
    path = status_path(settings, job)
    if not os.path.isdir(settings["status_dir"]):
        os.makedirs(settings["status_dir"], mode=0o755, exist_ok=True)
    atomic_write_json(path, status, mode=0o644)
    return path


# -- monitoring -----------------------------------------------------------------
CHECKMK_SECTION = "<<<starface_backups>>>"
CHECKMK_PREFIX = "de.vertico.backup."


def all_statuses(settings: dict, jobs: list) -> dict:
    """job name -> status dict or None (never ran); unreadable files raise SarError."""
    return {name: read_status(settings, name) for name in jobs}


def checkmk_section(statuses: dict) -> str:
    """The agent section third-party checks parse: one line per target of the
    newest run of every job: `[TAG]location <start epoch ms> de.vertico.backup.<code>`."""
    lines = [CHECKMK_SECTION]
    for name in sorted(statuses):
        status = statuses[name]
        if not status:
            continue
        for target in status.get("targets", []):
            tag = target_types.tag(target.get("type"))
            lines.append("%s%s %d %s%s" % (tag, target.get("location") or "", int(status.get("started_epoch_ms", 0)),
                                           CHECKMK_PREFIX, target.get("code", "failed")))
    return "\n".join(lines) + "\n"


def _prom_label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _epoch(iso_time):
    if not iso_time:
        return None
    import datetime  # local: only the metrics need it
    return datetime.datetime.fromisoformat(iso_time).timestamp()


# Nominal seconds between runs, for freshness rules (a month as 31 days); manual jobs have none.
INTERVAL_SECONDS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 31 * 86400, "manual": 0}


def _metric(out: list, name: str, kind: str, help_text: str, rows: list) -> None:
    out += ["# HELP %s %s" % (name, help_text), "# TYPE %s %s" % (name, kind)] + rows


def _labels(**labels) -> str:
    return ",".join('%s="%s"' % (k, _prom_label(v)) for k, v in labels.items())


def prometheus_text(statuses: dict) -> str:
    """Prometheus textfile-collector metrics for every job that ran (docs/role.md, Monitoring).

    The job label is `backup_job` (a `job` label would clash with the scrape job and become
    `exported_job`). Result codes never churn labels: each target has a constant set of series,
    `sar_backup_target_result{...,code=C}` for every code C of the vocabulary, 1 for the current
    one (an OpenMetrics stateset), plus `sar_backup_target_success` 0/1."""
    from .errors import CODES  # local: report stays importable on its own
    rows: dict = {key: [] for key in ("success", "last", "ok", "bytes", "duration", "interval", "tsuccess", "tresult",
                                      "dsuccess", "dok", "dinterval")}
    for name in sorted(statuses):
        status = statuses[name]
        if not status:
            continue
        job = _labels(backup_job=name)
        success = _epoch(status.get("last_success"))
        rows["success"].append("sar_backup_last_success_timestamp_seconds{%s} %d" % (job, int(success) if success else 0))
        rows["last"].append("sar_backup_last_run_timestamp_seconds{%s} %d" % (job, int(_epoch(status.get("finished")) or 0)))
        rows["ok"].append("sar_backup_last_run_success{%s} %d" % (job, 1 if status.get("code") == "successful" else 0))
        rows["duration"].append("sar_backup_duration_seconds{%s} %s" % (job, status.get("duration") or 0))
        size = (status.get("archive") or {}).get("size") or 0
        rows["bytes"].append("sar_backup_archive_bytes{%s} %d" % (job, size))
        if status.get("interval") in INTERVAL_SECONDS:
            rows["interval"].append("sar_backup_schedule_interval_seconds{%s} %d" % (job, INTERVAL_SECONDS[status["interval"]]))
        drill = status.get("last_drill")
        if drill:
            drilled = _epoch(status.get("last_drill_success"))
            rows["dsuccess"].append("sar_backup_last_drill_success_timestamp_seconds{%s} %d" % (job, int(drilled) if drilled else 0))
            rows["dok"].append("sar_backup_last_drill_success{%s} %d" % (job, 1 if drill.get("code") == "successful" else 0))
            if drill.get("interval") in INTERVAL_SECONDS:
                rows["dinterval"].append("sar_backup_drill_interval_seconds{%s} %d" % (job, INTERVAL_SECONDS[drill["interval"]]))
        for target in status.get("targets", []):
            where = _labels(backup_job=name, target=target.get("index", 0), type=target.get("type", ""),
                            location=target.get("location") or "")
            code = target.get("code", "")
            rows["tsuccess"].append("sar_backup_target_success{%s} %d" % (where, 1 if code == "successful" else 0))
            for each in CODES:
                rows["tresult"].append('sar_backup_target_result{%s,code="%s"} %d' % (where, each, 1 if code == each else 0))
    out: list = []
    _metric(out, "sar_backup_last_success_timestamp_seconds", "gauge",
            "End of the job's last successful run (0: never).", rows["success"])
    _metric(out, "sar_backup_last_run_timestamp_seconds", "gauge", "End of the job's last run, whatever its result.",
            rows["last"])
    _metric(out, "sar_backup_last_run_success", "gauge", "1 when the job's last run succeeded on every target, else 0.",
            rows["ok"])
    _metric(out, "sar_backup_archive_bytes", "gauge", "Size of the last run's archive.", rows["bytes"])
    _metric(out, "sar_backup_duration_seconds", "gauge", "Duration of the job's last run.", rows["duration"])
    _metric(out, "sar_backup_schedule_interval_seconds", "gauge",
            "Nominal seconds between the job's scheduled runs (0: manual, no schedule).", rows["interval"])
    _metric(out, "sar_backup_target_success", "gauge", "1 when the target succeeded in the job's last run, else 0.",
            rows["tsuccess"])
    _metric(out, "sar_backup_target_result", "gauge",
            "The target's result code in the job's last run: 1 for that code, 0 for every other code (constant set).",
            rows["tresult"])
    _metric(out, "sar_backup_last_drill_success_timestamp_seconds", "gauge",
            "End of the job's last successful restore drill (0: never).", rows["dsuccess"])
    _metric(out, "sar_backup_last_drill_success", "gauge", "1 when the job's last restore drill passed, else 0.",
            rows["dok"])
    _metric(out, "sar_backup_drill_interval_seconds", "gauge",
            "Nominal seconds between the job's scheduled restore drills (0: manual).", rows["dinterval"])
    return "\n".join(out) + "\n"


def record(settings: dict, store, job: str, writer, entry: dict, warnings: list) -> str | None:
    """Write a run's or drill's outcome (`writer`: write_status or write_drill) and refresh the metrics of
    every job; a file that cannot be written becomes a warning, never another outcome. The status path."""
    path = None
    try:
        path = writer(settings, entry) if writer is write_status else writer(settings, job, entry)
    except OSError as exc:
        warnings.append("could not write the status file: %s" % exc)
    try:
        from .store import effective_metrics_path  # local: store imports job, which imports little else
        write_metrics(settings, sorted(set(store.job_names()) | {job}), effective_metrics_path(settings))
    except OSError as exc:
        warnings.append("could not write the metrics file: %s" % exc)
    return path


def write_metrics(settings: dict, jobs: list, metrics_path: str) -> None:
    from .fsutil import atomic_write  # local import keeps the module graph flat
    statuses = {}
    for name in jobs:
        try:
            statuses[name] = read_status(settings, name)
        except SarError:
            statuses[name] = None
    directory = os.path.dirname(metrics_path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    atomic_write(metrics_path, prometheus_text(statuses).encode("utf-8"), mode=0o644)


NAGIOS = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def _drill_state(status: dict | None, drill_interval, now: float) -> tuple:
    """(state, text) of a job's restore drills: CRITICAL when the last drill failed, WARNING when a job with a
    scheduled drill has no successful one within twice its interval; (0, "") when the job has no drill."""
    drill = (status or {}).get("last_drill")
    if not drill and drill_interval in (None, "manual"):
        return 0, ""
    if drill and drill.get("code") != "successful":
        return 2, "last drill %s at %s" % (drill.get("code"), drill.get("finished"))
    passed = _epoch((status or {}).get("last_drill_success"))
    if drill_interval not in (None, "manual"):
        limit = 2 * INTERVAL_SECONDS[drill_interval]
        if passed is None:
            return 1, "no successful restore drill yet"
        if now - passed > limit:
            return 1, "last successful drill %s ago" % _human(int(now - passed))
    return 0, "last drill passed %s ago" % _human(int(now - passed)) if passed else ""


def nagios_status(statuses: dict, warn: int, crit: int, now: float, intervals: dict | None = None,
                  drills: dict | None = None) -> tuple:
    """(exit code, text) per SPEC section 9: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

    A failed last run is CRITICAL. Freshness applies to scheduled jobs only: one with no run yet
    is WARNING, a last success older than `warn` WARNING, older than `crit` CRITICAL. A `manual`
    job (`intervals[name]`, else the status file's `interval`) is judged by its last run alone.
    Restore drills (`drills[name]`: the drill's interval): a failed last drill is CRITICAL, a job
    with a scheduled drill and no successful one within twice its interval WARNING."""
    worst = 0
    parts = []
    perf = []
    if not statuses:
        return 3, "UNKNOWN - no backup jobs configured"
    intervals = intervals or {}
    for name in sorted(statuses):
        status = statuses[name]
        interval = intervals.get(name) or (status or {}).get("interval")
        manual = interval == "manual"
        if status is None or status.get("code") is None:  # never ran (a drill alone writes no run result)
            if not manual:
                worst = max(worst, 1)
            parts.append("%s: %s" % (name, "manual, never run" if manual else "no run yet"))
            perf.append("'%s_age'=U;%d;%d;0" % (name, warn, crit))
            continue
        success = _epoch(status.get("last_success"))
        age = None if success is None else max(0, int(now - success))
        if status.get("code") != "successful":
            state, why = 2, "last run %s at %s" % (status.get("code"), status.get("finished"))
        else:
            state, why = 0, "last run successful"
        if age is None:
            if not manual:
                state = max(state, 1)
            why += ", never succeeded"
        else:
            if not manual:
                if age > crit:
                    state = 2
                elif age > warn:
                    state = max(state, 1)
            why += ", last success %s ago" % _human(age)
        if manual:
            why = "manual, " + why
        dstate, dwhy = _drill_state(status, (drills or {}).get(name), now)
        if dwhy:
            state = max(state, dstate)
            why += "; " + dwhy
        worst = max(worst, state)
        parts.append("%s: %s" % (name, why))
        perf.append("'%s_age'=%s;%d;%d;0" % (name, ("%ds" % age) if age is not None else "U", warn, crit))
        perf.append("'%s_size'=%dB;;;0" % (name, (status.get("archive") or {}).get("size") or 0))
        perf.append("'%s_duration'=%ss;;;0" % (name, status.get("duration", 0)))
    return worst, "%s - %s | %s" % (NAGIOS[worst], "; ".join(parts), " ".join(perf))


def checkmk_local(statuses: dict, warn: int, crit: int, now: float, intervals: dict | None = None,
                  drills: dict | None = None) -> str:
    """A Checkmk `<<<local>>>` section, one service per job (`sar-backup_<job>`), for sites without a
    STARFACE plugin: state, age/size/duration metrics and the same text as the Nagios check."""
    lines = ["<<<local>>>"]
    for name in sorted(statuses):
        state, text = nagios_status({name: statuses[name]}, warn, crit, now, intervals, drills)
        summary, _sep, perf = text.partition(" | ")
        metrics = []
        for item in perf.split():
            key, _eq, value = item.partition("=")
            key = key.strip("'")[len(name) + 1:]
            fields = value.split(";")
            number = fields[0].rstrip("sB")
            if number == "U":
                continue
            metrics.append("%s=%s" % (key, ";".join([number] + fields[1:3])))
        lines.append('%d "sar-backup_%s" %s %s' % (state, name, "|".join(metrics) or "-", summary.split(" - ", 1)[-1]))
    return "\n".join(lines) + "\n"


def _human(seconds: int) -> str:
    if seconds >= 86400:
        return "%dd%02dh" % (seconds // 86400, seconds % 86400 // 3600)
    if seconds >= 3600:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dm%02ds" % (seconds // 60, seconds % 60)


# -- report mails ------------------------------------------------------------------
def wants_mail(job: dict, result: dict) -> bool:
    """report_on: failure (default), always, never. A deferral is not mailed (the
    final outcome is); a run that was not due is not a run."""
    if not job.get("report_to") or job.get("report_on") == "never":
        return False
    if result.get("code") in ("deferred", "notDue"):
        return False
    return job.get("report_on") == "always" or result.get("code") != "successful"


def report_text(result: dict) -> tuple:
    """(subject, plain text, html) of a run report. Never holds a secret: the
    result only carries masked locations and error messages."""
    import html as html_mod  # local: only reports need it
    ok = result.get("code") == "successful"
    subject = "[sar-backup] %s on %s: %s" % (result["job"], result["host"], "successful" if ok else "FAILED (%s)" % result["code"])
    archive = result.get("archive") or {}
    lines = [
        "Backup job:  %s" % result["job"],
        "Host:        %s" % result["host"],
        "Started:     %s" % result.get("started"),
        "Finished:    %s" % result.get("finished"),
        "Duration:    %ss" % result.get("duration"),
        "Result:      %s" % result.get("code"),
        "Archive:     %s (%s, sha256 %s)" % (archive.get("name") or "-", format_size(archive.get("size")), archive.get("sha256") or "-"),
    ]
    if result.get("error"):
        lines.append("Error:       %s" % result["error"])
    lines.append("")
    lines.append("Targets:")
    rows = []
    for t in result.get("targets", []):
        lines.append("  %d. %-8s %-40s %-16s %s" % (t.get("index", 0) + 1, t.get("type"), t.get("location") or "",
                                                    t.get("code"), t.get("error") or ""))
        rows.append("<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % tuple(
            [t.get("index", 0) + 1] + [html_mod.escape(str(v)) for v in (
                t.get("type"), t.get("location") or "", t.get("code"), format_size(t.get("bytes")), t.get("error") or "")]))
    text = "\n".join(lines) + "\n"
    head = "".join("<tr><th align=left>%s</th><td>%s</td></tr>" % (html_mod.escape(k), html_mod.escape(str(v))) for k, v in (
        ("Backup job", result["job"]), ("Host", result["host"]), ("Started", result.get("started")),
        ("Duration", "%ss" % result.get("duration")), ("Result", result.get("code")),
        ("Archive", "%s (%s)" % (archive.get("name") or "-", format_size(archive.get("size")))),
        ("Error", result.get("error") or "-")))
    html = ("<html><body><h3>%s</h3><table>%s</table><h4>Targets</h4><table border=1 cellpadding=4>"
            "<tr><th>#</th><th>Type</th><th>Location</th><th>Result</th><th>Bytes</th><th>Error</th></tr>%s</table>"
            "</body></html>") % (html_mod.escape(subject), head, "".join(rows))
    return subject, text, html


def mail_report(settings: dict, job: dict, result: dict) -> None:
    from . import mailer  # local: the mailer is only needed when a report goes out
    subject, text, html = report_text(result)
    smtp = settings.get("smtp") or {}
    msg = mailer.build_message(mailer.sender_of(smtp), job["report_to"], subject, text, html=html)
    mailer.send_message(smtp, msg)


def drill_report_text(drill: dict) -> tuple:
    """(subject, plain text, html) of a restore drill report; holds no secret."""
    import html as html_mod  # local: only reports need it
    ok = drill.get("code") == "successful"
    archive = drill.get("archive") or {}
    subject = "[sar-backup] restore drill of %s on %s: %s" % (drill["job"], drill.get("host"),
                                                              "passed" if ok else "FAILED (%s)" % drill.get("code"))
    checks = drill.get("checks") or {}
    lines = [
        "Restore drill of job: %s" % drill["job"],
        "Host:        %s" % drill.get("host"),
        "Started:     %s" % drill.get("started"),
        "Duration:    %ss" % drill.get("seconds"),
        "Result:      %s" % drill.get("code"),
        "Target:      %s" % drill.get("target"),
        "Archive:     %s (%s, sha256 %s)" % (archive.get("name") or "-", format_size(archive.get("size")),
                                             archive.get("sha256") or "-"),
        "Checked:     %d table(s), %d file(s), %s" % (
            checks.get("tables", 0), checks.get("files", 0), format_size(checks.get("bytes", 0))),
    ]
    if drill.get("error"):
        lines.append("Error:       %s" % drill["error"])
    text = "\n".join(lines) + "\n"
    html = "<html><body><h3>%s</h3><pre>%s</pre></body></html>" % (html_mod.escape(subject), html_mod.escape(text))
    return subject, text, html


def mail_drill_report(settings: dict, job: dict, drill: dict) -> None:
    from . import mailer  # local: the mailer is only needed when a report goes out
    subject, text, html = drill_report_text(drill)
    smtp = settings.get("smtp") or {}
    msg = mailer.build_message(mailer.sender_of(smtp), job["report_to"], subject, text, html=html)
    mailer.send_message(smtp, msg)
