# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""What the collection keeps on a host, all found from the config directory:
`settings.json` (host settings, SPEC section 6) and `jobs/<name>.json`.
Files are 0600, directories 0700, every write atomic."""

from __future__ import annotations

import copy
import os
import re

from .errors import SarError, ValidationError
from .fsutil import atomic_write_json, ensure_private_dir, parse_size, read_json
from .job import CATEGORIES, validate_job
from .targets.types import EMAIL_RE

DEFAULT_CONFIG_DIR = "/etc/sar-backup"
CONFIG_DIR_ENV = "SAR_BACKUP_CONFIG_DIR"

# The STARFACE-like default appliance profile (docs/profile.md explains it).
DEFAULT_PROFILE = {
    "database": {
        "host": "/var/run/postgresql",
        "port": 5432,
        "user": "postgres",
        "password": None,
        "name": "asterisk",
        "pg_bin_dir": None,  # None: pg_dump/psql/pg_restore from PATH, else newest /usr/lib/postgresql/*/bin
        "restore_role": None,  # None: restore as `user`; else SET ROLE to it first (a role that owns the tables, no superuser)
    },
    "categories": {
        "core": {
            "tables": [],
            "exclude_tables": ["public.cdr*"],
            "paths": ["/etc/asterisk", "/var/lib/starface/config"],
        },
        "cdr_voicemail": {
            "tables": ["public.cdr*"],
            "exclude_tables": [],
            "paths": ["/var/spool/asterisk/voicemail"],
        },
        "announcements": {
            "tables": [],
            "exclude_tables": [],
            "paths": ["/var/lib/starface/announcements"],
        },
    },
}

DEFAULT_SMTP = {
    "host": None,
    "port": None,  # None: 25 for none/starttls, 465 for tls
    "security": "starttls",
    "username": None,
    "password": None,
    "from": None,
    "cafile": None,
    "timeout": 30,
}

DEFAULT_SETTINGS = {
    "profile": DEFAULT_PROFILE,
    "smtp": DEFAULT_SMTP,
    "archive_dir": "/var/lib/sar-backup/archives",
    "staging_dir": "/var/lib/sar-backup/staging",
    "status_dir": "/var/lib/sar-backup/status",
    "lock_path": "/run/lock/sar-backup.lock",
    "metrics_path": None,  # None: <status_dir>/sar_backup.prom
    "min_free_space": 64 * 1024 * 1024,  # staging reserve on top of the estimate
}
PATH_SETTINGS = ("archive_dir", "staging_dir", "status_dir", "lock_path", "metrics_path")
SMTP_SECURITY = ("starttls", "tls", "none")


def resolve_config_dir(config_dir: str | None = None) -> str:
    """Option value, else $SAR_BACKUP_CONFIG_DIR, else /etc/sar-backup."""
    return config_dir or os.environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR


def _str_list(value, field: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValidationError(field, "must be a list of non-empty strings")
    return list(value)


def _integer(value, field: str) -> int:
    """An integer option: an int or its digits (not a boolean, not a fraction, not infinity)."""
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValidationError(field, "must be an integer, got %r" % (value,))
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(field, "must be an integer, got %r" % (value,)) from None


def _string(value, field: str) -> str:
    """A string option: a string or a number written as one (not a list, dictionary or boolean)."""
    if isinstance(value, (dict, list, bool)):
        raise ValidationError(field, "must be a string, got %s" % type(value).__name__)
    return str(value)


def validate_profile(raw) -> dict:
    prof = copy.deepcopy(DEFAULT_PROFILE)
    if raw is None:
        return prof
    if not isinstance(raw, dict):
        raise ValidationError("profile", "must be a dictionary with database and categories")
    for key in raw:
        if key not in ("database", "categories"):
            raise ValidationError("profile.%s" % key, "unknown option (database, categories)")
    db = raw.get("database") or {}
    if not isinstance(db, dict):
        raise ValidationError("profile.database", "must be a dictionary")
    for key, value in db.items():
        if key not in DEFAULT_PROFILE["database"]:
            raise ValidationError("profile.database.%s" % key, "unknown option")
        if value is None:
            continue
        if key == "port":
            value = _integer(value, "profile.database.port")
            if not 0 < value < 65536:
                raise ValidationError("profile.database.port", "must be between 1 and 65535")
        else:
            value = _string(value, "profile.database.%s" % key)
            if not value:
                raise ValidationError("profile.database.%s" % key, "must not be empty")
            if key == "restore_role" and "\0" in value:
                raise ValidationError("profile.database.restore_role", "must not contain a NUL character")
        prof["database"][key] = value
    cats = raw.get("categories")
    if cats is not None:
        if not isinstance(cats, dict):
            raise ValidationError("profile.categories", "must map categories to tables/exclude_tables/paths")
        for cat, spec in cats.items():
            if cat not in CATEGORIES:
                raise ValidationError("profile.categories.%s" % cat,
                                      "unknown category (%s)" % ", ".join(CATEGORIES))
            if spec is None:
                continue  # not given: the default mapping of that category stays
            if not isinstance(spec, dict):
                raise ValidationError("profile.categories.%s" % cat, "must be a dictionary")
            out = {}
            for key in spec:
                if key not in ("tables", "exclude_tables", "paths"):
                    raise ValidationError("profile.categories.%s.%s" % (cat, key),
                                          "unknown option (tables, exclude_tables, paths)")
            for key in ("tables", "exclude_tables", "paths"):
                out[key] = _str_list(spec.get(key), "profile.categories.%s.%s" % (cat, key))
            if out["tables"] and out["exclude_tables"]:
                raise ValidationError("profile.categories.%s.exclude_tables" % cat,
                                      "give tables or exclude_tables, not both")
            for i, path in enumerate(out["paths"]):
                if not path.startswith("/") or "\0" in path:
                    raise ValidationError("profile.categories.%s.paths[%d]" % (cat, i),
                                          "must be an absolute path, got %r" % path)
            prof["categories"][cat] = out
    return prof


def validate_smtp(raw) -> dict:
    smtp = copy.deepcopy(DEFAULT_SMTP)
    if raw is None:
        return smtp
    if not isinstance(raw, dict):
        raise ValidationError("smtp", "must be a dictionary")
    for key, value in raw.items():
        if key not in DEFAULT_SMTP:
            raise ValidationError("smtp.%s" % key, "unknown option (%s)" % ", ".join(sorted(DEFAULT_SMTP)))
        if value is None:
            continue
        if key in ("port", "timeout"):
            value = _integer(value, "smtp.%s" % key)
            if key == "port" and not 0 < value < 65536:
                raise ValidationError("smtp.port", "must be between 1 and 65535")
        elif key == "security":
            if value not in SMTP_SECURITY:
                raise ValidationError("smtp.security", "must be one of %s, got %r" % (", ".join(SMTP_SECURITY), value))
        else:
            value = _string(value, "smtp.%s" % key)
        smtp[key] = value
    if smtp["from"] is not None and not EMAIL_RE.match(smtp["from"]):
        raise ValidationError("smtp.from", "%r is not an e-mail address" % smtp["from"])
    if smtp["username"] is not None and smtp["password"] is None:
        raise ValidationError("smtp.password", "is required with smtp.username")
    return smtp


def validate_settings(raw: dict) -> dict:
    """Normalize settings: what is not given takes its documented default."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ValidationError("settings", "must be a dictionary of settings, got %s" % type(raw).__name__)
    for key in raw:
        if not isinstance(key, str) or not key.strip():
            raise ValidationError("settings", "setting names must be non-empty strings, got %r" % (key,))
        if key not in DEFAULT_SETTINGS:
            raise ValidationError(key, "unknown setting")
    out = copy.deepcopy(DEFAULT_SETTINGS)
    out["profile"] = validate_profile(raw.get("profile"))
    out["smtp"] = validate_smtp(raw.get("smtp"))
    for key in PATH_SETTINGS:
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
            raise ValidationError(key, "must be an absolute path, got %r" % (value,))
        out[key] = os.path.normpath(value)
    if raw.get("min_free_space") is not None:
        try:
            out["min_free_space"] = parse_size(raw["min_free_space"], "min_free_space")
        except OverflowError:
            raise ValidationError("min_free_space", "is too large") from None
    return out


