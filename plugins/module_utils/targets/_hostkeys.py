# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Which SSH host keys an `sftp` target trusts (SPEC 9), for both of its
clients (paramiko, and the system's OpenSSH `ssh`).

- a pinned `host_key`: an OpenSSH public key line (`type base64 [comment]`)
  or a `SHA256:...` fingerprint;
- else the keys remembered for the server in `<config_dir>/known_hosts`
  (OpenSSH's format: hashed names, wildcards, `[host]:port` all read);
- else, with `host_key_policy: accept_new`, the key the server shows on first
  contact, remembered there; otherwise the key is refused.

An unknown key is refused with `hostKeyUnknown`, a key that differs from the
pinned or remembered one with `hostKeyMismatch`; the message names the key
offered (type and fingerprint) and what was expected.

The decision needs the key a server offers and, for a fingerprint pin, maybe
the server's other keys: the caller hands in the offered key and a `probe`
that asks the server for a key of other algorithms (a key exchange without
credentials). For OpenSSH, `ssh_known_keys()` says which keys a private
known_hosts file written for the run may hold without asking the server first,
and `write_known_hosts()` writes that file.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import re

from .. import errors
from ..errors import TargetError

# Host key algorithms that yield a key of a given type (an RSA key is offered
# under three signature algorithms).
KEY_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}

# A key a server offered: type, base64 blob, and whatever connection object
# the client got it on (closed by the caller when the key is not taken).
ServerKey = collections.namedtuple("ServerKey", "key_type blob_b64 handle")


def fingerprint(blob: bytes) -> str:
    """OpenSSH's 'SHA256:<base64 without padding>' of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def fingerprint_of(blob_b64: str) -> str:
    try:
        return fingerprint(base64.b64decode(blob_b64))
    except (ValueError, TypeError):
        return "(unreadable key)"


def known_hosts_name(server: str, port: int) -> str:
    """The host field OpenSSH writes: `host`, or `[host]:port` for other ports."""
    return server if port == 22 else "[%s]:%d" % (server, port)


def _host_matches(patterns: str, name: str) -> bool:
    """Does a known_hosts host field (comma list, hashed `|1|salt|hash`,
    wildcards, `!negation`) name `name`?"""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("|1|"):
            try:
                salt, digest = (base64.b64decode(p) for p in pattern[3:].split("|", 1))
            except (ValueError, TypeError):
                continue
            hit = hmac.compare_digest(hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest(), digest)
        elif "*" in pattern or "?" in pattern:
            # OpenSSH patterns know only * and ? ('[host]:port' is literal).
            regex = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
            hit = re.fullmatch(regex, name.lower()) is not None
        else:
            hit = pattern.lower() == name.lower()
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def read_known_hosts(path: str, name: str) -> dict:
    """key type -> set of base64 blobs remembered for host `name` (ignores
    comments, markers like @cert-authority/@revoked and malformed lines)."""
    found = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise TargetError("cannot read known hosts file %s: %s" % (path, exc.strerror or exc), errors.FAILED)
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@")):
            continue
        if _host_matches(fields[0], name):
            found.setdefault(fields[1], set()).add(fields[2])
    return found


def remember_host_key(path: str, name: str, key_type: str, blob_b64: str) -> None:
    """Append one line (O_APPEND: parallel runs cannot interleave a line)."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, ("%s %s %s\n" % (name, key_type, blob_b64)).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_known_hosts(path: str, alias: str, keys) -> None:
    """A known_hosts file of its own (0600, created new: never an existing
    file or a link) naming `alias` for each (type, blob) of `keys`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        for key_type, blob_b64 in keys:
            handle.write("%s %s %s\n" % (alias, key_type, blob_b64))


class HostKeyTrust:
    """The host key policy of one target (see the module docstring)."""

    def __init__(self, options: dict, server: str, port: int, config_dir: str, log=None):
        self.options = options
        self.server = server
        self.port = port
        self.config_dir = config_dir
        self.log = log or (lambda _msg: None)

    @property
    def endpoint(self) -> str:
        return "%s:%d" % (self.server, self.port)

    @property
    def name(self) -> str:
        return known_hosts_name(self.server, self.port)

    @property
    def known_hosts_path(self) -> str:
        return os.path.join(self.config_dir, "known_hosts")

    def pin(self):
        """("line", (type, blob)), ("fingerprint", "SHA256:..."), or (None, None)."""
        pinned = self.options.get("host_key")
        if not pinned:
            return None, None
        pinned = pinned.strip()
        if pinned.startswith("SHA256:"):
            return "fingerprint", pinned.rstrip("=")
        fields = pinned.split()
        return "line", (fields[0], fields[1])

    def remembered(self) -> dict:
        return read_known_hosts(self.known_hosts_path, self.name)

    def preferred_algorithms(self) -> tuple:
        """Host key algorithms to ask for first: those of the pinned or
        remembered key (else a server with several keys would be refused for
        showing one we do not know yet)."""
        kind, value = self.pin()
        if kind == "line":
            types = [value[0]]
        elif kind is None:
            types = sorted(self.remembered())
        else:
            types = []
        prefer = []
        for key_type in types:
            prefer.extend(KEY_ALGORITHMS.get(key_type, (key_type,)))
        return tuple(prefer)

    def ssh_known_keys(self):
        """The (type, blob) keys an OpenSSH client may be told to trust
        without asking the server first, or None when the decision needs the
        offered key (a fingerprint pin, nothing remembered yet)."""
        kind, value = self.pin()
        if kind == "line":
            return [value]
        if kind == "fingerprint":
            return None
        known = self.remembered()
        if not known:
            return None
        return [(key_type, blob) for key_type in sorted(known) for blob in sorted(known[key_type])]

    def decide(self, offered: ServerKey, probe=None, discard=None) -> ServerKey:
        """Accept the offered key (returned, or the server's other key that a
        fingerprint pin names: `probe(algorithms)` -> ServerKey or None asks
        for it, `discard(handle)` closes one not taken) or raise TargetError
        with hostKeyUnknown / hostKeyMismatch. accept_new remembers a new key."""
        discard = discard or (lambda _handle: None)
        key_type, blob_b64 = offered.key_type, offered.blob_b64
        offered_fp = fingerprint_of(blob_b64)
        kind, value = self.pin()
        if kind == "line":
            if (key_type, blob_b64) == value:
                return offered
            raise self._mismatch(key_type, offered_fp, "the pinned host_key (%s %s)" % (value[0], fingerprint_of(value[1])))
        if kind == "fingerprint":
            if hmac.compare_digest(offered_fp, value):
                return offered
            # The pinned key may be one of the server's other keys.
            offers = ["%s %s" % (key_type, offered_fp)]
            for other, algorithms in KEY_ALGORITHMS.items():
                if other == key_type or probe is None:
                    continue
                alternative = probe(algorithms)
                if alternative is None:
                    continue
                alt_fp = fingerprint_of(alternative.blob_b64)
                if hmac.compare_digest(alt_fp, value):
                    discard(offered.handle)
                    return alternative
                offers.append("%s %s" % (alternative.key_type, alt_fp))
                discard(alternative.handle)
            raise TargetError(
                "SFTP server %s offers host keys %s, none of which is the pinned host_key %s: "
                "if the server's key changed on purpose, pin the new one" % (self.endpoint, ", ".join(offers), value),
                errors.HOST_KEY_MISMATCH)
        known = self.remembered()
        if not known:
            if self.options.get("host_key_policy") == "accept_new":
                try:
                    remember_host_key(self.known_hosts_path, self.name, key_type, blob_b64)
                except OSError as exc:
                    raise TargetError("cannot remember the host key of %s in %s: %s"
                                      % (self.endpoint, self.known_hosts_path, exc.strerror or exc), errors.FAILED) from None
                self.log("remembered host key %s %s of %s in %s" % (key_type, offered_fp, self.name, self.known_hosts_path))
                return offered
            raise TargetError(
                "SFTP server %s offers %s key %s which is not known: pin it with host_key or set host_key_policy: accept_new"
                % (self.endpoint, key_type, offered_fp), errors.HOST_KEY_UNKNOWN)
        if blob_b64 in known.get(key_type, ()):
            return offered
        remembered = ", ".join("%s %s" % (t, fingerprint_of(b)) for t in sorted(known) for b in sorted(known[t]))
        raise self._mismatch(key_type, offered_fp, "the key remembered for %s in %s (%s); if the server's key changed on "
                             "purpose, remove that line" % (self.name, self.known_hosts_path, remembered))

    def _mismatch(self, key_type: str, offered: str, expected: str) -> TargetError:
        return TargetError("SFTP server %s offers %s key %s, which differs from %s — refusing to connect"
                           % (self.endpoint, key_type, offered, expected), errors.HOST_KEY_MISMATCH)
