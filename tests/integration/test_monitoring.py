# SPDX-License-Identifier: GPL-3.0-or-later
"""The monitoring extras fit the stacks people run: the Prometheus rules load in the real
`promtool` and fire on the series `sar-backup` really writes (and only then); the Grafana
dashboard only queries metrics we write, in PromQL promtool accepts."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from harness.playbook import ROOT

from ansible_collections.sar.backup.plugins.module_utils import report

RULES = os.path.join(ROOT, "extras", "prometheus", "sar-backup.rules.yml")
DASHBOARD = os.path.join(ROOT, "extras", "grafana", "sar-backup-dashboard.json")
PROMTOOL = shutil.which("promtool")
EVAL = 100 * 3600  # promtool evaluates at t seconds after the epoch: time() is this at the check
STEP = 4 * 60  # sample spacing, within Prometheus' 5 minute lookback
HOUR = 3600

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")


def iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def status(code="successful", interval="daily", success_age=HOUR):
    return {"code": code, "interval": interval, "finished": iso(EVAL - HOUR), "duration": 3.5,
            "last_success": iso(EVAL - success_age) if success_age is not None else None,
            "archive": {"size": 1000}, "targets": [{"index": 0, "type": "local", "location": "/x", "code": code}]}


def promtool(*args, cwd=None):
    return subprocess.run([PROMTOOL] + list(args), capture_output=True, text=True, check=False, cwd=cwd, timeout=120)


def test_rules_load_in_promtool():
    proc = promtool("check", "rules", RULES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout


def series_of(statuses: dict) -> list:
    """Our real textfile for these statuses, as promtool input series (constant over the test), with the
    labels a scrape adds (instance, job)."""
    out = []
    for line in report.prometheus_text(statuses).splitlines():
        if line.startswith("#"):
            continue
        metric, value = line.rsplit(" ", 1)
        metric = metric.replace("{", '{instance="pbx01",job="node",', 1)
        out.append({"series": metric, "values": "%sx%d" % (value, EVAL // STEP + 5)})
    return out


def test_rules_fire_on_the_metrics_we_write(tmp_path):
    statuses = {
        "failing": status(code="mountfail", success_age=30 * HOUR),   # failed, last success 30h ago: stale (warning)
        "ancient": status(success_age=60 * HOUR),                     # ok but 60h old: stale and critical
        "fresh": status(),                                            # nothing fires
        "adhoc": status(code="successful", interval="manual", success_age=90 * 24 * HOUR),  # manual: no freshness
        "never": status(code="diskFull", success_age=None),           # never succeeded: failed and stale
        "drilled": dict(status(), last_drill={"code": "successful", "interval": "weekly"},
                        last_drill_success=iso(EVAL - 2 * HOUR)),     # a fresh successful drill: nothing fires
        "baddrill": dict(status(), last_drill={"code": "verifyFailed", "interval": "weekly"},
                         last_drill_success=iso(EVAL - 15 * 24 * HOUR)),  # failed, and no success for 15 days
    }
    labels = {"instance": "pbx01", "job": "node"}
    with open(RULES, encoding="utf-8") as handle:
        rules = {r["alert"]: r for r in yaml.safe_load(handle)["groups"][0]["rules"]}

    def alerts(name, jobs, extra=None):
        expected = []
        for job in jobs:
            got = dict(labels, backup_job=job, **(extra or {}))
            annotations = {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: got[m.group(1)], v)
                           for k, v in rules[name]["annotations"].items()}
            expected.append({"exp_labels": dict(got, severity=rules[name]["labels"]["severity"]),
                             "exp_annotations": annotations})
        return {"eval_time": "%dm" % (EVAL // 60), "alertname": name, "exp_alerts": expected}
    target = {"target": "0", "type": "local", "location": "/x"}
    case = {"interval": "%ds" % STEP, "input_series": series_of(statuses), "alert_rule_test": [
        alerts("SarBackupLastRunFailed", ["failing", "never"]),
        alerts("SarBackupTargetFailed", ["failing", "never"], target),
        alerts("SarBackupStale", ["ancient", "failing", "never"]),
        alerts("SarBackupStaleCritical", ["ancient", "never"]),
        alerts("SarBackupDrillFailed", ["baddrill"]),
        alerts("SarBackupDrillStale", ["baddrill"]),
    ]}
    tests = {"rule_files": [RULES], "evaluation_interval": "1m", "tests": [case]}
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(tests))
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def metric_names() -> set:
    text = report.prometheus_text({"x": dict(status(), targets=[{"index": 0, "type": "local", "code": "successful"}])})
    return {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_dashboard_queries_only_our_metrics_in_valid_promql(tmp_path):
    with open(DASHBOARD, encoding="utf-8") as handle:
        dashboard = json.load(handle)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    ours = metric_names()
    for expr in exprs:
        used = set(re.findall(r"\b(sar_backup_[a-z_]+)", expr))
        assert used and used <= ours, (expr, used - ours)
    for var in dashboard["templating"]["list"]:
        for name in re.findall(r"\b(sar_backup_[a-z_]+)", var.get("query", "")):
            assert name in ours
    # PromQL syntax: promtool checks every query as a recording rule (Grafana's $variables filled in).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:q%d" % i, "expr": expr.replace("$instance", ".*").replace("$backup_job", ".*")}
        for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
