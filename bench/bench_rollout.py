# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Benchmark: rollout time of playbooks/site.yml to 1, 5 and 10 simulated appliances.

Each appliance is an sshd in a private mount + UTS namespace (tests/harness/fleet.py),
reached by ansible-playbook over real SSH on loopback (pipelining on, forks = number
of appliances). The role declares one daily job with a local target; the runtime's
virtualenv is installed from a wheelhouse prepared before the timings (pip with
`--no-index --find-links`), as an offline site would. One PostgreSQL cluster backs
every appliance's profile (the rollout does not dump it).

- first_run_s: site.yml on fresh appliances (venv + wheels, engine, settings, job,
  units, timers);
- rerun_s: the same play again (idempotent: `changed` must be 0 everywhere).

The fleet of each size is started fresh; the wheelhouse build and fleet start are
not timed.

    .venv/bin/python bench/bench_rollout.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from harness import appliance as sample  # noqa: E402  pylint: disable=wrong-import-position
from harness.fleet import Fleet, fleet_profile, wheelhouse  # noqa: E402  pylint: disable=wrong-import-position
from harness.postgres import PostgresCluster  # noqa: E402  pylint: disable=wrong-import-position

SIZES = (1, 5, 10)
MAX_FORKS = 10
SITE = os.path.join(ROOT, "playbooks", "site.yml")
ANNOUNCEMENTS = "/var/lib/sar-backup/fleet-announcements"
JOB = {"name": "nightly", "interval": "daily", "start": "2025-01-06 02:30", "data": ["core", "announcements"],
       "targets": [{"type": "local"}]}


def _check(report: dict, hosts: list, rerun: bool) -> str | None:
    """None when every host converged (and, on a re-run, changed nothing); else why not."""
    stats = report.get("stats", {})
    for host in hosts:
        entry = stats.get(host)
        if entry is None:
            return "%s missing from the recap" % host
        if entry["failures"] or entry["unreachable"]:
            failed = [t for t in report.get("tasks", []) if t["host"] == host and t["status"] in ("failed", "unreachable")]
            return "%s: failed=%d unreachable=%d %s" % (host, entry["failures"], entry["unreachable"],
                                                        json.dumps(failed, default=str)[:800])
        if rerun and entry["changed"]:
            return "%s: changed=%d on the re-run" % (host, entry["changed"])
    return None


def run(workdir: str, playbook: str = SITE, sizes=SIZES) -> dict:
    if not os.path.exists(playbook):
        raise RuntimeError("%s does not exist yet" % playbook)
    base = tempfile.mkdtemp(prefix="bench-rollout-", dir=workdir)
    os.chmod(base, 0o755)
    wheels = wheelhouse()
    rows = []
    problems = []
    try:
        with PostgresCluster() as cluster:
            profile = fleet_profile(sample.build_appliance(os.path.join(base, "shared"), cluster), ANNOUNCEMENTS)
            for count in sizes:
                forks = min(count, MAX_FORKS)
                with Fleet(count, base_dir=base) as fleet:
                    fleet.prepare_announcements(ANNOUNCEMENTS)
                    fleet.write_inventory({
                        "sar_backup_profile": profile,
                        "sar_backup_jobs": [JOB],
                        "sar_backup_pip_extra_args": "--no-index --find-links %s" % wheels,
                    })
                    row = {"appliances": count, "forks": forks}
                    for key, rerun in (("first_run_s", False), ("rerun_s", True)):
                        started = time.monotonic()
                        _run, report = fleet.playbook(playbook, base, forks=forks)
                        row[key] = round(time.monotonic() - started, 1)
                        problem = _check(report, fleet.hosts, rerun)
                        if problem:
                            problems.append("%d appliances, %s: %s" % (count, key, problem))
                    rows.append(row)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    notes = ("Simulated appliances: one sshd each in a private mount + UTS namespace (own host name and tmpfs "
             "over /etc/sar-backup, /opt/sar-backup, /var/lib/sar-backup, /run/lock, /usr/local/bin, "
             "/etc/systemd/system, /root), reached by ansible-playbook over real SSH on loopback with pipelining; "
             "forks = number of appliances (max %d). The runtime venv is installed from a local wheelhouse "
             "(pip --no-index --find-links); wheelhouse build and fleet start are not timed. %d CPU(s): with more "
             "appliances than cores the first run is bound by pip installing the wheels on every appliance."
             % (MAX_FORKS, os.cpu_count() or 0))
    if problems:
        notes += " PROBLEMS: " + "; ".join(problems)
    return {"title": "Rollout with playbooks/site.yml", "rows": rows, "notes": notes}


if __name__ == "__main__":
    print(json.dumps(run(tempfile.gettempdir()), indent=2))
