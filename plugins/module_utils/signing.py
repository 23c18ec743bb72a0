# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Who made an archive: ed25519 signatures (SPEC section 10; docs/restore.md).

Each host signs its archives with its own key, generated into
`<config_dir>/signing.key` (PKCS#8 PEM, 0600) on first use; the public half
is written next to it (`signing.pub`) and reported in status files and
`sar_backup_info`, so a fleet can collect them. The signature covers the
exact bytes of the archive's checksums member, which lists the SHA-256 of
every other member (manifest included): a valid signature vouches for the
whole archive. It is stored as the archive's last member (`SIGNATURE`).

A public key is written `ed25519:<base64 of the 32 raw bytes>`; its
fingerprint `SHA256:<unpadded base64 of the key's SHA-256>` (as OpenSSH
prints them). `verify` and `restore` accept an archive when it is signed by
the host's own key or by one of `trusted_keys`; `trust: any` accepts
unsigned or foreign archives explicitly.

Encryption (age) is confidentiality; this is authenticity. The two are
independent: an encrypted archive is signed over its (inner) checksums."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re

from .errors import ArchiveError, MissingLibrary, SarError, TrustError, ValidationError
from .fsutil import ensure_private_dir

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
except ImportError:  # pragma: no cover
    Ed25519PrivateKey = None

KEY_FILE = "signing.key"
PUB_FILE = "signing.pub"
SIGNATURE = "signature.ed25519"
ALGORITHM = "ed25519"
TRUST_CHOICES = ("signed", "any")
MAX_SIGNATURE_MEMBER = 4096
_KEY_PREFIX = "ed25519:"
_KEY_RE = re.compile(r"^ed25519:([A-Za-z0-9+/]{43}=)$")


def _lib():
    if Ed25519PrivateKey is None:
        raise MissingLibrary("cryptography", "signing and checking archive signatures")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def format_public_key(raw: bytes) -> str:
    return _KEY_PREFIX + _b64(raw)


def fingerprint(raw: bytes) -> str:
    return "SHA256:" + _b64(hashlib.sha256(raw).digest()).rstrip("=")


def parse_public_key(text, field: str = "trusted_keys") -> bytes:
    """The 32 raw bytes of an `ed25519:<base64>` key (a trailing comment is allowed); ValidationError naming `field`."""
    if not isinstance(text, str):
        raise ValidationError(field, "must be a string 'ed25519:<base64>', got %s" % type(text).__name__)
    word = text.strip().split(None, 1)[0] if text.strip() else ""
    match = _KEY_RE.match(word)
    if not match:
        raise ValidationError(field, "must be a public key 'ed25519:<base64 of 32 bytes>' "
                                     "(see signing.pub in the host's config_dir or sar_backup_info), got %r" % text[:80])
    raw = base64.b64decode(match.group(1))
    if len(raw) != 32:
        raise ValidationError(field, "an ed25519 public key has 32 bytes, this one %d" % len(raw))
    return raw


def parse_trusted_keys(value, field: str = "trusted_keys") -> list:
    """A list (or one string, or None) of public keys -> list of raw keys."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not isinstance(value, list):
        raise ValidationError(field, "must be a list of public keys 'ed25519:<base64>'")
    return [parse_public_key(item, "%s[%d]" % (field, i)) for i, item in enumerate(value)]


def validate_trust(value, field: str = "trust") -> str:
    if value is None:
        return "signed"
    if value not in TRUST_CHOICES:
        raise ValidationError(field, "must be one of %s, got %r" % (", ".join(TRUST_CHOICES), value))
    return value


class Signer:
    """The host's signing key."""

    def __init__(self, private_key):
        self._key = private_key
        self.public_raw = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                serialization.PublicFormat.Raw)

    @property
    def public_key(self) -> str:
        return format_public_key(self.public_raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def signature_member(self, checksums: bytes) -> bytes:
        """The content of the SIGNATURE member for the checksums member's bytes."""
        body = {"algorithm": ALGORITHM, "public_key": self.public_key, "signature": _b64(self.sign(checksums))}
        return (json.dumps(body, sort_keys=True) + "\n").encode("ascii")


def key_paths(config_dir: str) -> tuple:
    return os.path.join(config_dir, KEY_FILE), os.path.join(config_dir, PUB_FILE)


def _load(path: str) -> Signer:
    try:
        with open(path, "rb") as handle:
            data = handle.read(64 * 1024)
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SarError("cannot read the signing key %s: %s" % (path, getattr(exc, "strerror", None) or exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SarError("the signing key %s is not an ed25519 key" % path)
    return Signer(key)


def load_or_create(config_dir: str) -> Signer:
    """The host's key, generated (0600, atomically) on first use."""
    _lib()
    key_path, pub_path = key_paths(config_dir)
    if not os.path.exists(key_path):
        ensure_private_dir(config_dir)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = "%s.%d.tmp" % (key_path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), 0o600)
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(tmp, key_path)  # never replaces a key another process just made
            except FileExistsError:
                pass
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    signer = _load(key_path)
    _write_public(pub_path, signer)
    return signer


def _write_public(pub_path: str, signer: Signer) -> None:
    line = signer.public_key + "\n"
    try:
        with open(pub_path, "r", encoding="ascii") as handle:
            if handle.read(256) == line:
                return
    except (OSError, ValueError):
        pass
    tmp = "%s.%d.tmp" % (pub_path, os.getpid())
    with open(tmp, "w", encoding="ascii") as handle:
        os.fchmod(handle.fileno(), 0o644)
        handle.write(line)
    os.replace(tmp, pub_path)


def host_public_key(config_dir: str) -> str | None:
    """The host's public key text, or None when it has no key yet (never creates one)."""
    key_path, _pub = key_paths(config_dir)
    if not os.path.exists(key_path) or Ed25519PrivateKey is None:
        return None
    try:
        return _load(key_path).public_key
    except SarError:
        return None


def parse_signature_member(data: bytes) -> dict:
    """{public_raw, signature} of a SIGNATURE member; ArchiveError naming the field when malformed."""
    where = "member %s" % SIGNATURE
    if len(data) > MAX_SIGNATURE_MEMBER:
        raise ArchiveError("%s is larger than %d bytes" % (where, MAX_SIGNATURE_MEMBER))
    try:
        body = json.loads(data.decode("ascii"))
    except (ValueError, UnicodeError):
        raise ArchiveError("%s is not a JSON object" % where) from None
    if not isinstance(body, dict):
        raise ArchiveError("%s is not a JSON object" % where)
    if body.get("algorithm") != ALGORITHM:
        raise ArchiveError("%s: field 'algorithm' must be %r, got %r" % (where, ALGORITHM, body.get("algorithm")))
    try:
        public_raw = parse_public_key(body.get("public_key"), "public_key")
    except ValidationError as exc:
        raise ArchiveError("%s: field %s" % (where, exc)) from None
    sig = body.get("signature")
    try:
        raw_sig = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except (binascii.Error, ValueError):
        raw_sig = b""
    if len(raw_sig) != 64:
        raise ArchiveError("%s: field 'signature' must be the base64 of a 64-byte ed25519 signature" % where)
    return {"public_raw": public_raw, "signature": raw_sig}


def check_signature(parsed: dict, checksums: bytes) -> dict:
    """Check a parsed SIGNATURE member over the checksums member's bytes; {public_key, fingerprint}.

    A signature that does not match is damage or tampering: ArchiveError, whatever the trust."""
    _lib()
    try:
        Ed25519PublicKey.from_public_bytes(parsed["public_raw"]).verify(parsed["signature"], checksums)
    except InvalidSignature:
        raise ArchiveError("the signature (member %s) does not match the archive's checksums: the archive was "
                           "changed after it was signed" % SIGNATURE) from None
    except ValueError as exc:
        raise ArchiveError("member %s: unusable public key (%s)" % (SIGNATURE, exc)) from None
    return {"public_key": format_public_key(parsed["public_raw"]), "fingerprint": fingerprint(parsed["public_raw"])}


def check_trust(signature: dict | None, config_dir: str | None, trusted_keys=None, trust: str = "signed") -> dict:
    """Decide whether an archive whose signature checked out (`signature` from check_signature, or None
    when unsigned) is acceptable: signed by the host's own key or one of `trusted_keys`, or `trust: any`.

    Returns {"signed", "trusted", "signer", "fingerprint", "trusted_by"}; ArchiveError when refused."""
    trust = validate_trust(trust)
    keys = parse_trusted_keys(trusted_keys)
    own = host_public_key(config_dir) if config_dir else None
    known = {}
    if own:
        known[own] = "this host's key"
    for raw in keys:
        known.setdefault(format_public_key(raw), "trusted_keys")
    info = {"signed": signature is not None, "trusted": False, "signer": None, "fingerprint": None, "trusted_by": None}
    if signature is not None:
        info["signer"] = signature["public_key"]
        info["fingerprint"] = signature["fingerprint"]
        if signature["public_key"] in known:
            info["trusted"] = True
            info["trusted_by"] = known[signature["public_key"]]
            return info
    if trust == "any":
        info["trusted_by"] = "trust: any"
        return info
    if signature is None:
        raise TrustError("the archive is not signed, so nothing proves which host made it; restoring another "
                         "appliance's or an old unsigned archive needs trust: any (sar-backup --trust any)")
    raise TrustError("the archive is signed by a key this host does not trust (%s, %s); pass that host's public "
                     "key in trusted_keys (sar-backup --trusted-key), or trust: any"
                     % (signature["fingerprint"], signature["public_key"]))
