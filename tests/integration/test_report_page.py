# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The fleet report (issue 9, "Fleet report") through real playbooks, looked at in a real browser.

Five inventory hosts, four of them "appliances" that connect locally, each with its own config_dir
(host var sar_backup_config_dir, given to every module through module_defaults of the action group
sar.backup.sar_backup) and its own archive/staging/status/lock paths under tmp:

- healthy   job nightly (daily, local target) run successfully twice: OK, a size chart of 2 points
- failing   job offsite (daily, SFTP to 127.0.0.1:1, nothing listens) run once: connectFailed, CRITICAL;
            the target is also listed as not reachable
- neverrun  job weekly (weekly, local) saved, never run: WARNING
- manual    job adhoc (manual) never run: OK; job drilled (manual) run successfully, then its status
            file gets a failed `last_drill` (the key restore drills write): CRITICAL
- dead      an SSH host on a closed port: listed as not reached, and the report still gets written

playbooks/report.yml then writes the page and the JSON; headless Chromium (Debian's package) loads the
page, the test checks the rendered DOM and saves a screenshot to tests/output/report-page.png. A
second report run (default directory, relative to where ansible-playbook runs) reports the same rows.

Run: cd /work/main && .venv/bin/python -m pytest -p no:cacheprovider -q tests/integration/test_report_page.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser

import pytest
import yaml

from harness.playbook import ROOT, run_playbook

REPORT = os.path.join(ROOT, "playbooks", "report.yml")
OUTPUT = os.path.join(ROOT, "tests", "output")
SCREENSHOT = os.path.join(OUTPUT, "report-page.png")
APPLIANCES = ("healthy", "failing", "neverrun", "manual")
HOSTS = APPLIANCES + ("dead",)
JOBS = {
    "healthy": [{"name": "nightly", "interval": "daily", "start": "2025-01-06 02:30", "data": ["announcements"],
                 "targets": [{"type": "local"}]}],
    "failing": [{"name": "offsite", "interval": "daily", "start": "2025-01-06 03:00", "data": ["announcements"],
                 "targets": [{"type": "sftp", "server": "127.0.0.1", "port": 1, "username": "pbx",
                              "password": "{{ report_sftp_password }}", "host_key_policy": "accept_new"}]}],
    "neverrun": [{"name": "weekly", "interval": "weekly", "start": "2025-01-06 04:00", "data": ["announcements"],
                  "targets": [{"type": "local"}]}],
    "manual": [{"name": "adhoc", "interval": "manual", "data": ["announcements"], "targets": [{"type": "local"}]},
               {"name": "drilled", "interval": "manual", "data": ["announcements"], "targets": [{"type": "local"}]}],
}
RUNS = {"healthy": ["nightly", "nightly"], "failing": ["offsite"], "neverrun": [], "manual": ["drilled"]}
EXPECTED = {  # (host, job) -> state
    ("healthy", "nightly"): "ok",
    ("failing", "offsite"): "critical",
    ("neverrun", "weekly"): "warning",
    ("manual", "adhoc"): "ok",
    ("manual", "drilled"): "critical",
}
SFTP_SECRET = "sftp-pw-Report-Zr83"

pytestmark = pytest.mark.skipif(not shutil.which("chromium"),
                                reason="needs Debian's chromium package (make deps installs it)")


# -- the fleet ------------------------------------------------------------------------------
def inventory(base: str, profile: dict) -> dict:
    hosts = {}
    for host in APPLIANCES:
        root = os.path.join(base, host)
        os.makedirs(os.path.join(root, "archives"))
        hosts[host] = {
            "sar_backup_config_dir": os.path.join(root, "etc"),
            "report_settings": {
                "archive_dir": os.path.join(root, "archives"),
                "staging_dir": os.path.join(root, "staging"),
                "status_dir": os.path.join(root, "status"),
                "lock_path": os.path.join(root, "lock", "sar-backup.lock"),
            },
            "report_jobs": JOBS[host],
            "report_runs": RUNS[host],
        }
    hosts["dead"] = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1,
                     "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no"}
    return {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "sar_backup_become": False, "sar_backup_install_dir": os.path.join(base, "install"),
                 "report_profile": profile},
        "children": {"pbx_lab": {"hosts": hosts}},
    }}


