# SPDX-License-Identifier: GPL-3.0-or-later
"""Run real ansible-playbook / ansible commands against this working tree's
collection on localhost, and read their results."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def collections_path() -> str:
    """ansible_collections/sar/backup -> this working tree (a symlink farm in tmp)."""
    # One farm per checkout: two checkouts testing at once must not re-point each other's link.
    tag = hashlib.sha1(ROOT.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    farm = os.path.join(tempfile.gettempdir(), "sar-backup-pytest-%d-%s" % (os.getuid(), tag))
    base = os.path.join(farm, "ansible_collections", "sar")
    os.makedirs(base, exist_ok=True)
    link = os.path.join(base, "backup")
    if not os.path.islink(link) or os.readlink(link) != ROOT:
        tmp = link + ".%d" % os.getpid()
        os.symlink(ROOT, tmp)
        os.replace(tmp, link)
    return farm


def ansible_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": collections_path(),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "PATH": BIN + os.pathsep + env.get("PATH", ""),
    })
    env.pop("ANSIBLE_CONFIG", None)
    if extra:
        env.update(extra)
    return env


class PlaybookRun:
    def __init__(self, proc: subprocess.CompletedProcess, json_out: bool):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.data = None
        if json_out:
            start = self.stdout.find("{")
            self.data = json.loads(self.stdout[start:]) if start >= 0 else None

    def results(self, host: str = "localhost") -> dict:
        """Task name -> that host's result (the last task of a name wins)."""
        out = {}
        for play in (self.data or {}).get("plays", []):
            for task in play.get("tasks", []):
                res = task.get("hosts", {}).get(host)
                if res is not None:
                    out[task["task"]["name"]] = res
        return out


def run_playbook(tasks_or_plays, workdir: str, extravars: dict | None = None, verbosity: int = 0,
                 diff: bool = False, check: bool = False, json_out: bool = True, env: dict | None = None,
                 inventory: str | None = None, playbook_path: str | None = None, timeout: int = 900) -> PlaybookRun:
    """Run a playbook: a list of tasks (wrapped in a localhost play), a list of
    plays, or an existing file (playbook_path)."""
    if playbook_path is None:
        plays = tasks_or_plays
        if plays and "hosts" not in plays[0] and "import_playbook" not in plays[0]:
            plays = [{"name": "test", "hosts": "localhost", "gather_facts": False, "tasks": tasks_or_plays}]
        fd, playbook_path = tempfile.mkstemp(prefix="play-", suffix=".yml", dir=workdir)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(plays, handle, sort_keys=False)
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", inventory or "localhost,", playbook_path]
    if inventory is None:
        cmd += ["-c", "local"]
    if extravars:
        fd, varfile = tempfile.mkstemp(prefix="vars-", suffix=".json", dir=workdir)
        with os.fdopen(fd, "w") as handle:
            json.dump(extravars, handle)
        cmd += ["-e", "@" + varfile]
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    if diff:
        cmd.append("--diff")
    if check:
        cmd.append("--check")
    extra = {"ANSIBLE_STDOUT_CALLBACK": "sar_test_json",
             "ANSIBLE_CALLBACK_PLUGINS": os.path.join(ROOT, "tests", "harness", "callback_plugins")} if json_out else {}
    extra.update(env or {})
    proc = subprocess.run(cmd, env=ansible_env(extra), cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return PlaybookRun(proc, json_out)


def run_adhoc(module: str, args: str, workdir: str, env: dict | None = None, timeout: int = 600):
    cmd = [os.path.join(BIN, "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-m", module, "-a", args]
    return subprocess.run(cmd, env=ansible_env(env), cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, check=False)
