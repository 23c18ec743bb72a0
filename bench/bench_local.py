# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Benchmark: the `local` target against `cp` on the same filesystem.

One archive-sized file of random bytes is delivered to a folder on the same
filesystem as the source, by:

- `cp SRC DST && sync DST DIR`: the copy plus an fsync of the file and of its
  folder, the durability our target gives (it fsyncs the partial file, renames
  it, fsyncs the folder). This is the reference for `ratio`;
- `cp SRC DST && sync`: the same with a global `sync`, as an admin would type
  it (also flushes other processes' dirty data, so it is noisier on a shared
  machine);
- our `LocalTarget.deliver()` with `verify: size` (copy to a partial name,
  fsync, rename, fsync folder, size check, retention) and with `verify: full`
  (plus a read-back and SHA-256 comparison).

Caches cannot be dropped here (no privilege is assumed), so the source is read
once before the measurements (warm-up) and every tool reads it from the page
cache. Dirty data is flushed (`sync`, untimed) before each measurement so one
run does not pay for the previous one. Each tool runs in a subprocess of its
own, so its peak RSS (ru_maxrss) is its own; the tools are run in turn
REPEAT times and the median is kept.

    .venv/bin/python bench/bench_local.py [SIZE_BYTES]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from harness.playbook import collections_path  # noqa: E402  pylint: disable=wrong-import-position

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
MB = 1000 * 1000
JOB = "bench"
HOST = "benchhost"
NAME = "bench_benchhost_20240101T000000Z.sar"

# Runs in a fresh interpreter: one deliver(), its time and the process's peak RSS.
OURS = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.sar.backup.plugins.module_utils import job
from ansible_collections.sar.backup.plugins.module_utils.targets import target_class
from ansible_collections.sar.backup.plugins.module_utils.targets import local
from ansible_collections.sar.backup.plugins.module_utils.targets.base import TargetContext
args = json.loads(sys.argv[2])
local.LINK_FROM_STAGING = args["link"]  # False: the copy to a backup disk (source and folder share a filesystem here)
opts = job.validate_target({"type": "local", "path": args["path"], "verify": args["verify"], "keep": 0}, 0)
ctx = TargetContext(job=args["job"], host=args["host"], config_dir=args["config_dir"], settings={"archive_dir": args["path"]})
target = target_class("local")(opts, ctx)
start = time.perf_counter()
result = target.deliver(args["src"], args["name"], args["size"], args["sha256"])
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss, "result": result}))
"""

# Runs a shell command under a small parent, so RUSAGE_CHILDREN covers that command only.
THEIRS = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(["sh", "-c", sys.argv[1]], check=True)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss}))
"""


def random_file(path: str, size: int) -> None:
    with open(path, "wb") as handle:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * 1024 * 1024))
            handle.write(chunk)
            left -= len(chunk)


def machine_cpu_s() -> float:
    """The machine's busy CPU seconds so far: every process and the kernel (user, nice, system,
    irq, softirq; not idle, iowait or steal), from /proc/stat. Read before and after a transfer
    by the process that times it, it adds the servers' work on the same cores (sshd,
    sftp-server, smbd) to the client's own."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:8]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / float(os.sysconf("SC_CLK_TCK"))


class CpuGroup:
    """A cgroup of its own for some processes (and every process they start), to read the CPU seconds
    they used: cgroup v2 (cpu.stat usage_usec) or v1's cpuacct (cpuacct.usage). Needs root and a
    writable cgroup file system; `make()` returns None where there is none, and a bench then leaves
    out the figures it gives."""

    V2 = "/sys/fs/cgroup"
    V1 = "/sys/fs/cgroup/cpuacct"

    def __init__(self, path: str, v2: bool):
        self.path = path
        self.v2 = v2

    @classmethod
    def make(cls, name: str):
        for root, v2 in ((cls.V2, True), (cls.V1, False)):
            probe = "cgroup.controllers" if v2 else "cpuacct.usage"
            if not os.path.exists(os.path.join(root, probe)):
                continue
            path = os.path.join(root, "%s-%d" % (name, os.getpid()))
            try:
                os.makedirs(path, exist_ok=True)
            except OSError:
                return None
            return cls(path, v2)
        return None

    def add(self, pid: int) -> None:
        """Move `pid` (0: the calling process) into the group; what it starts from now on is in it too."""
        with open(os.path.join(self.path, "cgroup.procs"), "w", encoding="ascii") as handle:
            handle.write("%d\n" % pid)

    def cpu_s(self) -> float:
        if self.v2:
            with open(os.path.join(self.path, "cpu.stat"), encoding="ascii") as handle:
                usage = next(line for line in handle if line.startswith("usage_usec "))
            return int(usage.split()[1]) / 1e6
        with open(os.path.join(self.path, "cpuacct.usage"), encoding="ascii") as handle:
            return int(handle.read()) / 1e9

    def remove(self) -> None:
        """Remove the group once its processes have ended (those left are moved back to the root)."""
        root = os.path.dirname(self.path)
        try:
            with open(os.path.join(self.path, "cgroup.procs"), encoding="ascii") as handle:
                left = [int(x) for x in handle.read().split()]
            for pid in left:
                with open(os.path.join(root, "cgroup.procs"), "w", encoding="ascii") as handle:
                    handle.write("%d\n" % pid)
            os.rmdir(self.path)
        except OSError:
            pass


def read_all(path: str) -> str:
    """Read the file once (page-cache warm-up) and return its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(4 * 1024 * 1024)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def measure(argv: list) -> dict:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv[:3]), proc.stderr.strip()[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(tool: str, runs: list, size: int) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"tool": tool, "seconds": round(seconds, 3), "mb_s": round(size / MB / seconds, 1),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
            "peak_rss_mb": round(max(r["peak_rss_kb"] for r in runs) / 1024.0, 1),
            "runs_s": [round(r["seconds"], 2) for r in runs]}


