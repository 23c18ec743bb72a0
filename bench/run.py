# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Run every benchmark in bench/ and write docs/benchmarks.md.

Each `bench/bench_<name>.py` exposes `run(workdir, size_bytes) -> dict` (or
`run(workdir)` when its size is fixed, as the rollout bench) returning
{"title", "rows": [{column: value}], "ratio" (optional), "notes"}, plus any
other `ratio*` keys. A bench that fails is listed with its error; the others
still run.

    make bench                                   # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --only archive --size 200MB
    .venv/bin/python bench/run.py --no-write     # print, leave docs/benchmarks.md alone
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib
import inspect
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
OUTPUT = os.path.join(BENCH, "output")  # results.json (the page's memory of earlier runs)
# Work files and the generated data sets: outside the source tree (SAR_BENCH_DIR to choose).
WORKDIR = os.environ.get("SAR_BENCH_DIR") or "/var/tmp/sar-backup-bench"
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
DEFAULT_SIZE = 1000 * 1000 * 1000
# Benches whose work dir holds a generated data set, kept so that re-runs skip generating it.
KEEP_DATA = ("archive", "run", "drill")
UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4,
         "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4}


def parse_size(text: str) -> int:
    """Bytes from `1000000`, `200MB`, `1GB`, `1.5GiB` (KB/MB/GB powers of 1000, KiB/MiB/GiB of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError("not a size: %r (examples: 200MB, 1GB, 512MiB, 1000000)" % text)
    value = int(float(match.group(1)) * UNITS[match.group(2).upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive: %r" % text)
    return value


def discover() -> dict:
    """bench name -> module file, for every bench_*.py next to this file."""
    found = {}
    for path in sorted(glob.glob(os.path.join(BENCH, "bench_*.py"))):
        found[os.path.basename(path)[len("bench_"):-len(".py")]] = path
    return found


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def machine_facts() -> dict:
    cpuinfo = _read("/proc/cpuinfo")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    return {
        "nproc": os.cpu_count(),
        "cpu": model.group(1).strip() if model else platform.processor() or "?",
        "ram": "%.1f GiB" % (int(meminfo.group(1)) / 1024.0 / 1024.0) if meminfo else "?",
        "python": "%s (%s)" % (platform.python_version(), sys.executable),
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "os": _os_name(),
    }


def _os_name() -> str:
    match = re.search(r'^PRETTY_NAME="?([^"\n]+)', _read("/etc/os-release"), re.M)
    return match.group(1) if match else "?"


def run_one(name: str, path: str, workdir: str, size: int) -> dict:
    """Import and run one bench; never raises (a failure becomes the result)."""
    started = time.time()
    sized = True
    try:
        if BENCH not in sys.path:
            sys.path.insert(0, BENCH)
        module = importlib.import_module("bench_%s" % name)
        params = inspect.signature(module.run).parameters
        # run(workdir, size_bytes) takes the size; run(workdir, <options with defaults>) has sizes of its own.
        required = [p for p in params.values() if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        sized = "size_bytes" in params or len(required) >= 2
        os.makedirs(workdir, exist_ok=True)
        result = module.run(workdir, size) if sized else module.run(workdir)
        if not isinstance(result, dict) or "rows" not in result:
            raise TypeError("run() returned %r, expected a dict with 'rows'" % type(result).__name__)
        result.setdefault("title", name)
        result["ok"] = True
    except BaseException as exc:  # pylint: disable=broad-except
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = {"title": name, "ok": False, "error": "%s: %s" % (type(exc).__name__, exc),
                  "traceback": traceback.format_exc(), "module": os.path.relpath(path, ROOT)}
    result["name"] = name
    result["measured"] = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")
    result["size"] = size if sized else None
    result["elapsed_s"] = round(time.time() - started, 1)
    return result


def _cell(value) -> str:
    if isinstance(value, float):
        text = "%g" % value if abs(value) < 1e6 else "%.0f" % value
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_cell(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list) -> list:
    columns = []
    for entry in rows:
        for key in entry:
            if key not in columns:
                columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _column in columns) + "|"]
    for entry in rows:
        lines.append("| " + " | ".join(_cell(entry.get(c, "")) for c in columns) + " |")
    return lines


def render(results: list, facts: dict, size: int, argv: list) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    out = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py` on %s. Do not edit by hand: re-run the benchmarks "
        "(see *How to reproduce* below and `bench/README.md` for what each one measures and how to read the ratios)."
        % now.isoformat(timespec="seconds"),
        "",
        "## Machine",
        "",
        "| fact | value |",
        "|---|---|",
    ]
    out += ["| %s | %s |" % (key, _cell(value)) for key, value in facts.items()]
    out += ["| size of the last run (`--size`) | %d bytes (%.0f MB) |" % (size, size / 1e6),
            "| last command | `%s` |" % " ".join(["bench/run.py"] + argv), ""]
    out += ["## Summary", "", "| bench | result | ratio (ours / peer) |", "|---|---|---|"]
    for res in results:
        if res.get("raw"):
            out.append("| %s | %s | %s |" % (res["name"], res["title"], res["summary_ratio"]))
        elif res["ok"]:
            ratio = res.get("ratio")
            out.append("| %s | %s | %s |" % (res["name"], _cell(res["title"]), _cell(ratio) if ratio is not None else "-"))
        else:
            out.append("| %s | **failed**: %s | - |" % (res["name"], _cell(res["error"])[:300]))
    out.append("")
    for res in results:
        if res.get("raw"):  # a section kept from the page as it was
            out += [res["raw"], ""]
            continue
        out += ["## %s: %s" % (res["name"], res["title"]), "",
                "_Measured %s %s; the bench took %ss._" % (
                    res.get("measured", "?"), "with `--size %s`" % res["size"] if res.get("size") else "(its own sizes)",
                    res["elapsed_s"]), ""]
        if not res["ok"]:
            out += ["**This bench failed** (`%s`): `%s`" % (res["module"], _cell(res["error"])[:1000]),
                    "", "```", res["traceback"].strip()[-3000:], "```", ""]
            continue
        out += table(res["rows"])
        out.append("")
        ratios = [(k, v) for k, v in res.items() if k.startswith("ratio")]
        if ratios:
            out += ["- `%s`: **%s**" % (k, _cell(v)) for k, v in ratios]
            out.append("")
        if res.get("notes"):
            out += [_cell(res["notes"]), ""]
        if res.get("profile"):  # markdown of its own (tables), kept as it is
            out += ["### Profile", "", str(res["profile"]), ""]
    out += [
        "## How to reproduce",
        "",
        "```sh",
        "make bench                                   # all benches, 1 GB: .venv/bin/python bench/run.py",
        ".venv/bin/python bench/run.py --only archive # one bench",
        ".venv/bin/python bench/run.py --size 200MB   # a smaller data set",
        "```",
        "",
        "Work files go to `%s` (outside the source tree; `SAR_BENCH_DIR` chooses another place; the archive and run "
        "benches keep their generated data sets there so re-runs skip generating them). Numbers depend on the machine "
        "and on whatever else runs on it; compare the ratios, which are measured in the same run on the same data."
        % WORKDIR,
        "",
    ]
    return "\n".join(out)


def sections_of_page(text: str) -> list:
    """The bench sections of a docs/benchmarks.md as results that render() copies verbatim ("raw"), with the
    ratio of their summary row: what --only keeps when bench/output/results.json is absent (a fresh clone)."""
    summary = {name: (title, ratio) for name, title, ratio in re.findall(
        r"^\| ([A-Za-z0-9_]+) \| (.*) \| ([^|]*) \|$", text.split("\n## ", 3)[2] if text.count("\n## ") >= 3 else "",
        re.M)}
    out = []
    for match in re.finditer(r"^## ([A-Za-z0-9_]+): (.*?)\n(.*?)(?=^## |\Z)", text, re.M | re.S):
        name, title, body = match.groups()
        listed = summary.get(name, (title, "-"))
        out.append({"name": name, "title": listed[0], "ok": True, "raw": ("## %s: %s\n%s" % (name, title, body)).rstrip(),
                    "summary_ratio": listed[1].strip()})
    return out


def merge_previous(results: list) -> list:
    """With --only, keep the other benches' sections: from bench/output/results.json, else (a fresh clone)
    copied from the existing docs/benchmarks.md."""
    previous = _read(os.path.join(OUTPUT, "results.json"))
    try:
        old = json.loads(previous)["results"] if previous else sections_of_page(_read(DOC))
    except (ValueError, KeyError, TypeError):
        return results
    fresh = {r["name"] for r in results}
    kept = [r for r in old if r.get("name") not in fresh and r.get("name") != "How to reproduce"]
    return sorted(kept + results, key=lambda r: r["name"])


def main(argv: list) -> int:
    parser = argparse.ArgumentParser(description="Run the sar-backup benchmarks and write docs/benchmarks.md.")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this bench (archive, local, sftp, smb, rollout...); may be repeated")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE,
                        help="data size for the sized benches, e.g. 200MB, 1GB, 512MiB (default 1GB)")
    parser.add_argument("--workdir", default=WORKDIR,
                        help="where work files and data sets go (default $SAR_BENCH_DIR or /var/tmp/sar-backup-bench)")
    parser.add_argument("--no-write", action="store_true", help="print the results, do not write docs/benchmarks.md")
    parser.add_argument("--keep-output", action="store_true", help="keep each bench's work dir (the archive data set is always kept)")
    args = parser.parse_args(argv)

    available = discover()
    names = list(available)
    if args.only:
        unknown = [n for n in args.only if n not in available]
        if unknown:
            parser.error("unknown bench %s; available: %s" % (", ".join(unknown), ", ".join(available)))
        names = [n for n in names if n in args.only]

    results = []
    for name in names:
        workdir = os.path.join(os.path.abspath(args.workdir), name)
        sys.stdout.write("== bench %s (size %d bytes) ...\n" % (name, args.size))
        sys.stdout.flush()
        res = run_one(name, available[name], workdir, args.size)
        if res["ok"]:
            sys.stdout.write("   ok in %ss, ratio %s\n" % (res["elapsed_s"], res.get("ratio", "-")))
        else:
            sys.stdout.write("   FAILED in %ss: %s\n" % (res["elapsed_s"], res["error"]))
        sys.stdout.flush()
        results.append(res)
        if not args.keep_output and name not in KEEP_DATA:
            shutil.rmtree(workdir, ignore_errors=True)

    facts = machine_facts()
    if args.no_write:
        print(json.dumps({"machine": facts, "results": results}, indent=2, default=str))
        return 0 if all(r["ok"] for r in results) else 1
    if args.only:
        results = merge_previous(results)
    os.makedirs(OUTPUT, exist_ok=True)
    with open(os.path.join(OUTPUT, "results.json"), "w", encoding="utf-8") as handle:
        json.dump({"machine": facts, "size": args.size, "results": results}, handle, indent=2, default=str)
    text = render(results, facts, args.size, argv)
    tmp = DOC + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, DOC)
    sys.stdout.write("wrote %s\n" % os.path.relpath(DOC, ROOT))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
