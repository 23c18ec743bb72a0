# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations

DOCUMENTATION = r"""
name: sar_backup_report
short_description: Turn the sar_backup_info results of a fleet into the rows of the fleet report
description:
  - Takes what M(sar.backup.sar_backup_info) (with O(sar.backup.sar_backup_info#module:archives=true)) returned on each
    appliance, keyed by inventory host name, and returns one row per appliance and job with its state - V(ok),
    V(warning), V(critical), or V(unknown) when the job or its status file cannot be read - plus the hosts and targets
    that could not be reached. C(playbooks/report.yml) renders the result as an HTML page and writes it as JSON.
  - The state follows the same rules as C(sar-backup status) (the Nagios check) on the appliance. A failed last run is
    V(critical). Freshness applies to scheduled jobs only - one that never ran is V(warning), one whose last success
    is older than O(warn) V(warning), older than O(crit) V(critical). A V(manual) job is judged by its last run alone
    (never run is V(ok)).
  - A job whose last restore drill (status key C(last_drill)) did not succeed is V(critical).
  - A host given without C(jobs) in its result (unreachable, or the module failed there) is listed under
    RV(_value.unreachable_hosts) instead of having rows; a host with no job at all gets one row without a job,
    state V(unknown).
version_added: 0.1.0
author:
  - sar-backup engineers (@sar-backup)
options:
  _input:
    description:
      - Inventory host name -> the registered result of M(sar.backup.sar_backup_info) on that host (also when the
        host was unreachable or the task failed there, with C(ignore_unreachable)/C(ignore_errors)).
    type: dict
    required: true
  warn:
    description: A scheduled job whose last success is older than this is V(warning). Seconds, or C(30m), C(26h), C(2d).
    type: raw
    default: 26h
  crit:
    description: A scheduled job whose last success is older than this is V(critical). Seconds, or C(30m), C(50h), C(3d).
    type: raw
    default: 50h
  now:
    description: The time to measure ages from, in seconds since the epoch (default - now).
    type: float
  points:
    description: At most this many archives (the newest) per job in RV(_value.rows[].archives), for the size chart.
    type: int
    default: 30
seealso:
  - module: sar.backup.sar_backup_info
"""

EXAMPLES = r"""
- name: What every appliance has
  sar.backup.sar_backup_info:
    archives: true
  register: backups

- name: One row per appliance and job, with its state
  ansible.builtin.set_fact:
    fleet: >-
      {{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, 'backups')))
         | sar.backup.sar_backup_report(warn='26h', crit='50h') }}
  delegate_to: localhost
  run_once: true

- name: Fail when any job is critical
  ansible.builtin.assert:
    that: fleet.summary.critical == 0
    fail_msg: "{{ fleet.rows | selectattr('state', 'eq', 'critical') | map(attribute='reason') | join('; ') }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: The fleet report.
  type: dict
  contains:
    generated:
      description: When the report was computed (O(now)), ISO 8601 with UTC offset.
      type: str
      sample: "2026-12-01T08:00:00+00:00"
    thresholds:
      description: O(warn) and O(crit) in seconds.
      type: dict
      sample: {"warn": 93600, "crit": 180000}
    state:
      description: The worst state of all rows (V(critical) when a host could not be reached).
      type: str
      sample: warning
    summary:
      description: Number of rows per state, and of unreachable hosts and targets.
      type: dict
      sample: {"ok": 7, "warning": 1, "critical": 1, "unknown": 0, "unreachable_hosts": 0, "unreachable_targets": 1}
    rows:
      description: One per appliance and job, sorted by host and job.
      type: list
      elements: dict
      contains:
        host:
          description: Inventory host name.
          type: str
        job:
          description: Job name (null for a host without jobs).
          type: str
        interval:
          description: The job's interval (V(manual), V(daily), ...).
          type: str
        state:
          description: V(ok), V(warning), V(critical) or V(unknown).
          type: str
        reason:
          description: Why, in the words of C(sar-backup status).
          type: str
          sample: "last run connectFailed at 2026-12-01T02:30:04+01:00, never succeeded"
        last_run:
          description: The last run (C(finished), C(code), C(duration)), null when it never ran.
          type: dict
        last_success:
          description: End of the last successful run, or null.
          type: str
        success_age:
          description: Seconds since the last success, or null.
          type: int
        success_age_text:
          description: The same, for people (C(1d02h), C(3h10m), C(4m05s)), or C(never).
          type: str
        size:
          description: Bytes of the last run's archive (else of the newest archive found on a target), or null.
          type: int
        size_text:
          description: The same, for people.
          type: str
        targets:
          description: Per target of the job - C(index), C(type), C(location) and the last run's result C(code) (null
            before the first run); C(unreachable) (the listing's result code) when the archives could not be listed.
          type: list
          elements: dict
        drill:
          description: The status file's C(last_drill) (C(time), C(code), C(target), C(archive)), or null.
          type: dict
        archives:
          description: The job's archives (C(name), C(size), C(size_text), C(created)), one per name across its targets, oldest first.
          type: list
          elements: dict
    unreachable_hosts:
      description: Hosts without a report - C(host) and C(msg) (unreachable, or the module failed).
      type: list
      elements: dict
    unreachable_targets:
      description: Targets whose archives could not be listed - C(host), C(job), C(target), C(type), C(location),
        C(code), C(error).
      type: list
      elements: dict
"""

