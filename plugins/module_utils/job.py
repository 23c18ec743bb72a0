# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The job model (seed steps 1-3): option schema, validation, defaults, masking.

One schema serves the modules (as an Ansible argument spec, plain data), the
`sar-backup` command and inline `definition`s. Validation returns a normalized
job: every option present, defaults applied, types coerced, so comparing two
normalized jobs is the idempotence test.
"""

from __future__ import annotations

import copy
import datetime
import re

from . import hooks, ping
from .errors import ValidationError
from .fsutil import parse_duration, parse_size
from .targets.types import COMMON_OPTIONS, REQUIRED, TYPES, check_email

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
START_FORMAT = "%Y-%m-%d %H:%M"
MASK = "********"

INTERVALS = ("manual", "hourly", "daily", "weekly", "monthly")
REPORT_ON = ("failure", "always", "never")
CATEGORIES = ("core", "cdr_voicemail", "announcements")
COMPRESSIONS = ("zstd", "gzip")

DEFAULTS = {
    "state": "present",
    "report_to": [],
    "report_on": "failure",
    "interval": "manual",
    "start": None,
    "data": ["core"],
    "compression": "zstd",
    "encryption": None,
    "defer": 3600,
    "retries": 3,
    "hooks": None,
    "drill": None,
    "ping": None,
}

# Secret option names, wherever they appear (targets, encryption, settings).
SECRET_KEYS = frozenset((
    "password", "private_key", "private_key_passphrase", "refresh_token",
    "app_secret", "access_token", "passphrase",
    "url",  # ping.url: a healthchecks-style ping URL is the check's credential
))

# Target types, their options and rules: targets/types.py (one place per type).
COMMON_TARGET_OPTIONS = COMMON_OPTIONS
TARGET_OPTIONS = {name: ttype.options for name, ttype in TYPES.items()}
ALL_TARGET_OPTIONS = sorted({"type"} | set(COMMON_TARGET_OPTIONS)
                            | {o for opts in TARGET_OPTIONS.values() for o in opts})


def _is_blank(value) -> bool:
    return value is None or value == "" or value == []


def _coerce(kind, value, field: str):
    if isinstance(kind, tuple):
        if value not in kind:
            raise ValidationError(field, "must be one of %s, got %r" % (", ".join(kind), value))
        return value
    if kind == "str":
        if isinstance(value, (dict, list, bool)):
            raise ValidationError(field, "must be a string, got %s" % type(value).__name__)
        return str(value)
    if kind == "int":
        if isinstance(value, bool):
            raise ValidationError(field, "must be an integer, got a boolean")
        try:
            number = int(str(value), 10)
        except ValueError:
            raise ValidationError(field, "must be an integer, got %r" % (value,))
        if number < 0:
            raise ValidationError(field, "must not be negative, got %d" % number)
        return number
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("yes", "true", "on", "1"):
            return True
        if text in ("no", "false", "off", "0"):
            return False
        raise ValidationError(field, "must be a boolean, got %r" % (value,))
    if kind == "size":
        return _bounded(parse_size, value, field)
    if kind == "list":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValidationError(field, "must be a list, got %s" % type(value).__name__)
        return [str(v) for v in value]
    raise AssertionError(kind)


def _check_keys(raw: dict, field: str) -> None:
    """Option names are strings (YAML and JSON allow others: 5:, true:, null:)."""
    for key in raw:
        if not isinstance(key, str):
            raise ValidationError(field, "option names must be strings, got %r" % (key,))


def _bounded(parse, value, field: str) -> int:
    """parse_size/parse_duration, with a number too large for an integer ('9' * 400) refused, not a traceback."""
    try:
        return parse(value, field)
    except OverflowError:
        raise ValidationError(field, "is too large, got %s" % ("%r" % (value,))[:40]) from None


def validate_target(raw, index: int) -> dict:
    """Normalize one target; `targets[i].option` names the bad field."""
    prefix = "targets[%d]" % index
    if not isinstance(raw, dict):
        raise ValidationError(prefix, "must be a dictionary with at least a 'type'")
    _check_keys(raw, prefix)
    ttype = raw.get("type")
    if _is_blank(ttype):
        raise ValidationError(prefix + ".type", "is required (one of %s)" % ", ".join(TARGET_OPTIONS))
    if not isinstance(ttype, str) or ttype not in TARGET_OPTIONS:
        raise ValidationError(prefix + ".type", "must be one of %s, got %r" % (", ".join(TARGET_OPTIONS), ttype))
    allowed = dict(COMMON_TARGET_OPTIONS)
    allowed.update(TARGET_OPTIONS[ttype])
    given = {k: v for k, v in raw.items() if k != "type" and v is not None}
    for key in sorted(given):
        if key not in allowed:
            if key in ALL_TARGET_OPTIONS:
                raise ValidationError("%s.%s" % (prefix, key), "is not an option of %s targets" % ttype)
            raise ValidationError("%s.%s" % (prefix, key), "unknown option")
    out = {"type": ttype}
    for key, (kind, default) in allowed.items():
        field = "%s.%s" % (prefix, key)
        if key in given and not _is_blank(given[key]):
            out[key] = _coerce(kind, given[key], field)
        elif default is REQUIRED:
            raise ValidationError(field, "is required for %s targets" % ttype)
        else:
            out[key] = default
    TYPES[ttype].rules(out, prefix)
    return out


def validate_name(name) -> str:
    if _is_blank(name):
        raise ValidationError("name", "is required")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError("name", "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
                                      "or digit, got %r" % (name,))
    return name


def parse_start(value, field: str = "start") -> datetime.datetime:
    text = str(value).strip()
    try:
        return datetime.datetime.strptime(text, START_FORMAT)
    except ValueError:
        pass
    match = re.match(r"^(\d{4})-(\d{1,2})-(\d{1,2}) (\d{1,2}):(\d{1,2})$", text)
    if match:
        year, month, day, hour, minute = (int(g) for g in match.groups())
        try:
            datetime.date(year, month, day)
        except ValueError:
            raise ValidationError(field, "the date %04d-%02d-%02d does not exist (got %r)" % (year, month, day, value))
        raise ValidationError(field, "the time %02d:%02d does not exist: hours 00-23, minutes 00-59 (got %r)"
                              % (hour, minute, value))
    raise ValidationError(field, "must be 'YYYY-MM-DD HH:MM' (local time), got %r" % (value,))


def validate_job(raw: dict, require_targets: bool = True) -> dict:
    """Normalize a job definition. Raises ValidationError naming the field."""
    if not isinstance(raw, dict):
        raise ValidationError("definition", "must be a dictionary of job options")
    _check_keys(raw, "definition")
    known = set(DEFAULTS) | {"name", "targets"}
    for key in sorted(raw):
        if key not in known:
            raise ValidationError(key if key.strip() else "definition", "unknown option%s" % ("" if key.strip() else " %r" % key))
    job = {"name": validate_name(raw.get("name"))}
    for key, default in DEFAULTS.items():
        value = raw.get(key)
        job[key] = copy.deepcopy(default) if value is None else value

    if job["state"] not in ("present", "absent"):
        raise ValidationError("state", "must be present or absent, got %r" % (job["state"],))
    job["report_to"] = _coerce("list", job["report_to"], "report_to")
    for i, addr in enumerate(job["report_to"]):
        check_email(addr, "report_to[%d]" % i)
    job["report_on"] = _coerce(REPORT_ON, job["report_on"], "report_on")
    job["interval"] = _coerce(INTERVALS, job["interval"], "interval")
    if job["interval"] == "manual":
        if not _is_blank(job["start"]):
            job["start"] = parse_start(job["start"]).strftime(START_FORMAT)
        else:
            job["start"] = None
    else:
        if _is_blank(job["start"]):
            raise ValidationError("start", "is required when interval is %s ('YYYY-MM-DD HH:MM')" % job["interval"])
        job["start"] = parse_start(job["start"]).strftime(START_FORMAT)

    data = _coerce("list", job["data"], "data")
    if not data:
        raise ValidationError("data", "needs at least one category (%s)" % ", ".join(CATEGORIES))
    for i, cat in enumerate(data):
        if cat not in CATEGORIES:
            raise ValidationError("data[%d]" % i, "must be one of %s, got %r" % (", ".join(CATEGORIES), cat))
    job["data"] = [c for c in CATEGORIES if c in data]  # canonical order, no duplicates

    job["compression"] = _coerce(COMPRESSIONS, job["compression"], "compression")
    job["encryption"] = _validate_encryption(job["encryption"])
    job["defer"] = _bounded(parse_duration, job["defer"], "defer")
    job["retries"] = _coerce("int", job["retries"], "retries")
    job["hooks"] = hooks.validate(job["hooks"])
    job["ping"] = ping.validate(job["ping"])

    targets = raw.get("targets")
    if targets is None:
        targets = []
    if not isinstance(targets, list):
        raise ValidationError("targets", "must be a list of targets")
    if require_targets and job["state"] == "present" and not targets:
        raise ValidationError("targets", "needs at least one target: where the archive goes")
    job["targets"] = [validate_target(t, i) for i, t in enumerate(targets)]
    job["drill"] = _validate_drill(job["drill"], job)
    return job


DRILL_TARGETS = ("rotate",)


def _validate_drill(value, job: dict):
    """`drill`: None, or {interval, start, target}: restore drills of the job's newest archive (drill.py)."""
    if _is_blank(value):
        return None
    if not isinstance(value, dict):
        raise ValidationError("drill", "must be a dictionary with interval, start and target")
    for key in value:
        if key not in ("interval", "start", "target"):
            raise ValidationError("drill.%s" % key, "unknown option (interval, start, target)")
    interval = _coerce(INTERVALS, "manual" if value.get("interval") is None else value.get("interval"), "drill.interval")
    start = value.get("start")
    if interval == "manual":
        start = None if _is_blank(start) else parse_start(start, "drill.start").strftime(START_FORMAT)
    else:
        if _is_blank(start):
            raise ValidationError("drill.start", "is required when drill.interval is %s ('YYYY-MM-DD HH:MM')" % interval)
        start = parse_start(start, "drill.start").strftime(START_FORMAT)
    target = value.get("target")
    if target is None or target == "rotate":
        target = "rotate"
    else:
        if isinstance(target, bool) or not isinstance(target, (int, str)) or not str(target).isdigit():
            raise ValidationError("drill.target", "must be rotate or the index of one of the job's targets, got %r"
                                  % (target,))
        target = int(target)
        if job.get("targets") and target >= len(job["targets"]):
            raise ValidationError("drill.target", "the job has %d target(s), there is no target %d"
                                  % (len(job["targets"]), target))
        if job.get("targets") and job["targets"][target]["type"] == "email":
            raise ValidationError("drill.target", "target %d is an e-mail target: archives sent by mail cannot be "
                                  "read back" % target)
    if job.get("targets") and all(t["type"] == "email" for t in job["targets"]):
        raise ValidationError("drill", "every target of the job is an e-mail target: nothing to read back")
    drill = {"interval": interval, "start": start, "target": target}
    if interval != "manual" and job.get("interval") not in (None, "manual"):
        from . import schedule  # local: schedule imports this module
        same = schedule.clashes({"name": job["name"] + " (drill)", "interval": interval, "start": start},
                                [{"name": job["name"], "interval": job["interval"], "start": job["start"]}])
        if same:
            raise ValidationError("drill.start", "%s would start at the same minute as the job's own run (start %s, "
                                  "%s): choose another time" % (start, job["start"], job["interval"]))
    return drill