SETUP = [{
    "name": "Set up the appliances",
    "hosts": ",".join(APPLIANCES),
    "gather_facts": False,
    "module_defaults": {"group/sar.backup.sar_backup": {"config_dir": "{{ sar_backup_config_dir }}"}},
    "tasks": [
        {"name": "Settings", "sar.backup.sar_backup_settings": {
            "profile": "{{ report_profile }}",
            "archive_dir": "{{ report_settings.archive_dir }}",
            "staging_dir": "{{ report_settings.staging_dir }}",
            "status_dir": "{{ report_settings.status_dir }}",
            "lock_path": "{{ report_settings.lock_path }}"}},
        {"name": "Jobs", "sar.backup.sar_backup_job": {
            "name": "{{ item.name }}", "interval": "{{ item.interval }}", "start": "{{ item.start | default(omit) }}",
            "data": "{{ item.data }}", "targets": "{{ item.targets }}"},
         "loop": "{{ report_jobs }}", "loop_control": {"label": "{{ item.name }}"}},
        # Archive names carry the time to the second: two runs of a job need distinct seconds.
        {"name": "Runs", "sar.backup.sar_backup_run": {"job": "{{ item }}"},
         "loop": "{{ report_runs }}", "loop_control": {"pause": 1}, "ignore_errors": True},
    ],
}]


class Fleet:
    def __init__(self, base: str, inventory_path: str):
        self.base = base
        self.inventory = inventory_path
        self.timings: dict = {}

    def report(self, step: str, extravars: dict):
        started = time.monotonic()
        run = run_playbook(None, self.base, extravars=dict(extravars, sar_backup_hosts=":".join(HOSTS)),
                           inventory=self.inventory, playbook_path=REPORT)
        self.timings[step] = time.monotonic() - started
        return run


@pytest.fixture(scope="module")
def fleet(appliance, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("report-fleet"))
    inv = os.path.join(base, "inventory.yml")
    with open(inv, "w", encoding="utf-8") as handle:
        yaml.safe_dump(inventory(base, appliance.profile), handle)
    env = Fleet(base, inv)
    started = time.monotonic()
    setup = run_playbook(SETUP, base, extravars={"report_sftp_password": SFTP_SECRET}, inventory=inv)
    env.timings["setup"] = time.monotonic() - started
    assert setup.rc == 0, setup.stdout[-6000:] + setup.stderr[-3000:]
    failed_run = setup.results("failing")["Runs"]
    assert failed_run["results"][0]["code"] == "connectFailed", failed_run
    assert setup.results("healthy")["Runs"]["results"][1]["code"] == "successful"
    # What a restore drill leaves in the status file (issue 9): a failed one makes the job CRITICAL.
    status = os.path.join(base, "manual", "status", "drilled.json")
    with open(status, encoding="utf-8") as handle:
        content = json.load(handle)
    content["last_drill"] = {"started": "2026-12-06T03:00:00+00:00", "finished": "2026-12-06T03:01:10+00:00",
                             "archive": "drilled_pbx_20261206T020000Z.sar", "target": 0, "code": "verifyFailed",
                             "seconds": 70.2, "tables": 12, "files": 40}
    with open(status, "w", encoding="utf-8") as handle:
        json.dump(content, handle)
    env.report_dir = os.path.join(base, "out")
    env.first = env.report("report", {"sar_backup_report_dir": env.report_dir})
    return env


