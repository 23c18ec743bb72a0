# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The runtime's Python floor (issue 8): stated once, the same everywhere, and true.

- requirements/runtime.txt is ranges `>=LOW,<NEXT`; for the floor Python
  (roles/sar_backup/vars/main.yml `_sar_backup_python_floor`, 3.9) the
  requirements resolve as binary wheels for the oldest manylinux platform, and
  so do exactly the lower bounds (pip download, needs PyPI);
- the engine's unit tests (tests/unit) pass on a real floor Python with the
  lower bounds installed (a venv of the interpreter tests/harness/fleet.py
  floor_python() finds: $SAR_BACKUP_FLOOR_PYTHON, python3.9 on PATH, pyenv's);
- the smb and dropbox target tests pass with the lower bounds of the pure
  Python target libraries (smbprotocol, dropbox, pyudev) put first on the path;
- the role refuses an older (or missing) `sar_backup_python` before pip, with
  a message naming the variable and the floor, and changes nothing.

Run: cd /work/main && .venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_runtime_floor.py
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from harness.fleet import floor_python, python_floor
from harness.playbook import ROOT, collections_path, run_playbook

RUNTIME = os.path.join(ROOT, "requirements", "runtime.txt")
FLOOR = python_floor()
PLATFORM = "manylinux2014_x86_64"  # the oldest manylinux the wheels are built for (glibc 2.17)
# Test tooling for the floor venv, pinned here: the dev pins (requirements/test.txt, unit.txt) need Python 3.10+.
FLOOR_TOOLS = ("pytest==8.4.2", "pyrage==1.3.0", "PyYAML==6.0.3")
LINE = re.compile(r"^([A-Za-z0-9_.-]+)>=([0-9][^,<>=!\s]*),<([0-9][^,<>=!\s]*)$")


def requirement_lines() -> list:
    with open(RUNTIME, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]


def lower_bounds() -> dict:
    """name -> the range's lower bound, for every line of requirements/runtime.txt."""
    return {LINE.match(line).group(1): LINE.match(line).group(2) for line in requirement_lines()}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip(*args, env=None, timeout=900):
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)
    assert proc.returncode == 0, "pip %s failed (%d):\n%s\n%s" % (" ".join(args), proc.returncode,
                                                                  proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def wheels_in(folder: str) -> dict:
    """canonical name -> version of the wheels in a folder."""
    out = {}
    for name in os.listdir(folder):
        if name.endswith(".whl"):
            dist, version = name.split("-")[:2]
            out[canonical(dist)] = version
    return out


def cached_dir(tag: str, *parts: str) -> tuple:
    """A folder in the tmp dir named after what it holds (reused by later runs), and whether it is complete."""
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), "sar-backup-%s-%d-%s" % (tag, os.getuid(), digest))
    return path, os.path.isfile(os.path.join(path, ".complete"))


def mark_complete(path: str) -> None:
    with open(os.path.join(path, ".complete"), "w", encoding="utf-8") as handle:
        handle.write("complete\n")


def test_every_requirement_is_a_range_with_a_lower_bound():
    lines = requirement_lines()
    assert lines
    for line in lines:
        assert LINE.match(line), "%s: want name>=LOW,<NEXT (requirements/runtime.txt header)" % line