def run(workdir: str, size_bytes: int) -> dict:
    os.makedirs(workdir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench-local-", dir=workdir)
    try:
        src = os.path.join(scratch, "source", NAME)
        os.makedirs(os.path.dirname(src))
        random_file(src, size_bytes)
        subprocess.run(["sync"], check=True)
        sha256 = read_all(src)  # warm-up: every tool below reads from the page cache
        config_dir = os.path.join(scratch, "config")
        os.mkdir(config_dir)
        farm = collections_path()
        tools = {
            "cp_fsync": "cp + sync FILE DIR (fsync, as ours)",
            "cp_sync": "cp + sync (global)",
            "ours_size": "LocalTarget.deliver (verify size)",
            "ours_full": "LocalTarget.deliver (verify full)",
            "ours_link": "LocalTarget.deliver, archive in staging on the same filesystem (hard link, verify size)",
        }
        results = {key: [] for key in tools}
        for attempt in range(REPEAT):
            for key in tools:
                base = os.path.join(scratch, "dest-%s-%d" % (key, attempt))
                folder = os.path.join(base, "starface-backup", JOB)
                subprocess.run(["sync"], check=True)  # untimed: start every run with no dirty data
                if key.startswith("ours"):
                    os.makedirs(base)  # the target's path exists (a mounted disk); it creates the folders below
                    args = {"path": base, "verify": "full" if key == "ours_full" else "size", "link": key == "ours_link",
                            "job": JOB, "host": HOST, "config_dir": config_dir, "src": src, "name": NAME,
                            "size": size_bytes, "sha256": sha256}
                    result = measure([sys.executable, "-c", OURS, farm, json.dumps(args)])
                else:
                    # The folder exists beforehand, the copy lands under its final name: the simplest thing an admin does.
                    os.makedirs(folder)
                    dest = os.path.join(folder, NAME)
                    flush = "sync %s %s" % (dest, folder) if key == "cp_fsync" else "sync"
                    result = measure([sys.executable, "-c", THEIRS, "cp %s %s && %s" % (src, dest, flush)])
                delivered = os.path.join(folder, NAME)
                if os.path.getsize(delivered) != size_bytes:
                    raise RuntimeError("%s delivered %d bytes, expected %d" % (key, os.path.getsize(delivered), size_bytes))
                results[key].append(result)
                shutil.rmtree(base)
        rows = [row(label, results[key], size_bytes) for key, label in tools.items()]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    by_key = dict(zip(tools, rows))
    ref = by_key["cp_fsync"]["mb_s"]
    return {
        "title": "local target vs cp",
        "rows": rows,
        "ratio": round(by_key["ours_size"]["mb_s"] / ref, 3),
        "ratio_verify_full": round(by_key["ours_full"]["mb_s"] / ref, 3),
        "ratio_vs_global_sync": round(by_key["ours_size"]["mb_s"] / by_key["cp_sync"]["mb_s"], 3),
        "ratio_link": round(by_key["ours_link"]["mb_s"] / ref, 3),
        "notes": ("%.0f MB random file copied within one filesystem (%s); the source is in the page cache (warm-up read), "
                  "dirty data flushed before each run (untimed); median of %d runs, tools taken in turn. 'ratio' = MB/s "
                  "of deliver (verify size), copying as to a backup disk (its link from staging switched off), / MB/s "
                  "of `cp && sync FILE DIR` (same durability); `ratio_link` = the same with the link a run makes when "
                  "staging and the target share a filesystem (no second copy; the file and folder are still fsynced). Times are measured inside "
                  "each tool's own process (ours: the deliver() call, not the interpreter start); peak RSS is that "
                  "process's ru_maxrss (ours includes the Python interpreter)."
                  % (size_bytes / MB, filesystem_of(workdir), REPEAT)),
    }


def filesystem_of(path: str) -> str:
    proc = subprocess.run(["df", "--output=fstype", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    lines = proc.stdout.split()
    return lines[-1] if proc.returncode == 0 and len(lines) > 1 else "?"


if __name__ == "__main__":
    print(json.dumps(run(os.path.join(ROOT, "bench", "output", "local"), int(sys.argv[1]) if len(sys.argv) > 1 else 1000 * MB),
                     indent=2))
