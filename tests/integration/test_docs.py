# SPDX-License-Identifier: GPL-3.0-or-later
"""`ansible-doc` renders every module and the role without a warning: every option
described, examples that use the module by its FQCN, return values, and every role
variable prefixed sar_backup_. (That the documented options are exactly the accepted
ones, and that secrets are no_log, is ansible-test sanity's validate-modules.)"""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest

from harness.playbook import BIN, ROOT, ansible_env

MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py"))
                 if not p.endswith("__init__.py"))


def ansible_doc(*args) -> dict:
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "-j"] + list(args), env=ansible_env(),
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def walk_options(options: dict, path=""):
    for name, spec in (options or {}).items():
        yield path + name, spec
        yield from walk_options(spec.get("suboptions"), path + name + ".")


def test_every_module_is_there():
    assert {"sar_backup_settings", "sar_backup_job", "sar_backup_run", "sar_backup_info",
            "sar_backup_restore"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_doc_renders_with_examples_and_return(module):
    doc = ansible_doc("sar.backup." + module)["sar.backup." + module]
    assert doc["doc"]["short_description"] and doc["doc"]["description"]
    assert doc["doc"]["options"]["config_dir"]["type"] == "path"
    assert doc["examples"].strip() and doc["return"]
    # The EXAMPLES are YAML tasks using this module by its FQCN.
    assert "sar.backup.%s:" % module in doc["examples"]
    for name, spec in walk_options(doc["doc"]["options"]):
        assert spec.get("description") and spec.get("type"), name


def test_role_doc_renders_every_variable_prefixed():
    doc = ansible_doc("-t", "role", "sar.backup.sar_backup")["sar.backup.sar_backup"]
    options = doc["entry_points"]["main"]["options"]
    assert len(options) > 20
    assert all(name.startswith("sar_backup_") for name in options), [n for n in options if not n.startswith("sar_backup_")]
    assert all(spec.get("description") for spec in options.values())


def test_action_group_holds_every_module(tmp_path):
    """module_defaults with group/sar.backup.sar_backup reaches every module: a config_dir given once is used by all
    (an info call through the group must read the scratch config_dir, not /etc/sar-backup)."""
    import yaml
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        runtime = yaml.safe_load(handle)
    assert sorted(runtime["action_groups"]["sar_backup"]) == MODULES
    from harness.playbook import run_playbook
    config = tmp_path / "etc"
    play = [{"hosts": "localhost", "gather_facts": False,
             "module_defaults": {"group/sar.backup.sar_backup": {"config_dir": str(config)}},
             "tasks": [
                 {"name": "Settings through the group", "sar.backup.sar_backup_settings": {"staging_dir": str(tmp_path / "st")}},
                 {"name": "Job through the group",
                  "sar.backup.sar_backup_job": {"name": "grouped", "targets": [{"type": "local", "path": str(tmp_path)}]}},
                 {"name": "Info through the group", "sar.backup.sar_backup_info": {}, "register": "info"},
                 {"name": "Restore through the group",
                  "sar.backup.sar_backup_restore": {"path": str(tmp_path / "none.sar"), "verify_only": True},
                  "register": "restore", "ignore_errors": True},
             ]}]
    result = run_playbook(play, str(tmp_path))
    assert result.rc == 0, result.stdout + result.stderr
    assert (config / "settings.json").exists()
    res = result.results()
    assert [j["name"] for j in res["Info through the group"]["jobs"]] == ["grouped"]
    assert res["Restore through the group"]["failed"] and "none.sar" in res["Restore through the group"]["msg"]
