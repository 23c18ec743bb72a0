# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Benchmark: a whole `sar-backup run` (the CLI, in a subprocess) against the pipeline an admin would script.

The appliance (built once per size, outside the source tree, under the work dir
`<workdir>/run/`, /var/tmp/sar-backup-bench/run/ by default; the database part is rebuilt in a private PostgreSQL
cluster per bench invocation, with the real server):

- database `asterisk_<MB>` from tests/harness/appliance.py with a large `cdr`
  table (about 38 % of the size: rows made by the server's generate_series);
- voicemail WAVs (random samples: incompressible) in 5 mailboxes, about 57 %,
  and 24 announcement WAVs, about 5 %;
- the configuration files of the sample appliance.

Measured side by side in pairs (A B, B A, A B ...: the order turns each pair), `BENCH_REPEAT` pairs
(default 3; at least 5 for zstd), the ratio of each pair taken and their median kept (times: medians);
peak RSS is ru_maxrss of the largest process of each side (wait4: a process and the children it waited for):

- zstd: ours = `sar-backup run` (categories core, cdr_voicemail, announcements
  -> one local target); peer = `pg_dump -Fc -Z0 -f DB` then
  `tar -I 'zstd -3 -T0' -cf OUT DB TREES`, then `sync OUT DIR` (the same
  durability as ours: file and folder fsynced). The ratio without the sync is
  reported too;
- gzip: ours with `compression: gzip`; peer `tar -czf`;
- age: ours with `encryption: recipients`; peer the zstd pipeline piped through
  `age -r` (same recipient).

`ratio` = ours / peer in wall time (lower is better, <= 1.0 = as fast). With
the sizes 0.5x, 1x, 2x and 4x the bench size (`BENCH_RUN_4GB=0` leaves 4x out; `BENCH_RUN_SIZES=0.5,1`
in GB chooses) a PNG plot of time and peak memory per size is written to docs/benchmarks-run.png
(gzip and age only at 1x and 2x, unless `BENCH_RUN_VARIANTS=zstd,gzip,age` asks for every size).

    .venv/bin/python bench/bench_run.py [SIZE_BYTES]      # one size, prints JSON
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from bench_local import machine_cpu_s  # noqa: E402  pylint: disable=wrong-import-position
from harness import appliance as appl  # noqa: E402  pylint: disable=wrong-import-position
from harness.playbook import collections_path  # noqa: E402  pylint: disable=wrong-import-position
from harness.postgres import PostgresCluster  # noqa: E402  pylint: disable=wrong-import-position

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
ZSTD_PAIRS = 5
MB = 1000 * 1000
GB = 1000 * MB
DATASET_VERSION = 1
DB_SHARE = 0.38
ANNOUNCE_SHARE = 0.05
WAV_BYTES = 1400 * 1000          # average voicemail size (random, 0.5x-1.5x)
CDR_ROW_BYTES = 183              # dump bytes per generated cdr row (measured: pg_dump -Fc -Z0)
CDR_BATCH = 400000
PLOT = os.path.join(ROOT, "docs", "benchmarks-run.png")
VARIANTS = [v for v in os.environ.get("BENCH_RUN_VARIANTS", "zstd,gzip,age").split(",") if v]

CLI = "import sys; from ansible_collections.sar.backup.plugins.module_utils import cli; sys.exit(cli.main(sys.argv[1:]))"


# -- data set -----------------------------------------------------------------
def build_files(root: str, size: int) -> None:
    """Config files, voicemail and announcements (deterministic), once per size; a marker says it is complete."""
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker) and open(marker, encoding="utf-8").read() == str(DATASET_VERSION):
        return
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    rng = random.Random(size)
    for rel, text in appl.CONF_FILES.items():
        appl._write(os.path.join(root, rel), text, 0o640)  # pylint: disable=protected-access
    budget = int(size * (1 - DB_SHARE - ANNOUNCE_SHARE))
    number = 0
    while budget > 0:
        ext = appl.EXTENSIONS[number % len(appl.EXTENSIONS)]
        inbox = appl.voicemail_dir(root, ext)
        os.makedirs(inbox, exist_ok=True)
        length = min(budget, int(WAV_BYTES * (0.5 + rng.random())))
        base = os.path.join(inbox, "msg%04d" % (number // len(appl.EXTENSIONS)))
        with open(base + ".wav", "wb") as handle:
            handle.write(appl.wav_bytes(rng, seconds=length / 16000.0))
        with open(base + ".txt", "w", encoding="utf-8") as handle:
            handle.write("[message]\norigmailbox=%s\nduration=%d\n" % (ext, length // 16000))
        budget -= length
        number += 1
    budget = int(size * ANNOUNCE_SHARE)
    for index in range(24):
        path = os.path.join(root, "var/lib/starface/announcements", "announce%02d.wav" % index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(appl.wav_bytes(rng, seconds=budget / 24 / 16000.0))
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(str(DATASET_VERSION))


def build_database(cluster, name: str, size: int) -> None:
    appl.build_database(cluster, name)
    rows = int(size * DB_SHARE / CDR_ROW_BYTES)
    while rows > 0:
        batch = min(rows, CDR_BATCH)
        appl.add_rows(cluster, "cdr", batch, db=name)
        rows -= batch
    cluster.psql("VACUUM ANALYZE", db=name)


# -- running one side ---------------------------------------------------------
def timed(argv_list: list, env=None, stdout=None) -> dict:
    """Run commands in series; wall time, the largest ru_maxrss, CPU seconds (user+sys) of the processes,
    and the whole machine's busy CPU seconds meanwhile (the PostgreSQL server's work too)."""
    machine = machine_cpu_s()
    start = time.perf_counter()
    peak, cpu = 0, 0.0
    for argv in argv_list:
        if isinstance(argv, tuple):  # (argv, output path): stdout to that file
            argv, out = argv
            with open(out, "wb") as sink:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE, env=env)
                _pid, status, usage = os.wait4(proc.pid, 0)
        else:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env)
            _pid, status, usage = os.wait4(proc.pid, 0)
        err = proc.stderr.read().decode("utf-8", "replace")
        proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError("%s failed (%d): %s" % (argv[0], code, err[-2000:]))
        peak = max(peak, usage.ru_maxrss)
        cpu += usage.ru_utime + usage.ru_stime
    return {"seconds": time.perf_counter() - start, "peak_rss_kb": peak, "cpu_s": cpu,
            "machine_cpu_s": machine_cpu_s() - machine}


def flush() -> None:
    subprocess.run(["sync"], check=False)


def compile_engine(collections_root: str) -> None:
    """Compile the collection's Python the way the role does on an appliance (roles/sar_backup, install.yml:
    `python -m compileall` after every engine change): there a scheduled run loads bytecode, it never compiles.
    The bench's runs must too, even from a shell with PYTHONDONTWRITEBYTECODE=1 (or a checkout whose
    __pycache__ is stale), where each run would compile the whole engine first (about 90 ms of CPU)."""
    import compileall  # local: only here
    for entry in collections_root.split(os.pathsep):
        plugins = os.path.join(entry, "ansible_collections", "sar", "backup", "plugins")
        if os.path.isdir(plugins):
            compileall.compile_dir(plugins, quiet=1)


class Appliance:
    """The host side of one size: settings, jobs, the peer's commands."""

    def __init__(self, workdir: str, cluster, size: int):
        sys.path.insert(0, collections_path())
        from ansible_collections.sar.backup.plugins.module_utils.job import validate_job  # pylint: disable=import-outside-toplevel
        from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings  # pylint: disable=import-outside-toplevel
        label = "%dMB" % (size // MB)
        self.size = size
        self.data = os.path.join(workdir, "data-%s" % label)
        self.root = os.path.join(self.data, "root")
        self.db = "asterisk_%d" % (size // MB)
        build_files(self.root, size)
        build_database(cluster, self.db, size)
        self.cluster = cluster
        self.work = os.path.join(workdir, "work-%s" % label)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.archives = os.path.join(self.work, "archives")
        self.peer_out = os.path.join(self.work, "peer")
        os.makedirs(self.peer_out)
        profile = appl.make_profile(self.root, cluster, name=self.db)
        self.store = Store(os.path.join(self.work, "etc"))
        self.store.write_settings(validate_settings({
            "profile": profile,
            "archive_dir": self.archives,
            "staging_dir": os.path.join(self.work, "staging"),
            "status_dir": os.path.join(self.work, "status"),
            "lock_path": os.path.join(self.work, "lock", "sar-backup.lock"),
        }))
        keyfile = os.path.join(self.work, "age.key")
        subprocess.run(["age-keygen", "-o", keyfile], check=True, capture_output=True)
        self.recipient = [line.split(": ", 1)[1] for line in open(keyfile, encoding="utf-8")
                          if line.startswith("# public key: ")][0]
        base = {"data": ["core", "cdr_voicemail", "announcements"], "targets": [{"type": "local"}]}
        self.store.write_job(validate_job(dict(base, name="zstd")))
        self.store.write_job(validate_job(dict(base, name="gzip", compression="gzip")))
        self.store.write_job(validate_job(dict(base, name="age", encryption={"recipients": [self.recipient]})))
        # BENCH_COLLECTIONS_PATH: run another checkout's code (e.g. a copy of the code before a change)
        self.env = dict(os.environ, PYTHONPATH=os.environ.get("BENCH_COLLECTIONS_PATH") or collections_path())
        compile_engine(self.env["PYTHONPATH"])
        # the database size as the peer dumps it
        self.db_bytes = None

    def member_bytes(self) -> int:
        """The bytes an archive's members hold: the dump (as the peer made it) and the trees' files."""
        files = sum(os.path.getsize(os.path.join(d, f)) for tree in self.trees()
                    for d, _s, fs in os.walk(os.path.join(self.root, tree)) for f in fs
                    if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
        return files + (self.db_bytes or 0)

    def trees(self) -> list:
        # the same trees the three categories hold (tar keeps paths relative to the appliance root)
        return ["etc/asterisk", "var/lib/starface/config", "var/spool/asterisk/voicemail",
                "var/lib/starface/announcements"]

    def ours(self, variant: str) -> dict:
        shutil.rmtree(self.archives, ignore_errors=True)
        flush()
        res = timed([[sys.executable, "-c", CLI, "--config-dir", self.store.config_dir, "run", variant]], env=self.env)
        found = [os.path.join(d, f) for d, _s, fs in os.walk(self.archives) for f in fs if f.endswith(".sar")]
        if len(found) != 1:
            raise RuntimeError("sar-backup run %s left %r in %s" % (variant, found, self.archives))
        res["output_bytes"] = os.path.getsize(found[0])
        return res

    def peer(self, variant: str) -> dict:
        shutil.rmtree(self.peer_out, ignore_errors=True)
        os.makedirs(self.peer_out)
        flush()
        dbinfo = self.cluster.database_profile(self.db)
        dump = os.path.join(self.peer_out, "asterisk.pgdump")
        env = dict(os.environ, PGPASSWORD=dbinfo["password"])
        pg_dump = [self.cluster.tool("pg_dump"), "-Fc", "-Z0", "-h", dbinfo["host"], "-p", str(dbinfo["port"]),
                   "-U", dbinfo["user"], "-d", self.db, "-f", dump]
        members = ["-C", self.peer_out, "asterisk.pgdump", "-C", self.root] + self.trees()
        if variant == "zstd":
            out = os.path.join(self.peer_out, "backup.tar.zst")
            steps = [pg_dump, ["tar", "-I", "zstd -3 -T0", "-cf", out] + members]
        elif variant == "gzip":
            out = os.path.join(self.peer_out, "backup.tar.gz")
            steps = [pg_dump, ["tar", "-czf", out] + members]
        else:
            out = os.path.join(self.peer_out, "backup.tar.zst.age")
            script = 'tar -I "zstd -3 -T0" -cf - "$@" | age -r %s' % self.recipient
            steps = [pg_dump, (["bash", "-o", "pipefail", "-c", script, "tar"] + members, out)]
        res = timed(steps, env=env)
        synced = timed([["sync", out, self.peer_out]])
        res["seconds_nosync"] = res["seconds"]
        res["seconds"] += synced["seconds"]
        res["machine_cpu_s"] += synced["machine_cpu_s"]
        res["output_bytes"] = os.path.getsize(out)
        self.db_bytes = os.path.getsize(dump)
        return res


def _median(runs: list, key: str):
    return statistics.median(r[key] for r in runs)


def repeats(variant: str) -> int:
    """Pairs per point: BENCH_REPEAT, and at least ZSTD_PAIRS for zstd, whose aim (<= 1.0) is close."""
    return max(REPEAT, ZSTD_PAIRS) if variant == "zstd" else REPEAT


def measure(app: Appliance, variant: str) -> dict:
    ours, peer = [], []
    for number in range(repeats(variant)):
        # In pairs, the order turning each round: neither side always runs right after the other.
        if number % 2:
            peer.append(app.peer(variant))
            ours.append(app.ours(variant))
        else:
            ours.append(app.ours(variant))
            peer.append(app.peer(variant))
    pairs = [o["seconds"] / p["seconds"] for o, p in zip(ours, peer)]
    out = {
        "ours_s": round(_median(ours, "seconds"), 2),
        "peer_s": round(_median(peer, "seconds"), 2),
        "peer_nosync_s": round(_median(peer, "seconds_nosync"), 2),
        "ours_rss_mb": round(max(r["peak_rss_kb"] for r in ours) / 1024.0, 1),
        "peer_rss_mb": round(max(r["peak_rss_kb"] for r in peer) / 1024.0, 1),
        "ours_cpu_s": round(_median(ours, "cpu_s"), 2),
        "peer_cpu_s": round(_median(peer, "cpu_s"), 2),
        "ours_bytes": ours[0]["output_bytes"],
        "peer_bytes": peer[0]["output_bytes"],
        "ours_runs": [round(r["seconds"], 2) for r in ours],
        "peer_runs": [round(r["seconds"], 2) for r in peer],
        "ours_machine_cpu_s": round(_median(ours, "machine_cpu_s"), 2),
        "peer_machine_cpu_s": round(_median(peer, "machine_cpu_s"), 2),
    }
    # The ratio of each pair, then their median: the machine's speed drifts (a shared VM), and a pair's two runs
    # share its moment. The ratio of the two medians is kept too.
    out["ratio"] = round(statistics.median(pairs), 3)
    out["ratio_pairs"] = [round(r, 3) for r in pairs]
    out["ratio_of_medians"] = round(out["ours_s"] / out["peer_s"], 3)
    out["ratio_nosync"] = round(statistics.median(o["seconds"] / p["seconds_nosync"] for o, p in zip(ours, peer)), 3)
    # The least ratio our work allows here: our machine CPU spread over every core, against the peer's time.
    out["ratio_floor"] = round(statistics.median(o["machine_cpu_s"] / CORES / p["seconds"] for o, p in zip(ours, peer)), 3)
    # The two SHA-256 passes the format and the run's result need (every member's data: checksums.sha256;
    # the .sar file's bytes: archive.sha256), at this machine's hashlib speed; the peer hashes nothing.
    out["sha256_cpu_s"] = round((app.member_bytes() + out["ours_bytes"]) / sha256_speed(), 2)
    return out


@functools.lru_cache(maxsize=None)
def sha256_speed() -> float:
    """hashlib.sha256 bytes a second on this machine (one thread, 256 MiB hashed), measured once."""
    block = os.urandom(16 * 1024 * 1024)
    digest = hashlib.sha256()
    start = time.perf_counter()
    for dummy in range(16):
        digest.update(block)
    return 16 * len(block) / (time.perf_counter() - start)


CORES = os.cpu_count() or 1


PEERS = {"zstd": "pg_dump -Fc -Z0 && tar -I 'zstd -3 -T0' && sync",
         "gzip": "pg_dump -Fc -Z0 && tar -czf && sync",
         "age": "pg_dump -Fc -Z0 && tar -I 'zstd -3 -T0' | age -r && sync"}


def sizes_for(size_bytes: int) -> list:
    """Half, once, twice and four times `size_bytes` (0.5, 1, 2, 4 GB by default, the plot issue 10
    asks for); BENCH_RUN_4GB=0 (`make bench BENCH_4GB=0`) leaves 4x out; BENCH_RUN_SIZES=0.5,1 (GB)
    chooses them."""
    raw = os.environ.get("BENCH_RUN_SIZES")
    if raw:
        sizes = [int(float(s) * GB) for s in raw.split(",") if s]
    else:
        sizes = [size_bytes // 2, size_bytes, 2 * size_bytes]
        if os.environ.get("BENCH_RUN_4GB", "1") != "0":
            sizes.append(4 * size_bytes)
    return sorted(set(sizes))


def variants_at(size: int, size_bytes: int) -> list:
    """zstd at every size (the plot); gzip and age at the sizes the aims name (1x and 2x), unless
    BENCH_RUN_VARIANTS chooses."""
    if os.environ.get("BENCH_RUN_VARIANTS"):
        return VARIANTS
    wide = (size_bytes, 2 * size_bytes) if os.environ.get("BENCH_RUN_FULL", "1") == "1" else (size_bytes,)
    return [v for v in VARIANTS if v == "zstd" or size in wide]


def profile(app: Appliance, variant: str = "zstd") -> str:
    """One more run of ours under py-spy (bench/profile_run.py): where the time goes. '' without py-spy."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if os.environ.get("BENCH_RUN_PROFILE", "1") != "1" or not os.path.exists(spy):
        return ""
    import profile_run  # pylint: disable=import-outside-toplevel
    shutil.rmtree(app.archives, ignore_errors=True)
    flush()
    out = os.path.join(os.path.dirname(app.work), "profile")
    os.makedirs(out, exist_ok=True)
    raw = os.path.join(out, "%s.raw" % variant)
    start = time.perf_counter()
    proc = subprocess.run([spy, "record", "--idle", "--threads", "--nonblocking", "-r", "200", "-f", "raw", "-o", raw,
                           "--", sys.executable, "-c", CLI, "--config-dir", app.store.config_dir, "run", variant],
                          env=app.env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return "profiled run failed (%d): %s" % (proc.returncode, proc.stderr[-500:])
    return ("One `sar-backup run %s` at %d MB under py-spy (%.1fs with the sampler):\n\n%s"
            % (variant, app.size // MB, time.perf_counter() - start, profile_run.summarize(raw, 200)))


def plot(points: list, path: str) -> str:
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        return "no plot (%s)" % exc
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for variant in VARIANTS:
        rows = sorted((p for p in points if p["variant"] == variant), key=lambda p: p["size_mb"])
        if not rows:
            continue
        xs = [p["size_mb"] / 1000.0 for p in rows]
        line = left.plot(xs, [p["ours_s"] for p in rows], "o-", label="sar-backup run (%s)" % variant)[0]
        left.plot(xs, [p["peer_s"] for p in rows], "s--", color=line.get_color(), alpha=0.6, label=PEERS[variant])
        right.plot(xs, [p["ours_rss_mb"] for p in rows], "o-", color=line.get_color(), label="ours (%s)" % variant)
        right.plot(xs, [p["peer_rss_mb"] for p in rows], "s--", color=line.get_color(), alpha=0.6,
                   label="peer (%s)" % variant)
    left.set_xlabel("appliance data (GB)")
    left.set_ylabel("wall time (s, median)")
    left.set_title("whole run to a local target")
    left.legend(fontsize=7)
    right.set_xlabel("appliance data (GB)")
    right.set_ylabel("peak RSS of the largest process (MB)")
    right.set_title("peak memory")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run(workdir: str, size_bytes: int) -> dict:
    os.makedirs(workdir, exist_ok=True)
    points = []
    profiled = ""
    started = time.time()
    with PostgresCluster(base_dir=workdir) as cluster:
        for size in sizes_for(size_bytes):
            app = Appliance(workdir, cluster, size)
            for variant in variants_at(size, size_bytes):
                res = measure(app, variant)
                res.update(variant=variant, size_mb=size // MB, db_dump_mb=round(app.db_bytes / MB, 1))
                points.append(res)
                with open(os.path.join(workdir, "points.jsonl"), "a", encoding="utf-8") as log:  # as they come
                    log.write(json.dumps(res, default=str) + "\n")
                sys.stdout.write("   %s %dMB: ours %.2fs peer %.2fs ratio %.3f (floor %.3f) rss %.0f/%.0f MB\n" % (
                    variant, size // MB, res["ours_s"], res["peer_s"], res["ratio"], res["ratio_floor"], res["ours_rss_mb"],
                    res["peer_rss_mb"]))
                sys.stdout.flush()
            if size == size_bytes:
                try:
                    profiled = profile(app)
                except Exception as exc:  # pylint: disable=broad-except  # the measurements stand without it
                    profiled = "profiling failed: %s: %s" % (type(exc).__name__, exc)
            shutil.rmtree(app.work, ignore_errors=True)
            cluster.drop_database(app.db)
    rows = [{"size_MB": p["size_mb"], "variant": p["variant"], "peer": PEERS[p["variant"]],
             "ours_s": p["ours_s"], "peer_s": p["peer_s"], "ratio (ours/peer, <=1 good)": p["ratio"],
             "ratio without peer sync": p["ratio_nosync"], "ours_rss_MB": p["ours_rss_mb"],
             "peer_rss_MB": p["peer_rss_mb"], "ours_cpu_s": p["ours_cpu_s"], "peer_cpu_s": p["peer_cpu_s"],
             "ours_out_MB": round(p["ours_bytes"] / MB, 1), "peer_out_MB": round(p["peer_bytes"] / MB, 1),
             "db_dump_MB": p["db_dump_mb"], "ours_machine_cpu_s": p["ours_machine_cpu_s"],
             "peer_machine_cpu_s": p["peer_machine_cpu_s"], "ratio_floor": p["ratio_floor"],
             "sha256_cpu_s": p["sha256_cpu_s"], "ratio_of_medians": p["ratio_of_medians"], "ratio_pairs": p["ratio_pairs"],
             "ours_runs_s": p["ours_runs"], "peer_runs_s": p["peer_runs"]}
            for p in points]
    result = {"title": "whole `sar-backup run` to a local target vs pg_dump + tar (time ratio: lower is better)",
              "rows": rows, "points": points}
    for p in points:
        result["ratio_%s_%dMB" % (p["variant"], p["size_mb"])] = p["ratio"]
        result["ratio_floor_%s_%dMB" % (p["variant"], p["size_mb"])] = p["ratio_floor"]
    main = [p for p in points if p["variant"] == "zstd"]
    if main:
        result["ratio"] = next((p["ratio"] for p in main if p["size_mb"] * MB == size_bytes), main[0]["ratio"])
        if len(main) >= 2:
            result["ratio_peak_rss_largest_vs_smallest"] = round(main[-1]["ours_rss_mb"] / main[0]["ours_rss_mb"], 3)
    if profiled:
        result["profile"] = profiled
    if len({p["size_mb"] for p in points}) >= 2:
        result["plot"] = plot(points, PLOT)
    result["notes"] = ("Time ratio = ours / peer wall time, the median of the ratios of %d pairs (%d for zstd) taken "
                       "in turn, the order turning each pair (<= 1.0 means as fast as the pipeline); seconds are "
                       "medians, and 'ratio_of_medians' divides them. The peer's time includes `sync OUT DIR` "
                       "(ours fsyncs the archive and its folder); 'ratio without peer sync' leaves it out. "
                       "Peak RSS = largest single process (wait4). "
                       "machine_cpu_s = the whole machine's busy CPU seconds during a side's run (from /proc/stat: "
                       "the PostgreSQL server's work included, steal excluded); ratio_floor = our machine CPU seconds / "
                       "%d cores / the peer's seconds (per pair, median), the least ratio our work allows on this "
                       "machine even with every core busy all the time; sha256_cpu_s = the part of ours that is the two SHA-256 passes (members and "
                       ".sar file, at this machine's hashlib speed), which the peer does not do. "
                       "The bench took %.0fs. ![time and peak memory per size](benchmarks-run.png)"
                       % (REPEAT, max(REPEAT, ZSTD_PAIRS), CORES, time.time() - started))
    return result


if __name__ == "__main__":
    SIZE = int(float(sys.argv[1])) if len(sys.argv) > 1 else GB
    print(json.dumps(run(os.path.join(BENCH, "output", "run"), SIZE), indent=2, default=str))
