# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Benchmark: building and verifying a `.sar` archive against GNU tar + gzip/zstd.

The data set looks like an appliance's (about `size_bytes` in all, generated
once and kept under the work dir, seeded so it is the same every time):

- ~2 %  many small configuration files (0.1-8 KB of key = value text);
- ~70 % voicemail and announcement recordings: WAV files of 30 KB-3 MB of
  random samples (incompressible, the worst case for any compressor);
- ~28 % compressible text: a pg_dump-like SQL file (COPY rows of a CDR table,
  about 2.5x compressible) and Asterisk-like log files.

Side by side, each run in a subprocess of its own so its peak RSS (ru_maxrss;
for a pipeline, the sum over its processes) is its own, REPEAT times in turn,
the median kept:

- our `ArchiveWriter` with zstd, with gzip, and with zstd + age passphrase
  encryption (when the engine offers it);
- `tar -cf - DIR | gzip -6` and `tar -cf - DIR | zstd -3 -T0` (GNU tar, the
  zstd CLI; `-T1` too, for a single-threaded reference);
- our `verify()` against `zstd -dc X | tar -t` (our verify also recomputes the
  SHA-256 of every member; tar only walks the headers);
- memory bound: our zstd writer on the data set and on twice the data set
  (the same trees added twice), peak RSS of both.

    .venv/bin/python bench/bench_archive.py [SIZE_BYTES]
"""

from __future__ import annotations

import itertools
import json
import os
import random
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
DATASET_VERSION = 1
PASSPHRASE = "bench-passphrase-not-a-secret"

# Runs in a fresh interpreter: build one archive; time, result, peak RSS of this process.
OURS_WRITE = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.sar.backup.plugins.module_utils import archive
args = json.loads(sys.argv[2])
start = time.perf_counter()
writer = archive.ArchiveWriter(args["out"], compression=args["compression"], encryption=args["encryption"])
try:
    writer.add_manifest(args["manifest"])
    for prefix, root in args["trees"]:
        writer.add_tree(prefix, root)
    info = writer.close()
except BaseException:
    writer.abort()
    raise
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss,
                  "info": info}, default=str))
"""

OURS_VERIFY = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.sar.backup.plugins.module_utils import archive
args = json.loads(sys.argv[2])
start = time.perf_counter()
if args["passphrase"]:
    result = archive.verify(args["path"], passphrase=args["passphrase"])
else:
    result = archive.verify(args["path"])
seconds = time.perf_counter() - start
summary = {"members": len(result.get("members", [])), "checksums_ok": result.get("checksums_ok")}
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss,
                  "info": summary}, default=str))
"""

# Peak RSS of the interpreter with the engine imported and nothing done: the floor of every "ours" row.
OURS_IDLE = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.sar.backup.plugins.module_utils import archive
print(json.dumps({"seconds": 0.0, "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

# A pipeline of commands, each waited for on its own so its ru_maxrss is known; the output is fsynced, as ours is.
PIPELINE = r"""
import json, os, subprocess, sys, time
stages, out = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
sink = open(out, "wb") if out != "-" else subprocess.DEVNULL
procs, prev = [], None
for index, argv in enumerate(stages):
    last = index == len(stages) - 1
    proc = subprocess.Popen(argv, stdin=prev.stdout if prev else subprocess.DEVNULL,
                            stdout=sink if last else subprocess.PIPE)
    if prev:
        prev.stdout.close()
    procs.append(proc)
    prev = proc
peaks, cpu = [], 0.0
for proc in procs:
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit("%s exited with %d" % (proc.args[0], proc.returncode))
    peaks.append(usage.ru_maxrss)
    cpu += usage.ru_utime + usage.ru_stime
if out != "-":
    os.fsync(sink.fileno())
    sink.close()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_rss_kb": sum(peaks), "peaks_kb": peaks}))
