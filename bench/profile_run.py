# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Profile one whole `sar-backup run` with py-spy (sampling every thread, idle ones too) and say
where its time goes: per phase of the runner (prepare = dumps, build = archive, deliver = targets)
and per leaf function (sha256, zstd, reads, writes, waiting for pg_dump...).

    .venv/bin/python bench/profile_run.py CONFIG_DIR JOB [--out DIR]

Needs py-spy (pinned in requirements/dev.txt, so `make bench` profiles; the bench skips the profile without it)."""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "tests"))

from harness.playbook import collections_path  # noqa: E402  pylint: disable=wrong-import-position

CLI = "import sys; from ansible_collections.sar.backup.plugins.module_utils import cli; sys.exit(cli.main(sys.argv[1:]))"
PHASES = ("prepare", "build", "deliver", "finish", "check", "estimate", "clean_stale_staging")


def summarize(raw_path: str, rate: int) -> str:
    by_phase, by_leaf, by_thread = collections.Counter(), collections.Counter(), collections.Counter()
    total = main = 0
    with open(raw_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            stack, _sep, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(";")
            thread = frames[0] if frames else "?"
            names = [f.split(" (")[0].rpartition(".")[2] for f in frames]
            if "<module>" in names:  # the main thread: its time per runner phase is the run's wall time
                phase = next((p for p in reversed(names) if p in PHASES), "other (start, imports, lock, hooks)")
                by_phase[phase] += count
                main += count
            kind = thread.split(":", 1)[1].strip() if ":" in thread else "main"
            by_thread["sha256 thread" if "sar-sha256" in kind else ("main" if "<module>" in names else kind)] += count
            by_leaf[names[-1]] += count
            total += count
    out = ["samples: %d at %d Hz (every thread, waiting included: %.1f thread-seconds; main thread %.1f s)"
           % (total, rate, total / rate, main / rate), "",
           "| phase of the main thread (innermost runner step on its stack) | seconds | share of the run |",
           "|---|---|---|"]
    out += ["| %s | %.2f | %.0f%% |" % (k, v / rate, 100.0 * v / max(main, 1)) for k, v in by_phase.most_common()]
    out += ["", "| leaf function (every thread) | thread-seconds | share |", "|---|---|---|"]
    out += ["| %s | %.2f | %.0f%% |" % (k.replace("|", "\\|"), v / rate, 100.0 * v / total)
            for k, v in by_leaf.most_common(15)]
    return "\n".join(out)


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("config_dir")
    parser.add_argument("job")
    parser.add_argument("--out", default=os.path.join(BENCH, "output", "profile"))
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--collections-path", default=os.environ.get("BENCH_COLLECTIONS_PATH") or collections_path())
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    os.makedirs(args.out, exist_ok=True)
    raw = os.path.join(args.out, "%s.raw" % args.job)
    env = dict(os.environ, PYTHONPATH=args.collections_path)
    start = time.perf_counter()
    proc = subprocess.run([spy, "record", "--idle", "--threads", "--nonblocking", "-r", str(args.rate), "-f", "raw",
                           "-o", raw, "--", sys.executable, "-c", CLI, "--config-dir", args.config_dir, "run", args.job],
                          env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    sys.stdout.write("run: exit %d in %.2fs\n%s\n" % (proc.returncode, seconds, proc.stderr[-3000:]))
    sys.stdout.write(summarize(raw, args.rate) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