def test_the_floor_is_stated_the_same_everywhere():
    assert re.fullmatch(r"3\.[0-9]+", FLOOR), FLOOR
    with open(os.path.join(ROOT, "tests", "config.yml"), encoding="utf-8") as handle:
        assert yaml.safe_load(handle)["modules"]["python_requires"] == ">=" + FLOOR
    with open(os.path.join(ROOT, "roles", "sar_backup", "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        spec = yaml.safe_load(handle)["argument_specs"]["main"]["options"]["sar_backup_python"]
    assert "(%s or later" % FLOOR in " ".join(spec["description"])
    with open(os.path.join(ROOT, "roles", "sar_backup", "defaults", "main.yml"), encoding="utf-8") as handle:
        assert "%s or later" % FLOOR in handle.read()
    with open(os.path.join(ROOT, "docs", "role.md"), encoding="utf-8") as handle:
        assert "Python %s or later" % FLOOR in handle.read()
    # only platforms the role has been run on here
    with open(os.path.join(ROOT, "roles", "sar_backup", "meta", "main.yml"), encoding="utf-8") as handle:
        platforms = yaml.safe_load(handle)["galaxy_info"]["platforms"]
    assert platforms == [{"name": "Debian", "versions": ["bookworm"]}]


def test_runtime_requirements_resolve_for_the_floor(tmp_path):
    """What CI proves for the lowest supported Python and platform (needs PyPI)."""
    pip("download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:", "--python-version", FLOOR,
        "--platform", PLATFORM, "-r", RUNTIME, "-d", str(tmp_path))
    got = wheels_in(str(tmp_path))
    for name, low in lower_bounds().items():
        assert canonical(name) in got, (name, sorted(got))
        assert tuple(int(x) for x in re.findall(r"[0-9]+", got[canonical(name)])[:3]) >= \
            tuple(int(x) for x in re.findall(r"[0-9]+", low)[:3]), (name, got[canonical(name)], low)


def test_the_lower_bounds_themselves_install_on_the_floor(tmp_path):
    constraints = tmp_path / "lower-bounds.txt"
    constraints.write_text("".join("%s==%s\n" % item for item in lower_bounds().items()))
    dest = tmp_path / "wheels"
    pip("download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:", "--python-version", FLOOR,
        "--platform", PLATFORM, "-r", RUNTIME, "-c", str(constraints), "-d", str(dest))
    got = wheels_in(str(dest))
    assert {canonical(n): v for n, v in lower_bounds().items()}.items() <= got.items(), got


@pytest.fixture(scope="module")
def floor_venv():
    """A venv of a real floor Python with the lower bounds of requirements/runtime.txt and the floor
    test tooling (cached in the tmp dir by interpreter, requirements and tools)."""
    found = floor_python()
    if found is None:
        pytest.skip("no Python %s on this machine (set SAR_BACKUP_FLOOR_PYTHON)" % FLOOR)
    with open(RUNTIME, "rb") as handle:
        runtime = handle.read().decode()
    path, complete = cached_dir("floor-venv", found["python"], found["version"], runtime, FLOOR_TOOLS)
    python = os.path.join(path, "bin", "python")
    if not complete:
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([found["python"], "-m", "venv", path], check=True, timeout=300)
        constraints = os.path.join(path, "lower-bounds.txt")
        with open(constraints, "w", encoding="utf-8") as handle:
            handle.writelines("%s==%s\n" % item for item in lower_bounds().items())
        proc = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--only-binary=:all:", "-r", RUNTIME, "-c", constraints, *FLOOR_TOOLS],
                              capture_output=True, text=True, timeout=900, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        mark_complete(path)
    return {"python": python, "version": found["version"]}


def test_the_floor_venv_has_exactly_the_lower_bounds(floor_venv):
    proc = subprocess.run([floor_venv["python"], "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=True)
    installed = {canonical(d["name"]): d["version"] for d in json.loads(proc.stdout)}
    for name, low in lower_bounds().items():
        assert installed.get(canonical(name)) == low, (name, installed.get(canonical(name)), low)
    assert floor_venv["version"].startswith(FLOOR + ".")


def test_unit_tests_pass_on_the_floor_python(floor_venv):
    """The engine's unit tests, on the floor Python, with the lower bounds of the runtime requirements."""
    env = dict(os.environ, PYTHONPATH=collections_path(), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([floor_venv["python"], "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           os.path.join(ROOT, "tests", "unit")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800, check=False)
    print("\n[floor] Python %s: %s" % (floor_venv["version"], proc.stdout.strip().splitlines()[-1:]))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


@pytest.fixture(scope="module")
def lower_target_libraries():
    """The lower bounds of the pure-Python target libraries (and what they need), in a folder to put first
    on sys.path of this (dev) Python: what a floor host gets for smb, dropbox and USB."""
    lows = lower_bounds()
    wanted = ["%s==%s" % (name, lows[name]) for name in ("smbprotocol", "dropbox", "pyudev")]
    path, complete = cached_dir("floor-targets", *wanted)
    if not complete:
        shutil.rmtree(path, ignore_errors=True)
        pip("install", "--quiet", "--disable-pip-version-check", "--only-binary=:all:", "--target", path, *wanted)
        mark_complete(path)
    return path


def test_target_libraries_at_their_lower_bounds_do_what_the_engine_needs(lower_target_libraries):
    """The smb and dropbox target tests against real servers (Samba, the Dropbox emulator) with
    smbprotocol, dropbox and pyudev at the lower bounds of requirements/runtime.txt."""
    env = dict(os.environ, PYTHONPATH=lower_target_libraries, PYTHONDONTWRITEBYTECODE="1")
    check = subprocess.run([sys.executable, "-c", "import dropbox, smbprotocol, pyudev, importlib.metadata as m; "
                            "print(m.version('dropbox'), m.version('smbprotocol'), m.version('pyudev'))"],
                           capture_output=True, text=True, env=env, check=True)
    lows = lower_bounds()
    assert check.stdout.split() == [lows["dropbox"], lows["smbprotocol"], lows["pyudev"]]
    tests = [os.path.join(ROOT, "tests", "integration", name) for name in ("test_target_smb.py", "test_target_dropbox.py")]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *tests],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800, check=False)
    print("\n[floor] target libraries %s: %s" % (check.stdout.strip(), proc.stdout.strip().splitlines()[-1:]))
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("case", ["too-old", "missing"])
def test_the_role_refuses_an_older_python_before_pip(tmp_path, case):
    """sar_backup_python older than the floor (a stand-in that answers like Python 3.8 would), or not
    there at all: the host fails before anything is installed, naming the variable and the floor."""
    if case == "too-old":
        python = tmp_path / "python3.8"
        python.write_text('#!/bin/sh\necho \'{"version": [3, 8, 18], "machine": "x86_64", "libc": "glibc 2.36"}\'\n')
        python.chmod(0o755)
    else:
        python = tmp_path / "no-such-python"
    install_dir = tmp_path / "opt"
    plays = [{"name": "roll out", "hosts": "localhost", "gather_facts": False,
              "roles": [{"role": "sar.backup.sar_backup",
                         "vars": {"sar_backup_python": str(python), "sar_backup_install_dir": str(install_dir),
                                  "sar_backup_config_dir": str(tmp_path / "etc"),
                                  "sar_backup_bin_dir": str(tmp_path / "bin"),
                                  "sar_backup_unit_dir": str(tmp_path / "units")}}]}]
    run = run_playbook(plays, str(tmp_path))
    assert run.rc == 2, run.stdout[-3000:] + run.stderr[-2000:]
    failed = [(name.split(" : ", 1)[-1], res) for name, res in run.results().items() if res.get("failed")]
    assert [name for name, _res in failed] == ["Check that sar_backup_python is new enough for the runtime"], failed
    msg = failed[0][1]["msg"]
    assert "sar_backup_python (%s)" % python in msg and "Python %s or later" % FLOOR in msg, msg
    assert ("is Python 3.8.18" in msg) if case == "too-old" else ("could not be run" in msg), msg
    assert not install_dir.exists() and not (tmp_path / "etc").exists()
