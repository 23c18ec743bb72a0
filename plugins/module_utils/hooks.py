# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Job hooks: commands run on the appliance around a run (job option `hooks`, SPEC section 10).

    hooks:
      before:      [["/usr/local/bin/pbx-quiesce", "--wait", "30"]]     # an argv list: no shell
      after:       [{argv: ["/usr/bin/logger", "backup done"], timeout: 60}]
      on_failure:  [{shell: "echo \\"$SAR_BACKUP_JOB failed: $SAR_BACKUP_CODE\\" | mail -s backup ops"}]

- `before` hooks run in order under the maintenance lock, before anything is read or
  built; the first that fails (non-zero exit, cannot start, timeout) fails the run with
  code `hookFailed`, and no archive is built.
- `after` hooks run after a successful run, `on_failure` hooks after a failed one (a
  failed `before` hook included); neither changes the run's result code: a hook that
  fails there is reported in the result's `hooks` and `warnings`.
- A hook runs without a shell unless it is given as `shell:` (then `/bin/sh -c`), with
  standard input from /dev/null, in its own process group (killed whole on timeout,
  default 300 s), and a small, clean environment: PATH, LANG, HOME and
  SAR_BACKUP_JOB, SAR_BACKUP_HOOK (the stage), SAR_BACKUP_CODE (after/on_failure),
  SAR_BACKUP_ARCHIVE (the archive's path on the host, or its name when no copy stays),
  SAR_BACKUP_CONFIG_DIR - never a secret of the job or settings.
- Output (stdout and stderr together) goes to a private temporary file; the last
  4000 bytes are kept in the result and the status file."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

from .errors import ValidationError
from .fsutil import parse_duration

STAGES = ("before", "after", "on_failure")
DEFAULT_TIMEOUT = 300
OUTPUT_TAIL = 4000
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def validate(value, field: str = "hooks"):
    """Normalize the `hooks` option: None, or {stage: [{"argv": [...] | None, "shell": str | None, "timeout": s}]}."""
    if value is None or value == {} or value == "":
        return None
    if not isinstance(value, dict):
        raise ValidationError(field, "must be a dictionary with before, after and/or on_failure lists")
    out = {}
    for stage in value:
        if not isinstance(stage, str) or stage not in STAGES:
            raise ValidationError("%s.%s" % (field, stage), "unknown hook stage (before, after, on_failure)")
    for stage in STAGES:
        items = value.get(stage)
        if items is None:
            out[stage] = []
            continue
        if not isinstance(items, list):
            raise ValidationError("%s.%s" % (field, stage), "must be a list of commands (argv lists)")
        out[stage] = [_hook(item, "%s.%s[%d]" % (field, stage, i)) for i, item in enumerate(items)]
    return out if any(out.values()) else None


def _argv(value, field: str) -> list:
    if not isinstance(value, list) or not value:
        raise ValidationError(field, "must be a non-empty list of strings (the program and its arguments)")
    for i, arg in enumerate(value):
        if isinstance(arg, bool) or not isinstance(arg, (str, int, float)):
            raise ValidationError("%s[%d]" % (field, i), "must be a string, got %s" % type(arg).__name__)
        if "\0" in str(arg):
            raise ValidationError("%s[%d]" % (field, i), "must not contain a NUL character")
    if not str(value[0]).strip():
        raise ValidationError("%s[0]" % field, "the program must not be empty")
    return [str(a) for a in value]


def _hook(item, field: str) -> dict:
    if isinstance(item, str):
        raise ValidationError(field, "give an argv list such as ['/usr/bin/logger', 'done'], or {shell: '...'} to run "
                                     "a command line through /bin/sh")
    if isinstance(item, list):
        return {"argv": _argv(item, field), "shell": None, "timeout": DEFAULT_TIMEOUT}
    if not isinstance(item, dict):
        raise ValidationError(field, "must be an argv list or a dictionary with argv or shell")
    for key in item:
        if key not in ("argv", "shell", "timeout"):
            raise ValidationError("%s.%s" % (field, key), "unknown option (argv, shell, timeout)")
    argv, shell = item.get("argv"), item.get("shell")
    if (argv is None) == (shell is None):
        raise ValidationError(field, "give either argv (a list, no shell) or shell (a command line for /bin/sh)")
    if shell is not None and (not isinstance(shell, str) or not shell.strip() or "\0" in shell):
        raise ValidationError("%s.shell" % field, "must be a non-empty command line")
    timeout = DEFAULT_TIMEOUT if item.get("timeout") is None else parse_duration(item["timeout"], "%s.timeout" % field)
    if timeout <= 0 or timeout > 86400:
        raise ValidationError("%s.timeout" % field, "must be between 1 second and 1 day, got %r" % (item["timeout"],))
    return {"argv": _argv(argv, "%s.argv" % field) if argv is not None else None, "shell": shell, "timeout": timeout}


def describe(hook: dict) -> str:
    return hook["shell"] if hook["shell"] is not None else " ".join(hook["argv"])


def environment(job: str, stage: str, config_dir: str, code: str | None = None, archive: str | None = None) -> dict:
    env = {"PATH": PATH, "LANG": os.environ.get("LANG") or "C.UTF-8", "HOME": os.environ.get("HOME") or "/root",
           "SAR_BACKUP_JOB": job, "SAR_BACKUP_HOOK": stage, "SAR_BACKUP_CONFIG_DIR": config_dir}
    if code is not None:
        env["SAR_BACKUP_CODE"] = code
    if archive:
        env["SAR_BACKUP_ARCHIVE"] = archive
    return env


def run_one(hook: dict, env: dict, workdir: str | None = None) -> dict:
    """Run one hook; {"command", "rc" (None: could not start or timed out), "seconds", "output", "error"}."""
    argv = ["/bin/sh", "-c", hook["shell"]] if hook["shell"] is not None else hook["argv"]
    result = {"command": describe(hook), "rc": None, "seconds": 0.0, "output": "", "error": None}
    begin = time.monotonic()
    with tempfile.TemporaryFile(prefix="sar-backup-hook-", dir=workdir) as output:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                    env=env, cwd="/", start_new_session=True, close_fds=True)
        except OSError as exc:
            result["error"] = "cannot start %s: %s" % (argv[0], exc.strerror or exc)
            return result
        try:
            rc = proc.wait(timeout=hook["timeout"])
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            result["error"] = "timed out after %ds (killed)" % hook["timeout"]
        else:
            result["rc"] = rc
            if rc > 0:
                result["error"] = "exited with %d" % rc
            elif rc < 0:
                result["error"] = "killed by signal %d" % -rc
        result["seconds"] = round(time.monotonic() - begin, 3)
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - OUTPUT_TAIL))
        result["output"] = output.read().decode("utf-8", "replace")
    return result


def run_stage(hooks: dict | None, stage: str, env: dict, log=None, stop_on_failure: bool = False) -> list:
    """Run a stage's hooks in order; each result gains "stage" and "index"."""
    out = []
    for index, hook in enumerate((hooks or {}).get(stage) or []):
        if log:
            log("%s hook %d: %s" % (stage, index, describe(hook)))
        res = run_one(hook, env)
        res.update(stage=stage, index=index)
        out.append(res)
        if res["error"] and log:
            log("%s hook %d failed: %s" % (stage, index, res["error"]))
        if res["error"] and stop_on_failure:
            break
    return out
