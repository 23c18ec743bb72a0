# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Benchmark: a restore drill of the sample appliance against a plain restore of the same archive.

The appliance is the `run` bench's (bench_run.py: a large `cdr` table dumped by the real pg_dump,
incompressible voicemail and announcements, the configuration files), built once per size under the
work dir `bench/output/drill/` (outside the source tree), its database in a private PostgreSQL
cluster per bench invocation. One `sar-backup run` makes the archive (zstd, one local target); then,
in turn (A B C A B C ...), `BENCH_REPEAT` times (default 3), medians kept:

- drill, scratch database: `sar-backup drill JOB` as the profile's user, who may create databases:
  the dumps go into `sar_drill_<job>_<time>` on the appliance's server;
- drill, private cluster: the same archive drilled by a second configuration whose profile user has no
  CREATEDB: initdb + start of a private cluster of the server's version in staging, the dumps restored
  there, stopped and removed;
- plain restore: `sar-backup restore --job JOB --yes` of the same archive into the appliance (its
  trees and database replaced by what they already hold).

`ratio` = drill / restore wall time (issue 9 aims at <= 1.5). Peak RSS is ru_maxrss of the largest
process of each side that sar-backup waited for (itself, pg_restore, psql, initdb, pg_ctl); the
PostgreSQL server processes are not ours to count (the appliance's server, or the private cluster's
daemonized postmaster) - the scratch database's work happens in the appliance's server either way.

    .venv/bin/python bench/bench_drill.py [SIZE_BYTES]      # one size, prints JSON
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import bench_run  # noqa: E402  pylint: disable=wrong-import-position
from bench_run import CLI, GB, MB, REPEAT, flush, timed  # noqa: E402  pylint: disable=wrong-import-position
from harness.postgres import PostgresCluster, quote_literal  # noqa: E402  pylint: disable=wrong-import-position

JOB = "zstd"
SIDES = ("drill_scratch", "drill_private", "restore")


class DrillBench:
    """The appliance of one size, its archive, and the three sides."""

    def __init__(self, workdir: str, cluster, size: int):
        self.app = bench_run.Appliance(workdir, cluster, size)
        os.chmod(self.app.work, 0o755)  # the private cluster's OS user (postgres) must reach staging below it
        self.cluster = cluster
        settings = self.app.store.settings()
        # The second configuration: the same archive and key, a profile user without CREATEDB.
        self.user = "drill_bench_%s" % secrets.token_hex(3)
        password = secrets.token_urlsafe(12)
        cluster.psql("CREATE ROLE %s LOGIN NOCREATEDB NOSUPERUSER PASSWORD %s" % (self.user, quote_literal(password)))
        from ansible_collections.sar.backup.plugins.module_utils.store import Store  # pylint: disable=import-outside-toplevel
        self.private = Store(os.path.join(self.app.work, "etc-nocreatedb"))
        other = json.loads(json.dumps(settings))
        other["profile"]["database"].update(user=self.user, password=password)
        other.update(staging_dir=os.path.join(self.app.work, "staging-nocreatedb"),
                     status_dir=os.path.join(self.app.work, "status-nocreatedb"))
        self.private.write_settings(other)
        self.private.write_job(self.app.store.load_job(JOB))

    def make_archive(self) -> None:
        shutil.rmtree(self.app.archives, ignore_errors=True)
        res = timed([[sys.executable, "-c", CLI, "--config-dir", self.app.store.config_dir, "run", JOB]], env=self.app.env)
        self.run_s = res["seconds"]
        for name in ("signing.key", "signing.pub"):  # the drill checks the archive's signature against the host's key
            src = os.path.join(self.app.store.config_dir, name)
            if os.path.exists(src):
                shutil.copy2(src, os.path.join(self.private.config_dir, name))
        found = [os.path.join(d, f) for d, _s, fs in os.walk(self.app.archives) for f in fs if f.endswith(".sar")]
        self.archive_bytes = os.path.getsize(found[0])

    def side(self, which: str) -> dict:
        flush()
        config = self.private.config_dir if which == "drill_private" else self.app.store.config_dir
        argv = [sys.executable, "-c", CLI, "--config-dir", config]
        argv += ["drill", JOB] if which.startswith("drill") else ["restore", "--job", JOB, "--yes"]
        return timed([argv], env=self.app.env)

    def close(self) -> None:
        shutil.rmtree(self.app.work, ignore_errors=True)
        self.cluster.drop_database(self.app.db)
        self.cluster.psql("DROP ROLE IF EXISTS %s" % self.user)


def measure(bench: DrillBench) -> dict:
    runs = {side: [] for side in SIDES}
    for dummy in range(REPEAT):
        for side in SIDES:
            runs[side].append(bench.side(side))
    out = {}
    for side in SIDES:
        out[side + "_s"] = round(statistics.median(r["seconds"] for r in runs[side]), 2)
        out[side + "_rss_mb"] = round(max(r["peak_rss_kb"] for r in runs[side]) / 1024.0, 1)
        out[side + "_cpu_s"] = round(statistics.median(r["cpu_s"] for r in runs[side]), 2)
        out[side + "_runs"] = [round(r["seconds"], 2) for r in runs[side]]
    out["ratio_scratch"] = round(out["drill_scratch_s"] / out["restore_s"], 3)
    out["ratio_private"] = round(out["drill_private_s"] / out["restore_s"], 3)
    return out


def run(workdir: str, size_bytes: int) -> dict:
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o755)
    started = time.time()
    with PostgresCluster(base_dir=workdir) as cluster:
        bench = DrillBench(workdir, cluster, size_bytes)
        try:
            bench.make_archive()
            res = measure(bench)
        finally:
            bench.close()
    size_mb = size_bytes // MB
    rows = [{"size_MB": size_mb, "side": label, "seconds (median)": res[side + "_s"],
             "ratio (drill / restore, <= 1.5 aim)": ratio, "peak_rss_MB": res[side + "_rss_mb"],
             "cpu_s": res[side + "_cpu_s"], "runs_s": res[side + "_runs"]}
            for side, label, ratio in (
                ("drill_scratch", "`sar-backup drill` (scratch database, CREATEDB)", res["ratio_scratch"]),
                ("drill_private", "`sar-backup drill` (private cluster, no CREATEDB)", res["ratio_private"]),
                ("restore", "`sar-backup restore --job --yes` (plain restore)", 1.0))]
    result = {"title": "restore drill vs plain restore of the same archive (time ratio: lower is better)",
              "rows": rows, "ratio": res["ratio_scratch"], "ratio_private_cluster": res["ratio_private"],
              "points": res}
    result["notes"] = (
        "The archive: `sar-backup run` of the %d MB sample appliance (%.1f MB .sar, zstd, local target; the run took "
        "%.1fs). Each side is the `sar-backup` CLI in a subprocess, taken in turn, median of %d. Ratio = drill / "
        "restore wall time (issue 9: <= 1.5). The drill verifies the archive, restores trees into a scratch folder "
        "and the dumps into isolation, then counts every table's rows and re-hashes every restored file; the "
        "restore verifies, extracts next to the live trees, swaps them in and restores the dumps into the live "
        "database. Peak RSS = largest process sar-backup waited for (wait4); PostgreSQL server processes are not "
        "counted. The bench took %.0fs."
        % (size_mb, bench.archive_bytes / MB, bench.run_s, REPEAT, time.time() - started))
    return result


if __name__ == "__main__":
    SIZE = int(float(sys.argv[1])) if len(sys.argv) > 1 else GB
    print(json.dumps(run(os.path.join(BENCH, "output", "drill"), SIZE), indent=2, default=str))
