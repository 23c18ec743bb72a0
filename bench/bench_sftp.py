# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Benchmark: the `sftp` target against OpenSSH's own `sftp` client.

The same random file, the same throwaway sshd on loopback (tests/harness/sshd.py),
the same cipher forced on both sides (aes128-gcm@openssh.com), key
authentication for both. Each tool runs in a subprocess of its own so its peak
RSS (ru_maxrss) is its own; the tools are taken in turn (A B C D A B C D ...),
REPEAT (5) times each, and the median kept.

- OpenSSH `sftp -b` with `put` (what an admin would script), and `put -f`
  (which also asks the server to fsync, as our target does before renaming);
- our `SftpTarget.deliver()` with `verify: size` (connect, host key check,
  upload to a partial name, fsync, rename, size check, retention) through the
  system's OpenSSH client (`ssh -s sftp`, what the target uses where `ssh`
  exists), and through paramiko (where it does not);
- a diagnostic row: our OpenSSH-client delivery with the server's fsync left
  out, which shows what the durability costs against plain `put` (the
  target never skips it).

Besides wall time, each row has the CPU seconds of the client side (ours:
the deliver() call in our process, every thread, plus the ssh process it
runs; OpenSSH: sftp + ssh).

    python bench/bench_sftp.py            # 1 GB
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
for _path in (TESTS, os.path.dirname(os.path.abspath(__file__))):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from harness.playbook import collections_path  # noqa: E402  pylint: disable=wrong-import-position
from harness.sshd import SshServer, generate_key  # noqa: E402  pylint: disable=wrong-import-position
from bench_local import random_file  # noqa: E402  pylint: disable=wrong-import-position

CIPHER = "aes128-gcm@openssh.com"
REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
MB = 1000 * 1000
SSH_PACKET = 32768 - 64  # paramiko's data per SSH packet under OpenSSH's 32 KiB channel packet limit

# Runs in a fresh interpreter: deliver once, report time and peak RSS.
OURS = r"""
import hashlib, json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.sar.backup.plugins.module_utils import job
from ansible_collections.sar.backup.plugins.module_utils.targets import sftp, target_class
from ansible_collections.sar.backup.plugins.module_utils.targets.base import TargetContext
args = json.loads(sys.argv[2])
with open(args["key_path"]) as handle:
    key = handle.read()
opts = job.validate_target({"type": "sftp", "server": "127.0.0.1", "port": args["port"], "username": args["user"],
                            "private_key": key, "host_key": args["host_key"], "path": args["path"],
                            "verify": "size", "keep": 0}, 0)
log = []
target = target_class("sftp")(opts, TargetContext(job="bench", host="bench", config_dir=args["config_dir"], log=log.append))
if args.get("client"):
    sftp.CLIENT = args["client"]
# The server's fsync before the rename, timed (what durability costs); skipped only in the diagnostic
# variant that shows what the upload takes without it.
flush_s = [0.0]
real_flush = sftp.SftpTarget._flush
def timed_flush(self, handle):
    if args.get("no_fsync"):
        return
    begin = time.perf_counter()
    real_flush(self, handle)
    flush_s[0] += time.perf_counter() - begin
sftp.SftpTarget._flush = timed_flush
def cpu_now():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime
before = cpu_now()
start = time.perf_counter()
target.deliver(args["src"], args["name"], args["size"], "0" * 64)
seconds = time.perf_counter() - start
after = cpu_now()
own_cpu, ssh_cpu = after[0] - before[0], after[1] - before[1]
print(json.dumps({"seconds": seconds, "cpu_s": own_cpu + ssh_cpu, "python_cpu_s": own_cpu, "ssh_cpu_s": ssh_cpu,
                  "fsync_s": flush_s[0],
                  "peak_rss_kb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                     resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), "log": log}))
"""