"""


# -- the data set ---------------------------------------------------------------------------------------------------

def _wav_header(data_len: int) -> bytes:
    """A 44-byte RIFF/WAVE header: 8 kHz, 16-bit mono PCM, as Asterisk writes voicemail."""
    rate, bits, channels = 8000, 16, 1
    block = channels * bits // 8
    return (b"RIFF" + (36 + data_len).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + channels.to_bytes(2, "little") + rate.to_bytes(4, "little")
            + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little") + bits.to_bytes(2, "little")
            + b"data" + data_len.to_bytes(4, "little"))


def _config_text(rnd: random.Random, size: int) -> bytes:
    keys = ("context", "secret_ref", "host", "type", "disallow", "allow", "callerid", "mailbox", "language",
            "nat", "qualify", "transport", "dtmfmode", "directmedia", "permit", "deny", "callgroup", "pickupgroup")
    lines = ["; generated by sar-backup bench", "[general]"]
    length = 40
    while length < size:
        if rnd.random() < 0.08:
            line = "\n[%s%d]" % (rnd.choice(("peer", "user", "queue", "trunk", "ivr")), rnd.randrange(100, 999))
        else:
            values = ("yes", "no", "ulaw,alaw", "rfc2833", "default", "from-internal", str(rnd.randrange(10 ** 6)),
                      "10.%d.%d.0/24" % (rnd.randrange(256), rnd.randrange(256)))
            line = "%s = %s" % (rnd.choice(keys), rnd.choice(values))
        lines.append(line)
        length += len(line) + 1
    return ("\n".join(lines) + "\n").encode()[:size]


def _cdr_rows(rnd: random.Random, first_id: int, size: int):
    """Tab-separated COPY rows of a CDR-like table, about `size` bytes, in pieces."""
    exts = ["%d" % (100 + i) for i in range(300)]
    disp = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED")
    chans = ("SIP", "PJSIP", "IAX2", "Local")
    row_id, done, parts = first_id, 0, []
    while done < size:
        row_id += 1
        line = "%d\t2024-%02d-%02d %02d:%02d:%02d+01\t%s\t+49%09d\t%s/%s-%08x\t%d\t%d\t%s\t%08x-%04x\n" % (
            row_id, rnd.randint(1, 12), rnd.randint(1, 28), rnd.randrange(24), rnd.randrange(60), rnd.randrange(60),
            rnd.choice(exts), rnd.randrange(10 ** 9), rnd.choice(chans), rnd.choice(exts), rnd.getrandbits(32),
            rnd.randrange(3600), rnd.randrange(3600), rnd.choice(disp), rnd.getrandbits(32), rnd.getrandbits(16))
        parts.append(line)
        done += len(line)
        if len(parts) >= 20000:
            yield "".join(parts).encode()
            parts = []
    if parts:
        yield "".join(parts).encode()


def _log_lines(rnd: random.Random, size: int):
    words = ("Registered", "Unregistered", "Call", "from", "to", "answered", "hangup", "cause", "channel", "bridge",
             "voicemail", "left", "message", "for", "mailbox", "queue", "member", "paused", "codec", "negotiated")
    done, parts = 0, []
    while done < size:
        line = "[2024-%02d-%02d %02d:%02d:%02d] %s[%d] %s: %s\n" % (
            rnd.randint(1, 12), rnd.randint(1, 28), rnd.randrange(24), rnd.randrange(60), rnd.randrange(60),
            rnd.choice(("NOTICE", "VERBOSE", "WARNING", "DEBUG")), rnd.randrange(1000, 99999),
            rnd.choice(("chan_sip.c", "app_voicemail.c", "pbx.c", "res_pjsip.c")),
            " ".join(rnd.choice(words) for _word in range(rnd.randrange(4, 14))))
        parts.append(line)
        done += len(line)
        if len(parts) >= 20000:
            yield "".join(parts).encode()
            parts = []
    if parts:
        yield "".join(parts).encode()


def _write_stream(path: str, pieces) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    total = 0
    with open(path, "wb") as handle:
        for piece in pieces:
            handle.write(piece)
            total += len(piece)
    return total


def build_dataset(base: str, size_bytes: int) -> dict:
    """The appliance-like trees under base/appliance; reused when already built for this size."""
    base = os.path.abspath(base)
    root = os.path.join(base, "appliance")
    marker = os.path.join(base, "dataset.json")
    want = {"version": DATASET_VERSION, "size": size_bytes}
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as handle:
            have = json.load(handle)
        if {k: have.get(k) for k in want} == want and os.path.isdir(root):
            return have
    shutil.rmtree(base, ignore_errors=True)
    rnd = random.Random(20240101)
    stats = {"config": [0, 0], "wav": [0, 0], "text": [0, 0]}

    # ~2 %: configuration files, 0.1-8 KB each
    budget, index = size_bytes * 2 // 100, 0
    while budget > 0:
        size = min(budget, int(rnd.uniform(100, 8000)))
        sub = os.path.join(root, "etc", rnd.choice(("asterisk", "starface", "openfire", "sysconfig")), "d%02d" % (index % 40))
        path = os.path.join(sub, "f%05d.conf" % index)
        os.makedirs(sub, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(_config_text(rnd, size))
        budget -= size
        stats["config"][0] += 1
        stats["config"][1] += size
        index += 1

    # ~70 %: recordings of random samples (voicemail 50 %, announcements 20 %)
    for tree, share in (("var/spool/asterisk/voicemail/default", 50), ("var/lib/starface/announcements", 20)):
        budget, index = size_bytes * share // 100, 0
        while budget > 0:
            data_len = min(budget, int(min(3_000_000, max(30_000, rnd.lognormvariate(12.8, 0.8)))))
            folder = os.path.join(root, tree, "%d" % (100 + index % 300), "INBOX" if "voicemail" in tree else "")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "msg%04d.wav" % index), "wb") as handle:
                handle.write(_wav_header(data_len))
                handle.write(rnd.randbytes(data_len))
            budget -= data_len
            stats["wav"][0] += 1
            stats["wav"][1] += data_len + 44
            index += 1

    # ~28 %: a pg_dump-like SQL file and log files
    sql_size = size_bytes * 24 // 100
    header = ("--\n-- PostgreSQL database dump\n--\n\nCREATE TABLE public.cdr (\n    id bigint NOT NULL,\n"
              "    calldate timestamp with time zone,\n    src text,\n    dst text,\n    channel text,\n"
              "    duration integer,\n    billsec integer,\n    disposition text,\n    uniqueid text\n);\n\n"
              "COPY public.cdr (id, calldate, src, dst, channel, duration, billsec, disposition, uniqueid) FROM stdin;\n")
    sql = _write_stream(os.path.join(root, "dump", "starface.sql"),
                        itertools.chain([header.encode()], _cdr_rows(rnd, 0, sql_size), [b"\\.\n\n-- dump complete\n"]))
    stats["text"] = [1, sql]
    log_budget = size_bytes * 4 // 100
    for index in range(4):
        part = _write_stream(os.path.join(root, "var", "log", "asterisk", "messages.%d" % index),
                             _log_lines(rnd, log_budget // 4))
        stats["text"][0] += 1
        stats["text"][1] += part
    info = dict(want)
    info.update({
        "files": sum(v[0] for v in stats.values()),
        "bytes": sum(v[1] for v in stats.values()),
        "mix": {k: {"files": v[0], "bytes": v[1]} for k, v in stats.items()},
        "root": root,
    })
    with open(marker, "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=1)
    return info


def warm_up(root: str) -> None:
    """Read every file once so every tool below reads the data set from the page cache."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                while handle.read(4 * 1024 * 1024):
                    pass


