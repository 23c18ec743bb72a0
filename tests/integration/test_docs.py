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


def test_galaxy_tarball_holds_the_collection_and_no_development_files(tmp_path):
    """`ansible-galaxy collection build`: what users install, without benches, CI, tools or dev requirements."""
    import tarfile
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), ROOT],
                          env=ansible_env(), capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = glob.glob(str(tmp_path / "sar-backup-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    for wanted in ["MANIFEST.json", "FILES.json", "README.md", "meta/runtime.yml", "meta/execution-environment.yml",
                   "meta/ee-requirements.txt", "meta/ee-bindep.txt", "requirements/runtime.txt",
                   "roles/sar_backup/tasks/main.yml", "playbooks/site.yml", "docs/restore.md",
                   "extras/prometheus/sar-backup.rules.yml", "plugins/action/sar_backup_run.py"]:
        assert wanted in names, wanted
    for module in MODULES:
        assert "plugins/modules/%s.py" % module in names
    unwanted = [n for n in names if n.split("/")[0] in ("bench", ".ci", "tools", ".venv", ".build", ".git")
                or n in ("Makefile", "requirements/dev.txt", "requirements/test.txt") or n.startswith("docs/dev")
                or "__pycache__" in n or n.endswith(".tar.gz")]
    assert unwanted == []


def test_execution_environment_dependencies_introspect(tmp_path):
    """AWX/ansible-builder sees the collection's Python and system dependencies (meta/execution-environment.yml)."""
    builder = os.path.join(BIN, "ansible-builder")  # requirements/dev.txt
    tree = tmp_path / "ansible_collections" / "sar"
    tree.mkdir(parents=True)
    os.symlink(ROOT, str(tree / "backup"))
    proc = subprocess.run([builder, "introspect", "--sanitize", str(tmp_path)], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import yaml
    data = yaml.safe_load(proc.stdout.split("\n", 1)[1])
    python = [line.split("#")[0].strip() for line in data["python"]]
    for lib in ("paramiko", "smbprotocol", "dropbox", "pyudev", "zstandard", "cryptography"):
        assert any(p.startswith(lib + ">=") for p in python), (lib, python)
    assert all("==" not in p for p in python)  # ranges, not pins: one EE holds several collections
    assert any(line.startswith("postgresql-client [platform:dpkg]") for line in data["system"])


def test_changelog_fragments_follow_antsibull_conventions():
    """antsibull-changelog lint passes; a release summary; new modules are not repeated as changes (antsibull lists
    them from version_added); no bugfix entries while nothing is released (they would fix unreleased features)."""
    proc = subprocess.run([os.path.join(BIN, "antsibull-changelog"), "lint"], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    import yaml
    fragments = {}
    for path in glob.glob(os.path.join(ROOT, "changelogs", "fragments", "*.y*ml")):
        with open(path, encoding="utf-8") as handle:
            fragments[os.path.basename(path)] = yaml.safe_load(handle) or {}
    with open(os.path.join(ROOT, "changelogs", "changelog.yaml"), encoding="utf-8") as handle:
        released = (yaml.safe_load(handle) or {}).get("releases") or {}
    assert any("release_summary" in f for f in fragments.values())
    for name, fragment in fragments.items():
        for section, entries in fragment.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                assert "new module" not in entry.lower(), (name, entry)
        if not released:
            assert "bugfixes" not in fragment, name
