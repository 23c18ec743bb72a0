# SPDX-License-Identifier: GPL-3.0-or-later
"""Job hooks with real commands (plugins/module_utils/hooks.py): before hooks gate the run, after and
on_failure hooks see the outcome, no shell unless asked, a clean environment without secrets, timeouts kill
the whole process group."""

from __future__ import annotations

import json
import os

from ansible_collections.sar.backup.plugins.module_utils import cli
from ansible_collections.sar.backup.plugins.module_utils.errors import ValidationError
from ansible_collections.sar.backup.plugins.module_utils.job import validate_job
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings

import pytest

SECRET = "hook-env-secret-7Qz"


@pytest.fixture
def host(tmp_path, appliance, monkeypatch):
    monkeypatch.setenv("SAR_TEST_PARENT_SECRET", SECRET)  # the runner's own environment: hooks must not inherit it
    store = Store(str(tmp_path / "etc"))
    store.write_settings(validate_settings({
        "profile": appliance.profile, "archive_dir": str(tmp_path / "archives"),
        "staging_dir": str(tmp_path / "staging"), "status_dir": str(tmp_path / "status"),
        "lock_path": str(tmp_path / "lock" / "sar-backup.lock")}))
    return store


def dump_env(path) -> list:
    """A hook that writes its environment to `path` (an argv list: the literal '$HOME' is not expanded by us)."""
    return ["/bin/sh", "-c", 'env > "$0"; echo "$1"', str(path), "$HOME"]


def save(store, **over):
    raw = {"name": "nightly", "data": ["announcements"], "targets": [{"type": "local"}],
           "encryption": {"passphrase": "hook-pass-%s" % SECRET}}
    raw.update(over)
    job = validate_job(raw)
    store.write_job(job)
    return job


def env_of(path) -> dict:
    return dict(line.split("=", 1) for line in open(path).read().splitlines() if "=" in line)


def status(tmp_path) -> dict:
    return json.loads((tmp_path / "status" / "nightly.json").read_text())


def test_before_hook_failure_builds_nothing_and_on_failure_sees_it(host, tmp_path):
    marker = tmp_path / "on_failure.env"
    save(host, hooks={"before": [["/bin/true"], ["/bin/sh", "-c", "echo quiescing failed >&2; exit 3"],
                                 ["/bin/touch", str(tmp_path / "never")]],
                      "on_failure": [{"argv": dump_env(marker)}], "after": [["/bin/touch", str(tmp_path / "after")]]})
    assert cli.main(["--config-dir", host.config_dir, "run", "nightly"]) == 1
    st = status(tmp_path)
    assert st["code"] == "hookFailed" and st["archive"] is None
    assert [t["code"] for t in st["targets"]] == ["hookFailed"]
    assert "before hook 1" in st["error"] and "exited with 3" in st["error"]
    assert [(h["stage"], h["index"], h["rc"]) for h in st["hooks"]] == [("before", 0, 0), ("before", 1, 3), ("on_failure", 0, 0)]
    assert "quiescing failed" in st["hooks"][1]["output"]
    assert not (tmp_path / "never").exists() and not (tmp_path / "after").exists()
    assert not os.path.exists(tmp_path / "archives" / "starface-backup" / "nightly") or \
        not os.listdir(tmp_path / "archives" / "starface-backup" / "nightly")
    env = env_of(marker)
    assert env["SAR_BACKUP_JOB"] == "nightly" and env["SAR_BACKUP_HOOK"] == "on_failure"
    assert env["SAR_BACKUP_CODE"] == "hookFailed"
    assert "SAR_TEST_PARENT_SECRET" not in env
    assert SECRET not in open(marker).read()


def test_after_hook_gets_the_archive_and_failing_after_hook_only_warns(host, tmp_path):
    marker = tmp_path / "after.env"
    save(host, hooks={"after": [{"argv": dump_env(marker), "timeout": "10s"},
                                {"shell": "echo \"$SAR_BACKUP_JOB done\"; exit 5"}]})
    assert cli.main(["--config-dir", host.config_dir, "run", "nightly"]) == 0
    st = status(tmp_path)
    assert st["code"] == "successful"
    env = env_of(marker)
    assert env["SAR_BACKUP_CODE"] == "successful" and os.path.isfile(env["SAR_BACKUP_ARCHIVE"])
    assert env["SAR_BACKUP_ARCHIVE"].endswith(st["archive"]["name"])
    assert "SAR_TEST_PARENT_SECRET" not in env and SECRET not in open(marker).read()
    assert st["hooks"][1]["rc"] == 5 and st["hooks"][1]["output"] == "nightly done\n"
    assert any("after hook 1" in w and "exited with 5" in w for w in st["warnings"])


def test_timeout_kills_the_process_group(host, tmp_path):
    save(host, hooks={"before": [{"shell": "sleep 301 & sleep 302", "timeout": 1}]})
    assert cli.main(["--config-dir", host.config_dir, "run", "nightly"]) == 1
    st = status(tmp_path)
    assert st["code"] == "hookFailed" and "timed out after 1s" in st["error"]
    assert st["hooks"][0]["seconds"] < 60
    assert leftover_sleepers() == []  # the background child died with its group


def leftover_sleepers() -> list:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv[:2] in ([b"sleep", b"301"], [b"sleep", b"302"]):
            found.append(pid)
    return found


@pytest.mark.parametrize("hooks, field", [
    ({"before": "echo hi"}, "hooks.before"),
    ({"before": ["echo hi"]}, "hooks.before[0]"),
    ({"before": [[]]}, "hooks.before[0]"),
    ({"before": [{"argv": ["x"], "shell": "y"}]}, "hooks.before[0]"),
    ({"before": [{"argv": ["x"], "timeout": "forever"}]}, "hooks.before[0].timeout"),
    ({"during": [["x"]]}, "hooks.during"),
    ({"after": [[1.5, {"a": 1}]]}, "hooks.after[0][1]"),
])
def test_bad_hooks_are_refused_naming_the_field(hooks, field):
    with pytest.raises(ValidationError) as info:
        validate_job({"name": "j", "targets": [{"type": "local"}], "hooks": hooks})
    assert info.value.field == field