# -- measuring -------------------------------------------------------------------------------------------------------

def measure(argv: list) -> dict:
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv[:2])[:200], proc.stderr.strip()[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(tool: str, runs: list, input_bytes: int, output_bytes) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    out = {"tool": tool, "seconds": round(seconds, 2), "input_mb_s": round(input_bytes / MB / seconds, 1),
           "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2)}
    if output_bytes is not None:
        out["output_mb"] = round(output_bytes / MB, 1)
        out["output_pct"] = round(100.0 * output_bytes / input_bytes, 1)
    else:
        out["output_mb"] = out["output_pct"] = "-"
    out["peak_rss_mb"] = round(max(r["peak_rss_kb"] for r in runs) / 1024.0, 1)
    out["runs_s"] = [round(r["seconds"], 2) for r in runs]
    return out


def manifest_for(info: dict, compression: str, encryption, twice: bool) -> tuple:
    """(manifest, trees) of an archive of the data set (twice: once more as a second tree), as a run
    writes them: the writer checks the manifest as readers do, and each tree goes to its source's member."""
    if collections_path() not in sys.path:
        sys.path.insert(0, collections_path())
    from ansible_collections.sar.backup.plugins.module_utils import archive  # pylint: disable=import-outside-toplevel
    sources = [{"category": "core", "kind": "files", "member": "files/core/%d" % i, "origin": info["root"],
                "size": info["bytes"], "files": info["files"]} for i in range(2 if twice else 1)]
    manifest = archive.new_manifest(job="bench", host="benchhost", created="2026-01-01T00:00:00Z", categories=["core"],
                                    compression=compression, encryption=encryption, sources=sources,
                                    tool="sar-backup bench")
    return manifest, [[src["member"], info["root"]] for src in sources]


def run(workdir: str, size_bytes: int) -> dict:
    os.makedirs(workdir, exist_ok=True)
    info = build_dataset(os.path.join(workdir, "dataset-%d" % size_bytes), size_bytes)
    root = info["root"]
    parent, leaf = os.path.split(root)
    data = info["bytes"]
    scratch = tempfile.mkdtemp(prefix="bench-archive-", dir=workdir)
    farm = collections_path()
    try:
        subprocess.run(["sync"], check=True)
        warm_up(root)
        idle = measure([sys.executable, "-c", OURS_IDLE, farm])

        def ours(name: str, compression: str, encryption=None, twice: bool = False) -> dict:
            out = os.path.join(scratch, name)
            manifest, trees = manifest_for(info, compression, encryption, twice)
            args = {"out": out, "compression": compression, "encryption": encryption, "trees": trees,
                    "manifest": manifest}
            result = measure([sys.executable, "-c", OURS_WRITE, farm, json.dumps(args)])
            result["size"] = os.path.getsize(out)
            return result

        def pipeline(name: str, stages: list) -> dict:
            out = os.path.join(scratch, name) if name != "-" else "-"
            result = measure([sys.executable, "-c", PIPELINE, json.dumps(stages), out])
            result["size"] = os.path.getsize(out) if out != "-" else None
            return result

        def ours_verify(name: str, passphrase=None) -> dict:
            args = {"path": os.path.join(scratch, name), "passphrase": passphrase}
            result = measure([sys.executable, "-c", OURS_VERIFY, farm, json.dumps(args)])
            result["size"] = None
            return result

        tar = ["tar", "-cf", "-", "-C", parent, leaf]
        plan = [
            ("ours_zstd", "sar ArchiveWriter zstd", data, lambda: ours("ours.sar", "zstd")),
            ("tar_zstd", "tar | zstd -3 -T0", data, lambda: pipeline("tar.zst", [tar, ["zstd", "-3", "-T0", "-q", "-c"]])),
            ("tar_zstd1", "tar | zstd -3 -T1 (single thread)", data,
             lambda: pipeline("tar1.zst", [tar, ["zstd", "-3", "-T1", "-q", "-c"]])),
            ("ours_gzip", "sar ArchiveWriter gzip", data, lambda: ours("ours-gz.sar", "gzip")),
            ("tar_gzip", "tar | gzip -6", data, lambda: pipeline("tar.gz", [tar, ["gzip", "-6", "-c"]])),
            ("ours_age", "sar ArchiveWriter zstd + age passphrase", data,
             lambda: ours("ours-age.sar", "zstd", {"passphrase": PASSPHRASE, "recipients": []})),
            ("ours_zstd_2x", "sar ArchiveWriter zstd, 2x data (memory check)", 2 * data,
             lambda: ours("ours-2x.sar", "zstd", twice=True)),
        ]
        verify_plan = [
            ("ours_verify", "sar verify() (zstd)", data, lambda: ours_verify("ours.sar")),
            ("tar_list", "zstd -dc | tar -t", data,
             lambda: pipeline("-", [["zstd", "-dc", "-q", os.path.join(scratch, "tar.zst")], ["tar", "-tf", "-"]])),
            ("zstd_sha", "zstd -dc | sha256sum (same hashing work)", data,
             lambda: pipeline("-", [["zstd", "-dc", "-q", os.path.join(scratch, "tar.zst")], ["sha256sum"]])),
            ("ours_verify_age", "sar verify() (zstd + age)", data, lambda: ours_verify("ours-age.sar", PASSPHRASE)),
        ]
        results, errors, labels, inputs = {}, {}, {}, {}
        for steps in (plan, verify_plan):
            for attempt in range(REPEAT):
                for key, label, input_bytes, func in steps:
                    labels[key], inputs[key] = label, input_bytes
                    if key in errors:
                        continue
                    subprocess.run(["sync"], check=True)  # untimed: no dirty data left over from the previous run
                    try:
                        results.setdefault(key, []).append(func())
                    except Exception as exc:  # pylint: disable=broad-except
                        if attempt == 0 and key in ("ours_age", "ours_verify_age", "tar_zstd1"):
                            errors[key] = str(exc).strip().splitlines()[-1][:300]  # optional rows: say why they are missing
                            results.pop(key, None)
                            continue
                        raise
        rows = [row(labels[key], runs, inputs[key], runs[0]["size"]) for key, runs in results.items()]
        rows.append({"tool": "(python + engine imported, idle)", "seconds": "-", "input_mb_s": "-", "cpu_s": "-", "output_mb": "-",
                     "output_pct": "-", "peak_rss_mb": round(idle["peak_rss_kb"] / 1024.0, 1), "runs_s": "-"})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    by_key = dict(zip(results, rows))

    def speed(key: str) -> float:
        return by_key[key]["input_mb_s"]

    def cpu(key: str) -> float:
        return by_key[key]["cpu_s"]

    out = {
        "title": "archive build and verify vs GNU tar + gzip / zstd",
        "rows": rows,
        "ratio": round(speed("ours_zstd") / speed("tar_zstd"), 3),
        "ratio_cpu_zstd": round(cpu("tar_zstd") / cpu("ours_zstd"), 3),
        "ratio_gzip": round(speed("ours_gzip") / speed("tar_gzip"), 3),
        "ratio_cpu_gzip": round(cpu("tar_gzip") / cpu("ours_gzip"), 3),
        "ratio_verify": round(speed("ours_verify") / speed("tar_list"), 3),
        "ratio_verify_vs_zstd_sha256sum": round(speed("ours_verify") / speed("zstd_sha"), 3),
        "ratio_output_size_zstd": round(by_key["ours_zstd"]["output_mb"] / by_key["tar_zstd"]["output_mb"], 3),
        "ratio_output_size_gzip": round(by_key["ours_gzip"]["output_mb"] / by_key["tar_gzip"]["output_mb"], 3),
        "ratio_peak_rss_2x_vs_1x": round(by_key["ours_zstd_2x"]["peak_rss_mb"] / by_key["ours_zstd"]["peak_rss_mb"], 3),
    }
    if "tar_zstd1" in by_key:
        out["ratio_vs_zstd_single_thread"] = round(speed("ours_zstd") / speed("tar_zstd1"), 3)
    if "ours_age" in by_key:
        out["ratio_age_vs_plain_zstd"] = round(speed("ours_age") / speed("ours_zstd"), 3)
    mix = info["mix"]
    notes = [
        "Data set: %d files, %.0f MB: %d config files (%.0f MB), %d WAV files of random samples (%.0f MB, incompressible), "
        "%d SQL/log text files (%.0f MB, compressible)." % (
            info["files"], data / MB, mix["config"]["files"], mix["config"]["bytes"] / MB, mix["wav"]["files"],
            mix["wav"]["bytes"] / MB, mix["text"]["files"], mix["text"]["bytes"] / MB),
        "All tools read the data set from the page cache (warm-up read; dirty data flushed, untimed, before each run) and "
        "write to the same filesystem; every output is fsynced (ours by the writer, the pipelines by their parent). "
        "Median of %d runs, tools taken in turn; input MB/s = data set bytes / seconds (verify rows too)." % REPEAT,
        "Peak RSS: ru_maxrss of the process doing the work (ours: the Python interpreter, its imports included - see the "
        "idle row; pipelines: the sum over their processes). The 2x row adds the same trees twice, so the writer sees "
        "twice the data: bounded memory means its peak RSS stays about the same as the 1x row.",
        "'ratio' = our zstd MB/s / `tar | zstd -3 -T0` MB/s (> 1 means we are faster); ratio_gzip, ratio_verify alike; "
        "ratio_cpu_* = the peer's CPU seconds / ours "
        "(user + system of every process involved, interpreter start included; less sensitive than wall time to other load "
        "on a shared machine; > 1 means we use less CPU); ratio_output_size_* = our bytes / the peer's bytes (< 1 means smaller). "
        "`zstd -dc | tar -t` only walks headers, "
        "our verify also hashes every member (so `zstd -dc | sha256sum`, which decompresses and hashes everything, is given too). "
        "age: the passphrase recipient uses scrypt (work factor 2^18, about 256 MiB and ~0.5 s by design), which sets "
        "the peak RSS of the encrypted rows; the encryption itself streams in 64 KiB chunks.",
    ]
    for key, why in errors.items():
        notes.append("Row '%s' not measured: %s" % (labels[key], why))
    out["notes"] = " ".join(notes)
    return out


if __name__ == "__main__":
    print(json.dumps(run(os.path.join(ROOT, "bench", "output", "archive"), int(sys.argv[1]) if len(sys.argv) > 1 else 1000 * MB),
                     indent=2))