# Runs OpenSSH sftp under a small parent so RUSAGE_CHILDREN covers sftp and its ssh only.
THEIRS = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss}))
"""


def _measure(argv: list) -> dict:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (argv[:3], proc.stderr.strip()[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(tool: str, runs: list, size: int) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"tool": tool, "seconds": round(seconds, 3), "mb_s": round(size / MB / seconds, 1),
            "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
            "peak_rss_mb": round(max(r["peak_rss_kb"] for r in runs) / 1024.0, 1),
            "runs_s": [round(r["seconds"], 3) for r in runs]}


def _gcm_cpu_seconds(size: int) -> float:
    """CPU seconds AES-128-GCM takes to seal `size` bytes in SSH packets,
    the way paramiko calls it (one encrypt() per packet): the floor of any
    Python SSH client doing this upload."""
    import resource  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # pylint: disable=import-outside-toplevel
    packet = os.urandom(SSH_PACKET + 5 + 13)  # payload + SSH_MSG_CHANNEL_DATA header, padding
    cipher, nonce = AESGCM(os.urandom(16)), os.urandom(12)
    start = resource.getrusage(resource.RUSAGE_SELF)
    for _packet in range(size // SSH_PACKET + 1):
        cipher.encrypt(nonce, packet[4:], packet[:4])
    end = resource.getrusage(resource.RUSAGE_SELF)
    return end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime


def run(workdir: str, size_bytes: int) -> dict:
    os.makedirs(workdir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench-sftp-", dir=workdir)
    src = os.path.join(scratch, "payload.bin")
    random_file(src, size_bytes)
    key_path = os.path.join(scratch, "id_ed25519")
    config_dir = os.path.join(scratch, "config")
    os.mkdir(config_dir)
    server = SshServer(host_key_types=("ed25519",), log_level="ERROR")
    try:
        server.start()
        server.add_authorized_key(generate_key(key_path, "ed25519"))
        known = os.path.join(scratch, "known_hosts")
        with open(known, "w", encoding="ascii") as handle:
            handle.write("[127.0.0.1]:%d %s\n" % (server.port, server.host_key_line("ssh-ed25519")))
        ssh_opts = ["-o", "UserKnownHostsFile=%s" % known, "-o", "StrictHostKeyChecking=yes",
                    "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-c", CIPHER,
                    "-i", key_path, "-P", str(server.port)]
        farm = collections_path()
        results = {"openssh": [], "openssh_fsync": [], "ours": [], "ours_paramiko": [], "ours_no_fsync": []}
        cipher_seen = {"ours": set(), "ours_paramiko": set(), "ours_no_fsync": set()}
        for attempt in range(REPEAT):
            for tool in results:
                dest = server.make_dir(os.path.join(server.home, "%s-%d" % (tool, attempt)))
                if tool.startswith("ours"):
                    args = {"port": server.port, "user": server.user, "key_path": key_path,
                            "host_key": server.host_key_line("ssh-ed25519"), "path": dest, "src": src,
                            "size": size_bytes, "name": "bench_bench_20240101T000000Z.sar", "config_dir": config_dir,
                            "client": "paramiko" if tool == "ours_paramiko" else "openssh",
                            "no_fsync": tool == "ours_no_fsync"}
                    result = _measure([sys.executable, "-c", OURS, farm, json.dumps(args)])
                    cipher_seen[tool].update(line.split("cipher ")[1].split(",")[0]
                                             for line in result["log"] if "cipher " in line)
                else:
                    batch = os.path.join(scratch, "batch-%s" % tool)
                    with open(batch, "w", encoding="utf-8") as handle:
                        handle.write("put %s%s %s/payload.bin\n" % ("-f " if tool == "openssh_fsync" else "", src, dest))
                    result = _measure([sys.executable, "-c", THEIRS, "sftp", "-q", "-b", batch] + ssh_opts
                                      + ["%s@127.0.0.1" % server.user])
                results[tool].append(result)
                shutil.rmtree(dest, ignore_errors=True)
        rows = [_row("OpenSSH sftp -b put", results["openssh"], size_bytes),
                _row("OpenSSH sftp -b put -f (fsync)", results["openssh_fsync"], size_bytes),
                _row("sar-backup SftpTarget.deliver (verify size), OpenSSH client", results["ours"], size_bytes),
                _row("sar-backup SftpTarget.deliver (verify size), paramiko client", results["ours_paramiko"], size_bytes),
                _row("(diagnostic) the OpenSSH-client row without the server's fsync", results["ours_no_fsync"],
                     size_bytes)]
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    theirs, theirs_fsync, ours, ours_paramiko, ours_no_fsync = (row["mb_s"] for row in rows)
    theirs_cpu, _fsync_cpu, ours_cpu, paramiko_cpu, _no_fsync_cpu = (row["cpu_s"] for row in rows)
    fsync_s = statistics.median(r["fsync_s"] for r in results["ours"])
    python_cpu = statistics.median(r["python_cpu_s"] for r in results["ours"])
    ssh_cpu = statistics.median(r["ssh_cpu_s"] for r in results["ours"])
    gcm = _gcm_cpu_seconds(size_bytes)
    packets = size_bytes // SSH_PACKET + 1
    python_work = max(paramiko_cpu - gcm, 0.0)
    return {
        "title": "sftp target vs OpenSSH sftp",
        "rows": rows,
        "ratio": round(ours / theirs, 3),
        "ratio_vs_fsync": round(ours / theirs_fsync, 3),
        "ratio_without_fsync": round(ours_no_fsync / theirs, 3),
        "fsync_s": round(fsync_s, 3),
        "ratio_cpu": round(theirs_cpu / ours_cpu, 3) if ours_cpu else None,
        "ratio_paramiko": round(ours_paramiko / theirs, 3),
        "ratio_cpu_paramiko": round(theirs_cpu / paramiko_cpu, 3) if paramiko_cpu else None,
        "notes": ("%.0f MB random file, sshd on 127.0.0.1, cipher %s forced on OpenSSH, negotiated by ours: %s "
                  "(OpenSSH client) and %s (paramiko); key auth for all; median of %d runs, tools taken in turn; "
                  "peak RSS = ru_maxrss of each tool's own process tree (OpenSSH: the larger of sftp/ssh; ours: the "
                  "larger of Python/ssh). Ours includes connect, host key check, partial upload with "
                  "fsync@openssh.com (the server writes the file to disk before it gets its .sar name; plain `put` "
                  "leaves it in the server's page cache), posix-rename and the size check; 'ratio' is against plain "
                  "`put`, ratio_vs_fsync against `put -f` (same durability). cpu_s = client CPU seconds (ours: the "
                  "deliver() call, all threads, and its ssh process; OpenSSH: sftp + ssh); ratio_cpu = OpenSSH's / "
                  "ours (> 1: we use less). "
                  "OpenSSH client (the target's choice where `ssh` exists): the target runs `ssh -s sftp` and "
                  "speaks SFTP over a socketpair (as OpenSSH's sftp runs ssh; restic and borg drive ssh the same way); "
                  "ssh does the SSH packets, cipher and window "
                  "in C (%.2f CPU-s here), our process builds one 255 KiB write request per SFTP round and hands "
                  "the data to ssh with sendfile(2), from the page cache, without copying it through Python "
                  "(%.2f CPU-s, connection and checks included). Both clients send the same bytes through the same "
                  "ssh; `sftp` uses 32 KiB requests, 64 in flight, ours 255 KiB, 4 MiB in flight. On this 2-core "
                  "machine ssh, sshd and the server's sftp code share the two cores: the transfer is CPU-bound, so "
                  "wall times follow whatever else runs on the machine; compare CPU seconds too. What separates "
                  "ours from plain `put` is the durability: the server's fsync of the whole file before the rename, "
                  "which `put -f` pays as well (%.2f s more than `put` here); our deliver() waits %.2f s (median) "
                  "for the reply to its fsync@openssh.com, and the diagnostic row, the same deliver() with that "
                  "fsync left out (not something the target does), gives ratio_without_fsync against plain `put`. "
                  "paramiko client (where there is no `ssh`): sshd limits SSH packets to 32 KiB, so the upload is "
                  "%d packets, each built in Python (Channel.send, Message, Packetizer: padding, AES-GCM, "
                  "sequence numbers, socket send): of its %.2f CPU-s, AES-GCM itself is %.2f s (measured here on "
                  "the same packets) and %.2f s (about %.0f us per packet) is paramiko's per-packet Python work; "
                  "that, on one core under the GIL, is what caps that row."
                  % (size_bytes / MB, CIPHER, ", ".join(sorted(cipher_seen["ours"])) or "?",
                     ", ".join(sorted(cipher_seen["ours_paramiko"])) or "?", REPEAT, ssh_cpu, python_cpu,
                     rows[1]["seconds"] - rows[0]["seconds"], fsync_s, packets,
                     paramiko_cpu, gcm, python_work, 1e6 * python_work / packets)),
    }


if __name__ == "__main__":
    print(json.dumps(run(tempfile.gettempdir(), 1000 * MB), indent=2))
