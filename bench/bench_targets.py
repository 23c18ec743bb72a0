# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Benchmark: three targets at once (local + sftp + smb) against the slowest of them alone.

A run delivers the finished archive to all of a job's targets at the same time (runner.Run.deliver:
one thread per target). This bench calls that same code on a ready-made random archive in a child
process, once with the three targets together and once with each alone, taken in turn (each round
starting one variant later), median of BENCH_REPEAT (5) rounds. The machine's busy CPU seconds are read
around each delivery, so the bench also shows the least time any schedule could take on its cores.
The servers are the test harness's throwaway OpenSSH `sshd` and Samba `smbd` on 127.0.0.1; the
local target is a folder on another filesystem than the archive (/dev/shm), so it
is a real copy as to a backup disk (on staging's own filesystem it would be a hard link and cost
nothing). Aim (issue 10): together <= 1.1x the slowest alone.

    python bench/bench_targets.py            # 1 GB
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(BENCH), "tests")
for _path in (TESTS, BENCH):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from harness import smbd as smbd_harness  # noqa: E402  pylint: disable=wrong-import-position
from harness.playbook import collections_path  # noqa: E402  pylint: disable=wrong-import-position
from harness.sshd import SshServer, generate_key  # noqa: E402  pylint: disable=wrong-import-position
from bench_local import CpuGroup, random_file  # noqa: E402  pylint: disable=wrong-import-position

# 5 rounds by default (not the benches' 3): the order rotates, and transfers vary more than anything else here.
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
MB = 1000 * 1000
NAME = "bench_host_20260101T000000Z.sar"

# The runner's own parallel delivery, in a fresh interpreter; settings (with secrets) on stdin.
CHILD = r"""
import json, resource, sys, time
settings = json.loads(sys.stdin.read())
sys.path[:0] = [settings["collections_path"], settings["bench_dir"]]
from bench_local import machine_cpu_s
from ansible_collections.sar.backup.plugins.module_utils import runner
from ansible_collections.sar.backup.plugins.module_utils.job import validate_target


class Store:
    config_dir = settings["config_dir"]

    @staticmethod
    def settings():
        return {"archive_dir": settings["config_dir"]}


job = {"name": "bench", "targets": [validate_target(t, i) for i, t in enumerate(settings["targets"])]}
run = runner.Run(job, Store())
own = resource.getrusage(resource.RUSAGE_SELF)
machine = machine_cpu_s()
start = time.monotonic()
entries = run.deliver(settings["path"], {"name": settings["name"], "size": settings["size"], "sha256": "0" * 64})
seconds = time.monotonic() - start
machine = machine_cpu_s() - machine
bad = [e for e in entries if e["status"] != "ok"]
if bad:
    sys.exit("delivery failed: %s" % bad)
usage = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ssh client the sftp target ran
deliver_cpu = usage.ru_utime + usage.ru_stime - own.ru_utime - own.ru_stime
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child's starts at its parent's
# peak (the bench runner's, far above ours); the high-water mark of this process's own memory.
with open("/proc/self/status", encoding="ascii") as handle:
    peak_kb = int(next(line for line in handle if line.startswith("VmHWM:")).split()[1])
print(json.dumps({"seconds": seconds, "peak_rss_kb": peak_kb,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "ssh_cpu_s": kids.ru_utime + kids.ru_stime,
                  "deliver_cpu_s": deliver_cpu,
                  "machine_cpu_s": machine}))
"""