def _validate_encryption(value):
    if _is_blank(value):
        return None
    if not isinstance(value, dict):
        raise ValidationError("encryption", "must be a dictionary with passphrase or recipients")
    for key in value:
        if key not in ("passphrase", "recipients"):
            raise ValidationError("encryption.%s" % key, "unknown option (passphrase or recipients)")
    passphrase = value.get("passphrase")
    recipients = value.get("recipients")
    if not _is_blank(passphrase) and not _is_blank(recipients):
        raise ValidationError("encryption.passphrase", "give either passphrase or recipients, not both")
    if not _is_blank(passphrase):
        if len(str(passphrase)) < 8:
            raise ValidationError("encryption.passphrase", "must be at least 8 characters")
        return {"passphrase": str(passphrase), "recipients": None}
    if _is_blank(recipients):
        raise ValidationError("encryption", "needs a passphrase or recipients")
    recipients = _coerce("list", recipients, "encryption.recipients")
    for i, rcpt in enumerate(recipients):
        if not re.match(r"^age1[02-9ac-hj-np-z]{58}$", rcpt):
            raise ValidationError("encryption.recipients[%d]" % i, "must be an age public key (age1...), got %r" % rcpt)
    return {"passphrase": None, "recipients": recipients}


def mask(obj):
    """A deep copy with every secret value replaced by MASK."""
    if isinstance(obj, dict):
        return {k: (MASK if k in SECRET_KEYS and v is not None else mask(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask(v) for v in obj]
    return obj


def secret_values(obj) -> list:
    """Every secret string inside obj (to register with Ansible's no_log)."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in SECRET_KEYS and isinstance(value, str) and value:
                found.append(value)
            else:
                found.extend(secret_values(value))
    elif isinstance(obj, list):
        for value in obj:
            found.extend(secret_values(value))
    return found


def diff_view(old, new):
    """Masked before/after for diff mode: secrets read 'changed'/'unchanged' only."""
    def walk(a, b):
        if isinstance(b, dict):
            a = a if isinstance(a, dict) else {}
            out_a, out_b = {}, {}
            for key in sorted(set(a) | set(b)):
                if key in SECRET_KEYS:
                    if key in a and a.get(key) is not None:
                        out_a[key] = "<secret>"
                    if key in b and b.get(key) is not None:
                        out_b[key] = "<secret unchanged>" if a.get(key) == b.get(key) else "<secret changed>"
                    continue
                sub_a, sub_b = walk(a.get(key), b.get(key))
                if key in a:
                    out_a[key] = sub_a
                if key in b:
                    out_b[key] = sub_b
            return out_a, out_b
        if isinstance(b, list):
            a = a if isinstance(a, list) else []
            pairs = [walk(a[i] if i < len(a) else None, v) for i, v in enumerate(b)]
            rest = [mask(v) for v in a[len(b):]]
            return [p[0] for p in pairs if p[0] is not None] + rest, [p[1] for p in pairs]
        return mask(a), mask(b)
    before, after = walk(old or {}, new or {})
    return before, after


def argument_spec() -> dict:
    """The job options as an Ansible argument spec (plain data, no Ansible import).
    Defaults are applied by validate_job, so the spec carries none that differ by type."""
    target_options = {"type": {"type": "str", "required": True, "choices": list(TARGET_OPTIONS)}}
    kinds = {"str": "str", "int": "int", "bool": "bool", "size": "raw", "list": "list"}
    for opts in [COMMON_TARGET_OPTIONS] + list(TARGET_OPTIONS.values()):
        for key, (kind, _default) in opts.items():
            spec = {"type": "str", "choices": list(kind)} if isinstance(kind, tuple) else {"type": kinds[kind]}
            if kind == "list":
                spec["elements"] = "str"
            if key in SECRET_KEYS:
                spec["no_log"] = True
            elif key in ("host_key", "host_key_policy", "app_key", "max_size") or key.startswith("keep"):
                spec["no_log"] = False
            target_options[key] = spec
    return {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
        "report_to": {"type": "list", "elements": "str"},
        "report_on": {"type": "str", "default": "failure", "choices": list(REPORT_ON)},
        "interval": {"type": "str", "default": "manual", "choices": list(INTERVALS)},
        "start": {"type": "str"},
        "data": {"type": "list", "elements": "str", "default": ["core"], "choices": list(CATEGORIES)},
        "targets": {"type": "list", "elements": "dict", "options": target_options},
        "compression": {"type": "str", "default": "zstd", "choices": list(COMPRESSIONS)},
        "encryption": {"type": "dict", "options": {
            "passphrase": {"type": "str", "no_log": True},
            "recipients": {"type": "list", "elements": "str"},
        }},
        "defer": {"type": "raw", "default": "1h"},
        "retries": {"type": "int", "default": 3},
        "hooks": {"type": "dict", "options": {stage: {"type": "list", "elements": "raw"} for stage in hooks.STAGES}},
        "ping": {"type": "dict", "options": {
            "url": {"type": "str", "no_log": True},
            "states": {"type": "list", "elements": "str", "choices": list(ping.STATES)},
            "timeout": {"type": "raw"},
        }},
        "drill": {"type": "dict", "options": {
            "interval": {"type": "str", "choices": list(INTERVALS)},
            "start": {"type": "str"},
            "target": {"type": "raw"},
        }},
    }


def params_to_raw(params: dict) -> dict:
    """Module params -> a raw job dict (drop None in targets so defaults apply per type)."""
    raw = {k: v for k, v in params.items() if k in DEFAULTS or k in ("name", "targets")}
    if raw.get("targets") is not None:
        raw["targets"] = [{k: v for k, v in t.items() if v is not None} for t in raw["targets"]]
    if isinstance(raw.get("encryption"), dict):
        raw["encryption"] = {k: v for k, v in raw["encryption"].items() if v is not None}
    for key in ("hooks", "drill", "ping"):
        if isinstance(raw.get(key), dict):
            raw[key] = {k: v for k, v in raw[key].items() if v is not None}
    return raw
