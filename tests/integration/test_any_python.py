# SPDX-License-Identifier: GPL-3.0-or-later
"""Modules work from any Python Ansible picks (docs/role.md, "Running modules"): the README's
ad-hoc line `ansible pbx -m sar.backup.sar_backup_run -a job=nightly`, run verbatim with the
system Python (Debian's /usr/bin/python3: no zstandard, paramiko, smbprotocol, dropbox, pyudev),
hands the work to the installed runtime and returns the same result; without a runtime the error
names the library and the fix. The runtime here is laid out as the role lays it out (the engine
as package `sar_backup` next to a venv Python, a `sar-backup` command, `<config_dir>/runtime.json`);
the role itself does the same on real appliances (molecule, the fleet test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.playbook import BIN, ROOT, ansible_env, run_playbook

from ansible_collections.sar.backup.plugins.module_utils.job import validate_job
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings

SYSTEM_PYTHON = "/usr/bin/python3"
LACKS = subprocess.run([SYSTEM_PYTHON, "-c", "import zstandard"], capture_output=True, check=False).returncode != 0 \
    if os.path.exists(SYSTEM_PYTHON) else False

pytestmark = pytest.mark.skipif(not LACKS, reason="needs a system Python without the engine's libraries")


@pytest.fixture
def host(tmp_path, appliance):
    store = Store(str(tmp_path / "etc"))
    store.write_settings(validate_settings({
        "profile": appliance.profile, "archive_dir": str(tmp_path / "archives"),
        "staging_dir": str(tmp_path / "staging"), "status_dir": str(tmp_path / "status"),
        "lock_path": str(tmp_path / "lock" / "sar-backup.lock")}))
    store.write_job(validate_job({"name": "nightly", "data": ["announcements"], "targets": [{"type": "local"}]}))
    return store


def install_runtime(tmp_path, store) -> str:
    """What the role installs: <install>/lib/sar_backup (the engine), a venv Python, the command, runtime.json."""
    lib = tmp_path / "opt" / "lib"
    lib.mkdir(parents=True)
    os.symlink(os.path.join(ROOT, "plugins", "module_utils"), str(lib / "sar_backup"))
    command = tmp_path / "bin" / "sar-backup"
    command.parent.mkdir()
    command.write_text("#!%s -I\nimport sys\nsys.path.insert(0, %r)\nfrom sar_backup.cli import main\nsys.exit(main())\n"
                       % (sys.executable, str(lib)))
    command.chmod(0o755)
    with open(os.path.join(store.config_dir, "runtime.json"), "w") as handle:
        json.dump({"command": str(command), "python": sys.executable}, handle)
    return str(command)


def readme_adhoc(tmp_path, store, args="job=nightly"):
    """The README's line, verbatim but for the inventory: group pbx = this host, with the system Python."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[pbx]\nlocalhost ansible_connection=local ansible_python_interpreter=%s\n" % SYSTEM_PYTHON)
    env = ansible_env({"SAR_BACKUP_CONFIG_DIR": store.config_dir})
    env.pop("ANSIBLE_PYTHON_INTERPRETER")
    return subprocess.run([os.path.join(BIN, "ansible"), "-i", str(inventory), "pbx", "-m", "sar.backup.sar_backup_run",
                           "-a", args], env=env, cwd=str(tmp_path), capture_output=True, text=True, check=False,
                          timeout=600)


def test_readme_adhoc_line_runs_through_the_runtime(tmp_path, host):
    # No runtime yet: the error names the library and the fix.
    proc = readme_adhoc(tmp_path, host)
    assert proc.returncode != 0
    assert "zstandard" in proc.stdout and "sar.backup.sar_backup" in proc.stdout, proc.stdout
    assert not os.path.exists(os.path.join(str(tmp_path), "archives", "starface-backup", "nightly")) or \
        not [n for n in os.listdir(os.path.join(str(tmp_path), "archives", "starface-backup", "nightly"))
             if n.endswith(".sar")]

    command = install_runtime(tmp_path, host)
    proc = readme_adhoc(tmp_path, host)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CHANGED" in proc.stdout and '"code": "successful"' in proc.stdout
    assert '"runtime": "%s"' % command in proc.stdout
    folder = tmp_path / "archives" / "starface-backup" / "nightly"
    assert [n for n in os.listdir(str(folder)) if n.endswith(".sar")]
    status = json.loads((tmp_path / "status" / "nightly.json").read_text())
    assert status["code"] == "successful"


def test_info_and_restore_give_the_same_result_either_way(tmp_path, host):
    command = install_runtime(tmp_path, host)
    tasks = [
        {"name": "Run", "sar.backup.sar_backup_run": {"config_dir": host.config_dir, "job": "nightly"}, "register": "run"},
        {"name": "Info", "sar.backup.sar_backup_info": {"config_dir": host.config_dir, "archives": True}},
        {"name": "Verify", "sar.backup.sar_backup_restore": {"config_dir": host.config_dir, "job": "nightly",
                                                             "verify_only": True}},
        {"name": "Check mode restore", "sar.backup.sar_backup_restore": {"config_dir": host.config_dir,
                                                                         "job": "nightly"}, "check_mode": True},
    ]
    through_runtime = run_playbook([{"hosts": "localhost", "gather_facts": False,
                                     "vars": {"ansible_python_interpreter": SYSTEM_PYTHON}, "tasks": tasks}],
                                   str(tmp_path))
    assert through_runtime.rc == 0, through_runtime.stdout + through_runtime.stderr
    here = run_playbook(tasks[1:], str(tmp_path))  # the venv Python: the work is done in the module itself
    assert here.rc == 0, here.stdout + here.stderr
    a, b = through_runtime.results(), here.results()
    assert a["Info"]["runtime"] == command and "runtime" not in b["Info"]
    assert a["Info"]["jobs"] == b["Info"]["jobs"] and a["Info"]["archives"] == b["Info"]["archives"]
    assert a["Verify"]["archive"]["sha256"] == b["Verify"]["archive"]["sha256"]
    assert a["Check mode restore"]["restored"] == b["Check mode restore"]["restored"]
