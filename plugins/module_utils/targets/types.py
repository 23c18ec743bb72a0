# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Every target type in one place: its options (kind and default), the rules between them and its
checkmk tag. job.py validates targets from this table, report.py tags them with it, the argument
specs (job.argument_spec, the role's meta/argument_specs.yml, tested against it) follow it, and
targets/__init__.py maps each name to its class. Adding a type: an entry here, its module, and the
import line in target_class.

Plain data and checks only: no third-party import, no import of the target modules."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ValidationError

EMAIL_RE = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$|^[^@\s,;<>]+@localhost$")
VERIFY_MODES = ("size", "full")
SMB_SECURITY = ("negotiate", "ntlm", "kerberos")
HOST_KEY_POLICIES = ("strict", "accept_new")

# option -> (kind, default). kind: str|int|bool|size|list or a tuple of choices.
# `None` default = optional without default; REQUIRED = must be given.
REQUIRED = object()

# Options every type has (retention and verification, base.Target).
COMMON_OPTIONS = {
    "keep": ("int", 7),
    # Calendar retention (retention.py): the newest archive of each of the last N days/weeks/months/years.
    "keep_daily": ("int", 0),
    "keep_weekly": ("int", 0),
    "keep_monthly": ("int", 0),
    "keep_yearly": ("int", 0),
    "verify": (VERIFY_MODES, "size"),
}


def check_email(address: str, field_name: str) -> None:
    if not EMAIL_RE.match(address):
        raise ValidationError(field_name, "%r is not an e-mail address" % address)


def _no_rules(_t: dict, _prefix: str) -> None:
    return None


def _server_rules(t: dict, prefix: str) -> None:
    server = t["server"]
    if "://" in server or "/" in server or re.search(r"\s", server):
        raise ValidationError(prefix + ".server",
                              "must be a host name or IP address without protocol or path, got %r" % server)
    if not 0 < t["port"] < 65536:
        raise ValidationError(prefix + ".port", "must be between 1 and 65535, got %d" % t["port"])


def _local_rules(t: dict, prefix: str) -> None:
    if t["path"] is not None and not t["path"].startswith("/"):
        raise ValidationError(prefix + ".path", "must be an absolute path, got %r" % t["path"])


def _smb_rules(t: dict, prefix: str) -> None:
    _server_rules(t, prefix)
    share = t["share"].replace("\\", "/").strip("/")
    if not share or any(part in ("", ".", "..") for part in share.split("/")):
        raise ValidationError(prefix + ".share", "must be 'share' or 'share/sub/dirs', got %r" % t["share"])
    t["share"] = share
    if t["security"] != "kerberos" and t["password"] is None:
        raise ValidationError(prefix + ".password", "is required unless security is kerberos")


def _sftp_rules(t: dict, prefix: str) -> None:
    _server_rules(t, prefix)
    if t["password"] is not None and t["private_key"] is not None:
        raise ValidationError(prefix + ".password", "give either password or private_key, not both")
    if t["password"] is None and t["private_key"] is None:
        raise ValidationError(prefix + ".password", "one of password or private_key is required")
    if t["private_key_passphrase"] is not None and t["private_key"] is None:
        raise ValidationError(prefix + ".private_key_passphrase", "only applies with private_key")
    if t["private_key"] is not None and "PRIVATE KEY" not in t["private_key"]:
        raise ValidationError(prefix + ".private_key", "must be a PEM/OpenSSH private key (its text, not a path)")
    if t["host_key"] is not None:
        key = t["host_key"].strip()
        if not (re.match(r"^SHA256:[A-Za-z0-9+/]{43}=?$", key)
                or re.match(r"^(ssh-|ecdsa-|sk-)[\w@.-]+ [A-Za-z0-9+/]+=*( .*)?$", key)):
            raise ValidationError(prefix + ".host_key",
                                  "must be an OpenSSH public key line ('type base64 [comment]') "
                                  "or a 'SHA256:...' fingerprint")
        t["host_key"] = key
        if t["host_key_policy"] == "accept_new":
            raise ValidationError(prefix + ".host_key_policy", "accept_new cannot be combined with a pinned host_key")
    if not (t["path"] == "." or t["path"].startswith("/")):
        raise ValidationError(prefix + ".path", "must be an absolute path or '.', got %r" % t["path"])


def _dropbox_rules(t: dict, prefix: str) -> None:
    if t["refresh_token"] is not None and t["access_token"] is not None:
        raise ValidationError(prefix + ".refresh_token", "give either refresh_token or access_token, not both")
    if t["refresh_token"] is None and t["access_token"] is None:
        raise ValidationError(prefix + ".refresh_token", "one of refresh_token or access_token is required")
    if t["refresh_token"] is not None and t["app_key"] is None:
        raise ValidationError(prefix + ".app_key", "is required with refresh_token")
    if not t["path"].startswith("/"):
        raise ValidationError(prefix + ".path", "must start with '/', got %r" % t["path"])


def _usb_rules(t: dict, prefix: str) -> None:
    if t["label"] is not None and t["uuid"] is not None:
        raise ValidationError(prefix + ".uuid", "give either label or uuid, not both")


def _email_rules(t: dict, prefix: str) -> None:
    if not t["to"]:
        raise ValidationError(prefix + ".to", "needs at least one address")
    for i, addr in enumerate(t["to"]):
        check_email(addr, "%s.to[%d]" % (prefix, i))


@dataclass(frozen=True)
class TargetType:
    name: str
    tag: str                                      # checkmk section tag, e.g. "[HDD]"
    options: dict = field(default_factory=dict)   # besides COMMON_OPTIONS
    rules: object = _no_rules                     # callable(normalized target, "targets[i]")


TYPES = {t.name: t for t in (
    TargetType("local", "[HDD]", {
        "path": ("str", None),  # None: the host's archive_dir setting
    }, _local_rules),
    TargetType("smb", "[SMB]", {
        "server": ("str", REQUIRED),
        "port": ("int", 445),
        "share": ("str", REQUIRED),
        "username": ("str", REQUIRED),
        "password": ("str", None),
        "security": (SMB_SECURITY, "negotiate"),
        "encrypt": ("bool", True),
    }, _smb_rules),
    TargetType("sftp", "[SFTP]", {
        "server": ("str", REQUIRED),
        "port": ("int", 22),
        "username": ("str", REQUIRED),
        "password": ("str", None),
        "private_key": ("str", None),
        "private_key_passphrase": ("str", None),
        "path": ("str", "."),
        "host_key": ("str", None),
        "host_key_policy": (HOST_KEY_POLICIES, "strict"),
    }, _sftp_rules),
    TargetType("dropbox", "[DROPBOX]", {
        "app_key": ("str", None),
        "app_secret": ("str", None),
        "refresh_token": ("str", None),
        "access_token": ("str", None),
        "path": ("str", "/"),
    }, _dropbox_rules),
    TargetType("usb", "[USB]", {
        "label": ("str", None),
        "uuid": ("str", None),
        "mount_options": ("str", ""),
    }, _usb_rules),
    TargetType("email", "[MAIL]", {
        "to": ("list", REQUIRED),
        "max_size": ("size", 20 * 1000 * 1000),
    }, _email_rules),
)}


def tag(type_name) -> str:
    """The checkmk tag of a type; an unknown one (an old status file) as [TYPE]."""
    known = TYPES.get(type_name)
    return known.tag if known else "[%s]" % str(type_name or "").upper()


__all__ = ["TYPES", "TargetType", "COMMON_OPTIONS", "REQUIRED", "EMAIL_RE", "VERIFY_MODES", "SMB_SECURITY",
           "HOST_KEY_POLICIES", "check_email", "tag"]