# -- reading what the browser shows -----------------------------------------------------------
class RenderedPage(HTMLParser):
    """Rows of the jobs table (data attributes, text, chart points) and every URL-ish attribute."""

    def __init__(self):
        super().__init__()
        self.rows: list = []
        self.lost_hosts: list = []
        self.lost_targets: list = []
        self.urls: list = []
        self.tags: set = set()
        self._row = None
        self._table = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href", "xlink:href", "srcset", "action", "xmlns", "data", "poster"):
            if attrs.get(key):
                self.urls.append((tag, key, attrs[key]))
        if tag == "table":
            self._table = attrs.get("id")
        if tag == "tr" and "job" in (attrs.get("class") or "").split():
            self._row = {"host": attrs.get("data-host"), "job": attrs.get("data-job"),
                         "state": attrs.get("data-state"), "class": attrs.get("class"), "points": 0,
                         "svg_points": None, "text": ""}
            self.rows.append(self._row)
        elif tag == "tr" and self._table == "unreachable-hosts" and attrs.get("data-host"):
            self.lost_hosts.append(attrs["data-host"])
        elif tag == "tr" and self._table == "unreachable-targets" and attrs.get("data-host"):
            self.lost_targets.append((attrs["data-host"], attrs.get("data-job")))
        if self._row is not None and tag == "svg":
            self._row["svg_points"] = int(attrs.get("data-points"))
        if self._row is not None and tag == "circle" and attrs.get("class") == "pt":
            self._row["points"] += 1

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._row is not None:
            self._row["text"] += data


def chromium(*args, timeout=90):
    profile = tempfile.mkdtemp(prefix="sar-report-chromium-")
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--user-data-dir=" + profile, "--no-first-run", "--hide-scrollbars"] + list(args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def page(fleet):
    assert fleet.first.rc == 0, fleet.first.stdout[-6000:] + fleet.first.stderr[-3000:]
    html = os.path.join(fleet.report_dir, "sar-backup-report.html")
    os.makedirs(OUTPUT, exist_ok=True)
    started = time.monotonic()
    dom = chromium("--dump-dom", "file://" + html)
    if os.path.exists(SCREENSHOT):
        os.remove(SCREENSHOT)
    chromium("--screenshot=" + SCREENSHOT, "--window-size=1400,900", "file://" + html)
    fleet.timings["chromium"] = time.monotonic() - started
    parsed = RenderedPage()
    parsed.feed(dom)
    with open(html, encoding="utf-8") as handle:
        raw = handle.read()
    return {"dom": dom, "parsed": parsed, "raw": raw}


def report_json(directory: str) -> dict:
    with open(os.path.join(directory, "sar-backup-report.json"), encoding="utf-8") as handle:
        return json.load(handle)


def essentials(rows: list) -> list:
    """What a report says about each row, without what moves with the clock (ages)."""
    keep = ("host", "job", "interval", "state", "last_run", "last_success", "size", "targets", "drill", "archives")
    return [{k: r[k] for k in keep} for r in rows]


# -- the tests ------------------------------------------------------------------------------
def test_rendered_rows_and_states(page):
    rows = page["parsed"].rows
    assert [(r["host"], r["job"]) for r in rows] == sorted(EXPECTED)  # one row per appliance and job
    states = {(r["host"], r["job"]): r["state"] for r in rows}
    assert states == EXPECTED
    for row in rows:
        assert "state-" + row["state"] in row["class"].split()
        assert row["state"].upper() in row["text"]  # the badge people read
    by_key = {(r["host"], r["job"]): r for r in rows}
    healthy = by_key[("healthy", "nightly")]
    assert healthy["points"] == 2 and healthy["svg_points"] == 2  # two runs: two archives in the chart
    assert "successful" in healthy["text"]
    failing = by_key[("failing", "offsite")]
    assert "connectFailed" in failing["text"] and failing["points"] == 0
    assert "never run" in by_key[("neverrun", "weekly")]["text"]
    assert "never run" in by_key[("manual", "adhoc")]["text"]
    assert "verifyFailed" in by_key[("manual", "drilled")]["text"]  # the last drill column
    assert "—" in healthy["text"]  # no last_drill in its status file
    assert page["parsed"].lost_hosts == ["dead"]
    assert ("failing", "offsite") in page["parsed"].lost_targets