import datetime
import time

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.sar.backup.plugins.module_utils import report
from ansible_collections.sar.backup.plugins.module_utils.errors import SarError
from ansible_collections.sar.backup.plugins.module_utils.fsutil import format_size, parse_duration

STATES = ("ok", "warning", "critical", "unknown")
_NAGIOS_STATE = {0: "ok", 1: "warning", 2: "critical", 3: "unknown"}
_RANK = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}


def _iso_epoch(value):
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _plain(value):
    """Plain dicts/lists/scalars (what Ansible hands over may be lazy containers)."""
    if isinstance(value, dict):
        return {to_text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _drill(status: dict):
    drill = (status or {}).get("last_drill")
    if not isinstance(drill, dict):
        return None
    code = drill.get("code") or drill.get("result")
    return {
        "time": drill.get("finished") or drill.get("time") or drill.get("started"),
        "code": code,
        "success": code == "successful",
        "target": drill.get("target"),
        "archive": drill.get("archive"),
    }


def _archives(info: dict, job: str, points: int) -> list:
    seen = {}
    for entry in info.get("archives") or []:
        if entry.get("job") != job or not entry.get("name"):
            continue
        size = entry.get("size") or 0
        seen.setdefault(entry["name"], {"name": entry["name"], "size": size,
                                        "size_text": format_size(size),
                                        "created": entry.get("created")})
    ordered = sorted(seen.values(), key=lambda a: (_iso_epoch(a["created"]) or 0, a["name"]))
    return ordered[-points:] if points > 0 else []


def _targets(entry: dict, status, unreachable: list) -> list:
    out = []
    ran = {t.get("index", i): t for i, t in enumerate((status or {}).get("targets") or [])}
    configured = ((entry.get("job") or {}).get("targets")) or []
    for index in range(max(len(configured), len(ran))):
        last = ran.get(index) or {}
        options = configured[index] if index < len(configured) else {}
        row = {"index": index, "type": last.get("type") or options.get("type"),
               "location": last.get("location"), "code": last.get("code"), "error": last.get("error"),
               "unreachable": None}
        for bad in unreachable:
            if bad.get("target") == index:
                row["unreachable"] = bad.get("code")
                row["location"] = row["location"] or bad.get("location")
        out.append(row)
    return out


def _row(host: str, info: dict, entry: dict, warn: int, crit: int, now: float, points: int) -> dict:
    name = entry.get("name")
    status = entry.get("last_run")
    job = entry.get("job") or {}
    interval = job.get("interval") or (status or {}).get("interval")
    unreachable = [u for u in info.get("unreachable_targets") or [] if u.get("job") == name]
    if entry.get("error") or not job:
        state, reason = "unknown", entry.get("error") or "job file cannot be read"
    else:
        code, text = report.nagios_status({name: status}, warn, crit, now, {name: interval})
        state = _NAGIOS_STATE.get(code, "unknown")
        summary = text.split(" | ", 1)[0].split(" - ", 1)[-1]
        reason = summary[len(name) + 2:] if summary.startswith(name + ": ") else summary
    drill = _drill(status)
    if drill and drill["code"] and not drill["success"]:
        state = "critical"
        reason += ", last restore drill %s" % drill["code"]
    success = _iso_epoch((status or {}).get("last_success"))
    age = None if success is None else max(0, int(now - success))
    archives = _archives(info, name, points)
    size = ((status or {}).get("archive") or {}).get("size")
    if size is None and archives:
        size = archives[-1]["size"]
    return {
        "host": host,
        "job": name,
        "interval": interval,
        "state": state,
        "reason": reason,
        "last_run": None if status is None else {
            "finished": status.get("finished"), "started": status.get("started"),
            "code": status.get("code"), "duration": status.get("duration"), "error": status.get("error")},
        "last_success": (status or {}).get("last_success"),
        "success_age": age,
        "success_age_text": "never" if age is None else report._human(age),  # pylint: disable=protected-access
        "size": size,
        "size_text": "—" if size is None else format_size(size),
        "targets": _targets(entry, status, unreachable),
        "drill": drill,
        "archives": archives,
    }


def fleet_report(results, warn="26h", crit="50h", now=None, points=30):
    """The fleet report (see DOCUMENTATION) from {inventory host: sar_backup_info result}."""
    if not isinstance(results, dict):
        raise AnsibleFilterError("sar_backup_report: expects a dict of host name -> sar_backup_info result, got %s"
                                 % type(results).__name__)
    try:
        warn_s, crit_s = parse_duration(warn, "warn"), parse_duration(crit, "crit")
    except SarError as exc:
        raise AnsibleFilterError("sar_backup_report: %s" % exc)
    now = time.time() if now is None else float(now)
    rows, lost_hosts, lost_targets = [], [], []
    for host in sorted(results, key=to_text):
        info = _plain(results[host]) if isinstance(results[host], dict) else {}
        host = to_text(host)
        if not isinstance(info.get("jobs"), list):
            why = info.get("msg") or ("unreachable" if info.get("unreachable") else "no sar_backup_info result")
            lost_hosts.append({"host": host, "msg": to_text(why), "unreachable": bool(info.get("unreachable"))})
            continue
        for bad in info.get("unreachable_targets") or []:
            lost_targets.append(dict(bad, host=host))
        if not info["jobs"]:
            rows.append({"host": host, "job": None, "interval": None, "state": "unknown",
                         "reason": "no backup jobs configured", "last_run": None, "last_success": None,
                         "success_age": None, "success_age_text": "never", "size": None, "size_text": "—",
                         "targets": [], "drill": None, "archives": []})
        for entry in sorted(info["jobs"], key=lambda e: to_text(e.get("name"))):
            rows.append(_row(host, info, entry, warn_s, crit_s, now, int(points)))
    summary = {state: sum(1 for r in rows if r["state"] == state) for state in STATES}
    summary.update(unreachable_hosts=len(lost_hosts), unreachable_targets=len(lost_targets))
    worst = max([r["state"] for r in rows] + ["ok"], key=_RANK.get)
    if lost_hosts:
        worst = "critical"
    return {
        "generated": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "thresholds": {"warn": warn_s, "crit": crit_s},
        "state": worst,
        "summary": summary,
        "rows": rows,
        "unreachable_hosts": lost_hosts,
        "unreachable_targets": lost_targets,
    }


class FilterModule:
    """sar.backup.sar_backup_report"""

    def filters(self):
        return {"sar_backup_report": fleet_report}