def effective_metrics_path(settings: dict) -> str:
    return settings.get("metrics_path") or os.path.join(settings["status_dir"], "sar_backup.prom")


class Store:
    """Settings and jobs under one config directory."""

    def __init__(self, config_dir: str | None = None):
        self.config_dir = resolve_config_dir(config_dir)

    @property
    def settings_path(self) -> str:
        return os.path.join(self.config_dir, "settings.json")

    @property
    def jobs_dir(self) -> str:
        return os.path.join(self.config_dir, "jobs")

    @property
    def known_hosts_path(self) -> str:
        return os.path.join(self.config_dir, "known_hosts")

    def job_path(self, name: str) -> str:
        return os.path.join(self.jobs_dir, "%s.json" % name)

    # settings
    def read_settings_raw(self):
        """The stored settings or None when none were saved yet."""
        if not os.path.exists(self.settings_path):
            return None
        try:
            return read_json(self.settings_path)
        except (OSError, ValueError) as exc:
            raise SarError("cannot read %s: %s" % (self.settings_path, exc))

    def settings(self) -> dict:
        """Effective settings: the stored file, or every default."""
        return validate_settings(self.read_settings_raw() or {})

    def write_settings(self, settings: dict) -> None:
        ensure_private_dir(self.config_dir)
        atomic_write_json(self.settings_path, settings)

    # jobs
    def job_names(self) -> list:
        if not os.path.isdir(self.jobs_dir):
            return []
        return sorted(f[:-5] for f in os.listdir(self.jobs_dir)
                      if f.endswith(".json") and not f.startswith("."))

    def read_job(self, name: str):
        """The stored (normalized) job or None."""
        path = self.job_path(name)
        if not os.path.exists(path):
            return None
        try:
            return read_json(path)
        except (OSError, ValueError) as exc:
            raise SarError("cannot read job file %s: %s" % (path, exc))

    def load_job(self, name: str) -> dict:
        """A saved job, re-validated (a hand-edited file gets the same checks)."""
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name or ""):
            raise ValidationError("job", "%r is not a valid job name" % (name,))
        stored = self.read_job(name)
        if stored is None:
            known = ", ".join(self.job_names()) or "none"
            raise ValidationError("job", "no job named %r in %s (saved jobs: %s)" % (name, self.jobs_dir, known))
        return validate_job(stored)

    def write_job(self, job: dict) -> None:
        ensure_private_dir(self.config_dir)
        ensure_private_dir(self.jobs_dir)
        atomic_write_json(self.job_path(job["name"]), job)

    def delete_job(self, name: str) -> bool:
        try:
            os.unlink(self.job_path(name))
            return True
        except FileNotFoundError:
            return False