def _deliver(settings: dict, servers: dict) -> dict:
    """One delivery in a child; `servers`: name -> CpuGroup of that server's processes, whose CPU
    seconds during the delivery go into the result as NAME_cpu_s."""
    before = {name: group.cpu_s() for name, group in servers.items()}
    proc = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(settings), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("delivery child failed: %s" % proc.stderr.strip()[-2000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, group in servers.items():
        result[name + "_cpu_s"] = group.cpu_s() - before[name]
    return result


def _server_groups(sshd, smbd) -> dict:
    """A cgroup for each server's processes (sshd's listener, smbd's; their connections are forked
    into it); {} where cgroups are not at hand."""
    groups = {}
    try:
        for name, pids in (("sshd", [sshd.proc.pid]), ("smbd", smbd.pids())):
            group = CpuGroup.make("sar-bench-" + name)
            if group is None:
                break
            groups[name] = group
            for pid in pids:
                group.add(pid)
    except OSError as exc:  # a cgroup that will not take the process (delegation, policy): no split
        print("   no CPU split by process: %s" % exc, file=sys.stderr)
    if len(groups) < 2:
        for group in groups.values():
            group.remove()
        return {}
    return groups


def _empty(path: str) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            if name.endswith(".sar") or name.endswith(".partial"):
                os.unlink(os.path.join(root, name))


def run(workdir: str, size_bytes: int) -> dict:
    os.makedirs(workdir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench-targets-", dir=workdir)
    local_dir = tempfile.mkdtemp(prefix="sar-bench-local-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    src = os.path.join(scratch, NAME)
    random_file(src, size_bytes)
    key_path = os.path.join(scratch, "id_ed25519")
    sshd = SshServer(host_key_types=("ed25519",), log_level="ERROR")
    smbd = smbd_harness.SmbServer(log_level=0)
    servers = {}
    try:
        sshd.start()
        sshd.add_authorized_key(generate_key(key_path, "ed25519"))
        with open(key_path, encoding="ascii") as handle:
            key = handle.read()
        smbd.start()
        sftp_dir = sshd.make_dir(os.path.join(sshd.home, "bench"))
        targets = {
            "local": {"type": "local", "path": local_dir, "keep": 0},
            "sftp": {"type": "sftp", "server": "127.0.0.1", "port": sshd.port, "username": sshd.user,
                     "private_key": key, "host_key": sshd.host_key_line("ssh-ed25519"), "path": sftp_dir, "keep": 0},
            "smb": {"type": "smb", "server": "127.0.0.1", "port": smbd.port, "share": "share", "username": smbd.user,
                    "password": smbd.password, "keep": 0},
        }
        variants = [("local", ["local"]), ("sftp", ["sftp"]), ("smb", ["smb"]), ("together", ["local", "sftp", "smb"])]
        runs = {name: [] for name, _which in variants}
        base = {"collections_path": collections_path(), "bench_dir": BENCH, "config_dir": scratch, "path": src, "name": NAME,
                "size": size_bytes}
        servers = _server_groups(sshd, smbd)
        for turn in range(REPEAT):
            # Each round starts one variant later: what one delivery leaves behind falls on each in turn.
            for name, which in variants[turn % len(variants):] + variants[:turn % len(variants)]:
                runs[name].append(_deliver(dict(base, targets=[targets[w] for w in which]), servers))
                for folder in (local_dir, sftp_dir, smbd.share_path("share")):
                    _empty(folder)
    finally:
        sshd.stop()
        smbd.stop()
        for group in servers.values():
            group.remove()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(local_dir, ignore_errors=True)
    rows = []
    med = {}
    machine = {}
    for name, which in variants:
        seconds = statistics.median(r["seconds"] for r in runs[name])
        med[name] = seconds
        machine[name] = statistics.median(r["machine_cpu_s"] for r in runs[name])
        # Who did the machine's work (medians): our process, its ssh client, sshd's side (session and
        # sftp-server), smbd's connection process; the rest is the kernel's own (softirq of the loopback
        # traffic, page-cache write-back) and anything else on the machine.
        parts = {part: statistics.median(r[part + "_cpu_s"] for r in runs[name])
                 for part in ("deliver", "ssh") + tuple(servers)}
        row = {"delivery": " + ".join(which) + (" (at once)" if len(which) > 1 else " alone"),
               "seconds": round(seconds, 3), "mb_s": round(size_bytes / MB / seconds, 1),
               "cpu_s": round(statistics.median(r["cpu_s"] for r in runs[name]), 2),
               "machine_cpu_s": round(machine[name], 2)}
        if servers:
            row.update({part + "_cpu_s": round(cpu, 2) for part, cpu in parts.items()})
            row["rest_cpu_s"] = round(machine[name] - sum(parts.values()), 2)
        row.update({"cores_busy": round(machine[name] / seconds, 2),
                    "peak_rss_mb": round(max(r["peak_rss_kb"] for r in runs[name]) / 1024.0, 1),
                    "runs_s": [round(r["seconds"], 3) for r in runs[name]]})
        rows.append(row)
    slowest = max(("local", "sftp", "smb"), key=lambda n: med[n])
    cores = os.cpu_count() or 1
    # The three alone need this much CPU from the machine; spread perfectly over its cores they
    # take at least work / cores, and never less than the slowest alone.
    work = sum(machine[n] for n in ("local", "sftp", "smb"))
    floor = max(med[slowest], work / cores)
    return {
        "title": "three targets at once vs the slowest alone",
        "rows": rows,
        "ratio": round(med["together"] / med[slowest], 3),
        "ratio_floor": round(floor / med[slowest], 3),
        "ratio_vs_floor": round(med["together"] / floor, 3),
        "notes": ("%.0f MB random archive; runner.Run.deliver (one thread per target, as in a run) in a child "
                  "process; local target on /dev/shm (another filesystem than the archive: a real copy), sftp to "
                  "the harness sshd (key auth, host key pinned), smb to the harness smbd (signed and encrypted, "
                  "the defaults); retention off (keep 0), verify size. Median of %d rounds, variants taken in "
                  "turn (each round starts one later). ratio = at once / slowest alone (%s); aim <= 1.1. cpu_s = the child's CPU seconds "
                  "(every thread); machine_cpu_s = the whole machine's busy CPU seconds during the delivery "
                  "(/proc/stat: our process, ssh, sshd, sftp-server, smbd and the kernel; they share the same "
                  "%d cores), cores_busy = machine_cpu_s / seconds. Where that CPU went (medians, so the "
                  "parts need not add up exactly): deliver_cpu_s our process during deliver() (cpu_s adds the "
                  "interpreter's start), ssh_cpu_s the ssh client it ran, sshd_cpu_s sshd's side of the connection "
                  "(session, cipher, sftp-server's writes), smbd_cpu_s smbd's (signature check, decryption, "
                  "writes), each server's processes read from a cgroup of their own (cpuacct); "
                  "rest_cpu_s = machine_cpu_s less those: the kernel's own work (softirq of the loopback traffic, "
                  "page-cache write-back) and anything else on the machine. ratio_floor = the least ratio this machine "
                  "allows: the three alone need %.2f CPU-s, at best spread over %d cores = %.2f s, against "
                  "%.2f s for the slowest alone; ratio_vs_floor = at once / that floor (1.0 = every core "
                  "busy all the time)."
                  % (size_bytes / MB, REPEAT, slowest, cores, work, cores, work / cores, med[slowest]))
        + _split_note(rows[-1], cores),
    }


def _split_note(together: dict, cores: int) -> str:
    """What the split of the CPU at once says about the cap (empty without the cgroup figures)."""
    if "sshd_cpu_s" not in together:
        return " (No cgroup would take the servers' processes here: the CPU is not split by process.)"
    client = together["deliver_cpu_s"] + together["ssh_cpu_s"]
    servers = together["sshd_cpu_s"] + together["smbd_cpu_s"]
    return (" At once, the client side (our process and its ssh) used %.2f CPU-s and the two servers %.2f: "
            "here they share the same %d cores, where a real run's servers are other machines, whose work "
            "would leave the client's %.2f CPU-s alone on its cores (%.2f s spread over all of them)."
            % (client, servers, cores, client, client / cores))


if __name__ == "__main__":
    print(json.dumps(run(tempfile.gettempdir(), int(float(sys.argv[1]) * MB) if len(sys.argv) > 1 else 1000 * MB),
                     indent=2))
