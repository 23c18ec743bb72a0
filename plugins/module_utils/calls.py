# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""What the modules that need the target libraries do, as plain functions - and the way
they run on any Python Ansible picks (docs/role.md, "Running modules").

`sar_backup_run`, `sar_backup_info` and `sar_backup_restore` need zstandard and
cryptography, and per target paramiko, smbprotocol, dropbox or pyudev. Ansible runs a
module with whatever interpreter it discovers on the host - usually the system Python,
which lacks them. On a host where the role installed the runtime (its virtualenv has
them all), such a module hands its validated parameters to the runtime over a pipe
(`sar-backup module-call NAME`, JSON on stdin: secrets never on a command line), which
calls the same function below and answers with the same outcome; the module returns it
as if it had done the work itself. Where no runtime is installed, the module runs here
and a missing library is reported per target, naming it and the fix.

An outcome is {"failed": bool, "result": {...}, "warnings": [...], "secrets": [...]}:
`result` becomes exit_json's or fail_json's keyword arguments, `secrets` are values the
module adds to its no_log values (a saved job's passwords), `warnings` go to module.warn."""

from __future__ import annotations

import importlib.util
import json
import os

from . import errors
from .errors import MissingLibrary, SarError, ValidationError

# Everything the engine may import, so one probe says whether this Python can do all of it.
LIBRARIES = ("zstandard", "cryptography", "paramiko", "smbprotocol", "dropbox", "pyudev")
RUNTIME_FILE = "runtime.json"
DELEGATED_ENV = "SAR_BACKUP_MODULE_CALL"
RUN_RESULT_KEYS = ("archive", "targets", "duration", "code", "estimated_size", "sources", "started", "finished",
                   "status_path", "lock_free", "public_key")


def _outcome(result: dict, failed: bool = False, warnings=None, secrets=None) -> dict:
    return {"failed": failed, "result": result, "warnings": list(warnings or []), "secrets": list(secrets or [])}


def _failure(exc: Exception, prefix: str = "", **extra) -> dict:
    result = dict(extra, msg=prefix + str(exc))
    if isinstance(exc, ValidationError):
        result["field"] = exc.field
    elif isinstance(exc, SarError):
        result["code"] = exc.code
    return _outcome(result, failed=True)


def describe_missing_default(exc: MissingLibrary) -> str:
    return "%s: %s Install it in the Python that runs the module, or install the runtime with the role " \
           "sar.backup.sar_backup (the module then uses it)." % (exc.needed_for, str(exc))


# -- the calls ---------------------------------------------------------------------
def run_call(params: dict, check_mode: bool, describe_missing=describe_missing_default) -> dict:
    from .fsutil import parse_duration
    from .job import params_to_raw, secret_values, validate_job
    from .runner import dry_run_job, run_job
    from .store import Store
    store = Store(params.get("config_dir"))
    secrets = []
    try:
        wait = parse_duration(params.get("wait") or 0, "wait")
        if params.get("job"):
            job = store.load_job(params["job"])
            secrets = secret_values(job)  # a saved job's secrets are never shown, whatever the callback prints
        else:
            raw = params_to_raw(params["definition"])
            raw["state"] = "present"
            try:
                job = validate_job(raw)
            except ValidationError as exc:
                raise ValidationError("definition." + exc.field, exc.problem)
    except SarError as exc:
        out = _failure(exc)
        out["secrets"] = secrets
        return out
    if check_mode:
        res = dry_run_job(job, store, describe_missing=describe_missing)
    else:
        res = run_job(job, store, wait=wait, keep_archive=bool(params.get("keep_archive")),
                      describe_missing=describe_missing)
    out = {k: res[k] for k in RUN_RESULT_KEYS if k in res}
    out["changed"] = res["code"] == errors.SUCCESSFUL or bool(res.get("archive") and not check_mode)
    if res["code"] != errors.SUCCESSFUL:
        out["msg"] = "backup job %s: %s (%s)" % (job["name"], res.get("error") or "failed", res["code"])
        return _outcome(out, failed=True, secrets=secrets)
    return _outcome(out, secrets=secrets)


def info_call(params: dict, check_mode: bool, describe_missing=describe_missing_default) -> dict:
    del check_mode  # read-only
    from .info import archives_info, host_key_info, jobs_info
    from .job import secret_values
    from .store import Store
    store = Store(params.get("config_dir"))
    names = params.get("name")
    out = {"changed": False}
    warnings, secrets = [], []
    try:
        out.update(host_key_info(store))
        jobs = jobs_info(store, names)
        for entry in jobs:
            try:
                secrets += secret_values(store.read_job(entry["name"]) or {})
            except SarError:
                pass  # unreadable: nothing of it is returned either
        out["jobs"] = jobs
        for entry in jobs:
            if entry.get("error"):
                warnings.append("backup job %s: %s" % (entry["name"], entry["error"]))
        if params.get("archives"):
            archives, unreachable = archives_info(store, names, describe_missing=describe_missing)
            out["archives"] = archives
            out["unreachable_targets"] = unreachable
            for entry in unreachable:
                warnings.append("backup job %s, target %d (%s %s): archives not listed: %s (%s)"
                                % (entry["job"], entry["target"], entry["type"], entry["location"] or "",
                                   entry["error"], entry["code"]))
    except SarError as exc:
        failed = _failure(exc, **out)
        failed["secrets"] = secrets
        return failed
    except OSError as exc:
        return _outcome(dict(out, msg="cannot read the sar-backup configuration: %s" % exc), failed=True,
                        secrets=secrets)
    return _outcome(out, warnings=warnings, secrets=secrets)


def restore_call(params: dict, check_mode: bool, describe_missing=describe_missing_default) -> dict:
    from .fsutil import parse_duration
    from .job import secret_values
    from .restore import Restore, parse_identities
    from .store import Store
    store = Store(params.get("config_dir"))
    secrets = []
    if params.get("drill"):
        return _drill_call(store, params, check_mode, describe_missing)
    try:
        if params.get("job"):
            # The job's target credentials are used to fetch the archive: never shown.
            secrets = secret_values(store.load_job(params["job"]))
        result = Restore(store, path=params.get("path"), job=params.get("job"), target=params.get("target") or 0,
                         archive_name=params.get("archive") or "latest", data=params.get("data"),
                         passphrase=params.get("passphrase"), identities=parse_identities(params.get("identity")),
                         verify_only=bool(params.get("verify_only")), check_mode=check_mode,
                         wait=parse_duration(params.get("wait") or 0, "wait"), trust=params.get("trust") or "signed",
                         trusted_keys=params.get("trusted_keys"), scratch_dir=params.get("scratch_dir")).execute()
    except MissingLibrary as exc:
        out = _outcome({"msg": describe_missing(exc), "code": exc.code}, failed=True)
    except SarError as exc:
        out = _failure(exc)
    except OSError as exc:
        out = _outcome({"msg": "restore failed, nothing was changed: %s" % exc}, failed=True)
    else:
        out = _outcome({"changed": result["changed"], "archive": result["archive"], "verified": result["verified"],
                        "categories": result["categories"], "restored": result["restored"],
                        "scratch_dir": result["scratch_dir"]})
    out["secrets"] = secrets
    return out


def _drill_call(store, params: dict, check_mode: bool, describe_missing) -> dict:
    """sar_backup_restore with drill: true - the job's newest archive restored into isolation and checked."""
    from .drill import run_drill
    from .fsutil import parse_duration
    from .job import secret_values
    from .restore import parse_identities
    if not params.get("job"):
        return _outcome({"msg": "drill: needs job (the saved job whose newest archive is drilled)", "field": "job"},
                        failed=True)
    for option in ("path", "data", "scratch_dir"):
        if params.get(option):
            return _outcome({"msg": "%s: does not apply to a drill" % option, "field": option}, failed=True)
    if params.get("archive") not in (None, "latest"):
        return _outcome({"msg": "archive: a drill always takes the newest archive", "field": "archive"}, failed=True)
    try:
        secrets = secret_values(store.load_job(params["job"]))
    except SarError as exc:
        return _failure(exc)
    if check_mode:
        return _outcome({"changed": False, "msg": "check mode: a drill changes nothing on the appliance, but it "
                                                  "restores into a scratch database; not run in check mode",
                         "skipped": True}, secrets=secrets)
    try:
        drill = run_drill(store, params["job"], target=params.get("target"), wait=parse_duration(params.get("wait") or 0, "wait"),
                          passphrase=params.get("passphrase"), identities=parse_identities(params.get("identity")),
                          trusted_keys=params.get("trusted_keys"), trust=params.get("trust") or "signed")
    except MissingLibrary as exc:
        return _outcome({"msg": describe_missing(exc), "code": exc.code}, failed=True, secrets=secrets)
    except SarError as exc:
        out = _failure(exc)
        out["secrets"] = secrets
        return out
    result = {"changed": False, "drill": drill, "archive": drill.get("archive"), "verified": drill["success"],
              "categories": sorted({t["category"] for t in (drill.get("tables") or []) + (drill.get("trees") or [])}),
              "code": drill["code"], "checks": drill.get("checks")}
    if not drill["success"]:
        result["msg"] = "restore drill of job %s failed (%s): %s" % (params["job"], drill["code"], drill.get("error"))
        return _outcome(result, failed=True, secrets=secrets, warnings=drill.get("warnings"))
    return _outcome(result, secrets=secrets, warnings=drill.get("warnings"))


CALLS = {"sar_backup_run": run_call, "sar_backup_info": info_call, "sar_backup_restore": restore_call}


def call(name: str, params: dict, check_mode: bool, describe_missing=describe_missing_default) -> dict:
    if name not in CALLS:
        raise ValidationError("module", "no module call %r (one of %s)" % (name, ", ".join(sorted(CALLS))))
    return CALLS[name](params, check_mode, describe_missing)


# -- running on any Python ----------------------------------------------------------------
def missing_libraries() -> list:
    return [lib for lib in LIBRARIES if importlib.util.find_spec(lib) is None]


def runtime_command(config_dir: str) -> str | None:
    """The installed runtime's `sar-backup` command, from <config_dir>/runtime.json (written by the role)."""
    try:
        with open(os.path.join(config_dir, RUNTIME_FILE), "r", encoding="utf-8") as handle:
            data = json.loads(handle.read(64 * 1024))
    except (OSError, ValueError):
        return None
    command = data.get("command") if isinstance(data, dict) else None
    if isinstance(command, str) and os.path.isabs(command) and os.access(command, os.X_OK):
        return command
    return None


def execute(module, name: str, describe_missing=describe_missing_default) -> None:
    """Run module `name`'s call here or, when this Python lacks a library and the runtime is installed,
    through the runtime; then exit_json/fail_json with the outcome. `module` is the AnsibleModule."""
    from .store import resolve_config_dir
    config_dir = resolve_config_dir(module.params.get("config_dir"))
    missing = missing_libraries()
    command = runtime_command(config_dir) if missing and not os.environ.get(DELEGATED_ENV) else None
    if command:
        outcome = _delegate(module, command, config_dir, name)
    else:
        outcome = call(name, module.params, module.check_mode, describe_missing)
    emit(module, outcome)


def _delegate(module, command: str, config_dir: str, name: str) -> dict:
    request = json.dumps({"params": module.params, "check_mode": module.check_mode})
    env = {DELEGATED_ENV: "1"}
    rc, stdout, stderr = module.run_command([command, "--config-dir", config_dir, "module-call", name], data=request,
                                            environ_update=env, binary_data=False)
    try:
        outcome = json.loads(stdout)
        if not isinstance(outcome, dict) or "result" not in outcome:
            raise ValueError("no outcome")
    except ValueError:
        return _outcome({"msg": "the sar-backup runtime (%s) did not answer (exit %d): %s"
                         % (command, rc, (stderr or stdout or "").strip()[-2000:])}, failed=True)
    outcome.setdefault("warnings", [])
    outcome["result"]["runtime"] = command
    return outcome


def emit(module, outcome: dict) -> None:
    module.no_log_values.update(v for v in outcome.get("secrets") or [] if v)
    for warning in outcome.get("warnings") or []:
        module.warn(warning)
    if outcome.get("failed"):
        module.fail_json(**outcome["result"])
    module.exit_json(**outcome["result"])