def test_no_external_assets(page):
    parsed = page["parsed"]
    assert parsed.urls == [], parsed.urls  # no src/href/xmlns/...: nothing is loaded from anywhere
    assert not parsed.tags & {"script", "link", "img", "iframe", "object", "embed", "video", "audio"}
    for text in (page["raw"], page["dom"]):
        assert not re.search(r"(?i)https?://", text)
        assert not re.search(r"(?i)url\s*\(|@import|@font-face", text)
    assert SFTP_SECRET not in page["raw"]


def test_json_matches_page(fleet, page):
    data = report_json(fleet.report_dir)
    assert [(r["host"], r["job"], r["state"]) for r in data["rows"]] == \
        [(r["host"], r["job"], r["state"]) for r in page["parsed"].rows]
    rows = {(r["host"], r["job"]): r for r in data["rows"]}
    healthy = rows[("healthy", "nightly")]
    assert healthy["last_run"]["code"] == "successful" and healthy["success_age"] is not None
    assert len(healthy["archives"]) == 2 and healthy["size"] == healthy["archives"][-1]["size"] > 0
    assert healthy["targets"][0]["type"] == "local" and healthy["targets"][0]["code"] == "successful"
    failing = rows[("failing", "offsite")]
    assert failing["last_run"]["code"] == "connectFailed" and failing["targets"][0]["code"] == "connectFailed"
    assert failing["targets"][0]["unreachable"] == "connectFailed"
    assert rows[("neverrun", "weekly")]["last_run"] is None and rows[("neverrun", "weekly")]["reason"] == "no run yet"
    assert rows[("manual", "adhoc")]["reason"] == "manual, never run"
    assert rows[("manual", "drilled")]["drill"]["code"] == "verifyFailed"
    assert data["summary"] == {"ok": 2, "warning": 1, "critical": 2, "unknown": 0,
                               "unreachable_hosts": 1, "unreachable_targets": 1}
    assert data["state"] == "critical"
    assert [h["host"] for h in data["unreachable_hosts"]] == ["dead"]
    assert data["thresholds"] == {"warn": 26 * 3600, "crit": 50 * 3600}
    assert SFTP_SECRET not in json.dumps(data)


def test_second_run_reports_the_same(fleet, page):
    # Default directory: sar-backup-report/ under the directory ansible-playbook runs in.
    second = fleet.report("again", {})
    assert second.rc == 0, second.stdout[-6000:] + second.stderr[-3000:]
    again = report_json(os.path.join(fleet.base, "sar-backup-report"))
    assert os.path.exists(os.path.join(fleet.base, "sar-backup-report", "sar-backup-report.html"))
    first = report_json(fleet.report_dir)
    assert essentials(again["rows"]) == essentials(first["rows"])
    assert again["unreachable_hosts"] == first["unreachable_hosts"]
    assert again["unreachable_targets"] == first["unreachable_targets"]
    # Reading changed nothing on the appliances: no new archive (the failed run stored none).
    archives = {"healthy": 2, "failing": 0, "neverrun": 0, "manual": 1}
    for host in APPLIANCES:
        folder = os.path.join(fleet.base, host, "archives", "starface-backup")
        assert sum(len(files) for _d, _s, files in os.walk(folder)) == archives[host], host


def test_screenshot_and_timing(fleet, page):
    assert os.path.getsize(SCREENSHOT) > 10000
    with open(SCREENSHOT, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    print("timings: %s" % ", ".join("%s %.1fs" % item for item in fleet.timings.items()))
    assert fleet.timings["report"] < 60
