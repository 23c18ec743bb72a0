# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Build one wheelhouse for hosts of one Python version and platform, on the controller
(role sar.backup.sar_backup, `sar_backup_wheelhouse: controller`).

    sar_backup_wheelhouse.py --python-version 3.9.18 --platform manylinux2014_x86_64 [--platform ...]
        --machine x86_64 --requirement requirements/runtime.txt --dest DIR --marker NAME --tar DIR.tar

1. `pip download --only-binary=:all: --implementation cp --python-version X.Y.Z --platform ...`
   of the requirements into DIR;
2. pip evaluates the environment markers of dependencies for the Python that runs it, not for
   --python-version (a dependency such as `typing-extensions; python_full_version < "3.11"` of
   cryptography is left out when the controller runs 3.11): every wheel's Requires-Dist is read
   again, its markers evaluated for the target Python on Linux, and what is missing is downloaded
   the same way, until nothing is;
3. DIR/NAME names what was built (the host keeps it beside the wheels), and DIR.tar (one file to
   copy) appears last, atomically: an interrupted build is done again.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pragma: no cover
    from pip._vendor.packaging.requirements import Requirement  # type: ignore
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore
    from pip._vendor.packaging.version import Version  # type: ignore

ROUNDS = 10


def download(args, requirements: list) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--only-binary=:all:", "--implementation", "cp", "--python-version", args.python_version]
    cmd += ["--platform=%s" % p for p in args.platform]
    cmd += requirements + ["--dest", args.dest]
    subprocess.run(cmd, check=True)


def wheels(dest: str) -> dict:
    """canonical name -> [(version, path)] of the wheels in dest."""
    out = {}
    for name in sorted(os.listdir(dest)):
        if name.endswith(".whl"):
            dist, version = name.split("-")[:2]
            out.setdefault(canonicalize_name(dist), []).append((Version(version), os.path.join(dest, name)))
    return out


def requires(path: str) -> list:
    with zipfile.ZipFile(path) as whl:
        meta = [n for n in whl.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        text = whl.read(meta[0]).decode("utf-8") if meta else ""
    return email.parser.Parser().parsestr(text).get_all("Requires-Dist") or []


def target_environment(python_version: str, machine: str) -> dict:
    """PEP 508 marker variables of a CPython python_version on Linux/machine."""
    return {
        "python_version": ".".join(python_version.split(".")[:2]),
        "python_full_version": python_version,
        "implementation_name": "cpython",
        "implementation_version": python_version,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "platform_machine": machine,
        "sys_platform": "linux",
        "os_name": "posix",
        "extra": "",
    }


def missing(dest: str, environment: dict) -> list:
    have = wheels(dest)
    out = []
    for entries in have.values():
        for _version, path in entries:
            for line in requires(path):
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate(environment):
                    continue
                versions = [v for v, _p in have.get(canonicalize_name(req.name), [])]
                if not any(req.specifier.contains(v, prereleases=True) for v in versions):
                    text = "%s%s" % (req.name, req.specifier)
                    if text not in out:
                        out.append(text)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--python-version", required=True)
    parser.add_argument("--platform", action="append", required=True)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--requirement", required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--tar", required=True)
    args = parser.parse_args()
    os.makedirs(args.dest, exist_ok=True)
    download(args, ["--requirement", args.requirement])
    environment = target_environment(args.python_version, args.machine)
    for _round in range(ROUNDS):
        more = missing(args.dest, environment)
        if not more:
            break
        download(args, more)
    else:
        raise SystemExit("wheelhouse: dependencies still missing after %d rounds: %s"
                         % (ROUNDS, missing(args.dest, environment)))
    with open(os.path.join(args.dest, args.marker), "w", encoding="utf-8") as handle:
        handle.write("python %s\nplatforms %s\nrequirements %s\n"
                     % (args.python_version, " ".join(args.platform), os.path.basename(args.requirement)))
    partial = args.tar + ".partial"
    with tarfile.open(partial, "w") as tar:
        for name in sorted(os.listdir(args.dest)):
            if name.endswith(".whl") or name == args.marker:
                tar.add(os.path.join(args.dest, name), arcname=name)
    os.replace(partial, args.tar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
