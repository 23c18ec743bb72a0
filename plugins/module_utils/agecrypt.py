# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Streaming age v1 encryption (https://age-encryption.org/v1), X25519 and scrypt recipients.

Files written here open with the `age`/`rage` tools and vice versa. Memory stays
bounded: one 64 KiB payload chunk is buffered at a time, whatever the data size."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from .errors import ArchiveError, DecryptKeyError, MissingLibrary

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
except ImportError:  # pragma: no cover
    InvalidTag = None
    ChaCha20Poly1305 = None

INTRO = b"age-encryption.org/v1"
CHUNK = 64 * 1024
TAG = 16
# scrypt work factor (log2 N) of new passphrase files; tests lower it.
SCRYPT_LOG_N = 18
# Refuse to spend more than 2**22 scrypt iterations (4 GiB of memory) on a file someone hands us.
# What we write (age's default, 2^18: ~256 MiB and ~0.5 s, by design of scrypt) is also the most a
# reader accepts: a crafted header asking for more memory is refused before any work (an attacker's
# 2^22 would cost 4 GiB). This KDF is the one part of reading an archive above the 100 MB bound.
MAX_SCRYPT_LOG_N = 18
# A header larger than this is not one we would ever have written: refuse instead of buffering it.
MAX_HEADER = 1024 * 1024

_X25519_LABEL = b"age-encryption.org/v1/X25519"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = b"\0" * 12
_WRONG_KEY = "wrong passphrase or not encrypted to this identity"


def _need_crypto() -> None:
    if ChaCha20Poly1305 is None:
        raise MissingLibrary("cryptography", "archive encryption")


# ---------------------------------------------------------------- bech32 (BIP 173)

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GEN[i] if ((top >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convertbits(data, frombits: int, tobits: int, pad: bool) -> list:
    acc = bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise ValueError("invalid padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Bech32 (not bech32m, and without the 90 character limit, as age does) of `data`."""
    values = _convertbits(data, 8, 5, True)
    checksum = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    values += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values)


def bech32_decode(text: str) -> tuple:
    """(hrp, data) of a bech32 string; ValueError if it is not valid bech32."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator")
    hrp, rest = text[:pos], text[pos + 1:]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp) or any(c not in _CHARSET for c in rest):
        raise ValueError("invalid character")
    values = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_convertbits(values[:-6], 5, 8, False))


# ---------------------------------------------------------------- keys

def _raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _parse_identity(identity: str) -> bytes:
    try:
        hrp, data = bech32_decode(identity.strip())
    except ValueError:
        hrp, data = None, b""
    if hrp != "age-secret-key-" or len(data) != 32:
        # Never echo the string: it is a secret key.
        raise ArchiveError("not an age identity (expected AGE-SECRET-KEY-1...)")
    return data


def _parse_recipient(recipient: str) -> bytes:
    try:
        hrp, data = bech32_decode(recipient.strip())
    except ValueError:
        hrp, data = None, b""
    if hrp != "age" or len(data) != 32:
        raise ArchiveError("%r is not an age recipient (expected age1...)" % recipient)
    return data


def generate_identity() -> tuple:
    """A new X25519 key pair: (identity 'AGE-SECRET-KEY-1...', recipient 'age1...')."""
    _need_crypto()
    private = X25519PrivateKey.generate()
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return bech32_encode("age-secret-key-", raw).upper(), bech32_encode("age", _raw_public(private))


def recipient_of(identity: str) -> str:
    """The public recipient (age1...) of an identity (AGE-SECRET-KEY-1...)."""
    _need_crypto()
    private = X25519PrivateKey.from_private_bytes(_parse_identity(identity))
    return bech32_encode("age", _raw_public(private))


def is_age(first_bytes: bytes) -> bool:
    """Whether a file starting with `first_bytes` is a (binary) age file."""
    return bytes(first_bytes[:len(INTRO) + 1]) == INTRO + b"\n"


# ---------------------------------------------------------------- primitives

def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    """Canonical unpadded standard base64, as age requires."""
    if b"=" in text or b"\r" in text:
        raise ValueError("padded base64")
    data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    if _b64(data) != text:
        raise ValueError("non-canonical base64")
    return data


def _scrypt_key(passphrase: str, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << log_n, r=8, p=1)
    return kdf.derive(passphrase.encode("utf-8"))


def _stream_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class _Stanza:
    def __init__(self, kind: str, args: list, body: bytes):
        self.kind = kind
        self.args = args
        self.body = body

    def encode(self) -> bytes:
        out = b"-> " + " ".join([self.kind] + self.args).encode("ascii") + b"\n"
        text = _b64(self.body)
        # Body lines of 64 columns; the last one is always shorter (possibly empty).
        for i in range(0, len(text) + 1, 64):
            out += text[i:i + 64] + b"\n"
        return out


# ---------------------------------------------------------------- writer

class AgeWriter:
    """Write-only file object encrypting to `recipients` (age1...) or with `passphrase` into `fileobj`.

    close() writes the final chunk; it does not close `fileobj`."""

    def __init__(self, fileobj, recipients: list | None = None, passphrase: str | None = None):
        _need_crypto()
        if bool(recipients) == bool(passphrase):
            raise ValueError("give either recipients or a passphrase")
        self._out = fileobj
        file_key = os.urandom(16)
        stanzas = []
        if passphrase:
            salt = os.urandom(16)
            log_n = int(SCRYPT_LOG_N)
            wrap = ChaCha20Poly1305(_scrypt_key(passphrase, salt, log_n)).encrypt(_ZERO_NONCE, file_key, None)
            stanzas.append(_Stanza("scrypt", [_b64(salt).decode("ascii"), str(log_n)], wrap))
        else:
            for recipient in recipients:
                public = _parse_recipient(recipient)
                ephemeral = X25519PrivateKey.generate()
                share = _raw_public(ephemeral)
                shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
                key = _hkdf(shared, share + public, _X25519_LABEL)
                wrap = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
                stanzas.append(_Stanza("X25519", [_b64(share).decode("ascii")], wrap))
        header = INTRO + b"\n" + b"".join(s.encode() for s in stanzas) + b"---"
        mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
        nonce = os.urandom(16)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._out.write(header + b" " + _b64(mac) + b"\n" + nonce)
        self._buf = bytearray()
        self._counter = 0
        self.closed = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed AgeWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        pos = 0
        while pos < size:
            take = min(CHUNK - len(self._buf), size - pos)
            if take == 0:
                # A full chunk is only written once more data proves it is not the last one.
                self._emit(last=False)
                continue
            self._buf += view[pos:pos + take]
            pos += take
        return size

    def _emit(self, last: bool) -> None:
        self._out.write(self._aead.encrypt(_stream_nonce(self._counter, last), bytes(self._buf), None))
        self._counter += 1
        self._buf = bytearray()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit(last=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- reader

class AgeReader:
    """Read-only file object decrypting the age file `fileobj` with `identities` or `passphrase`.

    The header is checked in the constructor; read() raises ArchiveError on any
    tampering or truncation and only returns b"" after the authenticated last chunk."""

    def __init__(self, fileobj, identities: list | None = None, passphrase: str | None = None):
        _need_crypto()
        self._in = fileobj
        self._raw = bytearray()
        self._eof = False
        header, mac, stanzas = self._read_header()
        file_key = self._unwrap(stanzas, identities, passphrase)
        expect = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
        if not hmac.compare_digest(expect, mac):
            raise ArchiveError("encrypted archive header was tampered with (header MAC mismatch)")
        nonce = self._take(16)
        if len(nonce) < 16:
            raise ArchiveError("encrypted archive is truncated (no payload)")
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._done = False
        self._plain = b""
        self._pos = 0
        self.closed = False

    # raw input helpers
    def _fill(self, size: int) -> None:
        while len(self._raw) < size and not self._eof:
            data = self._in.read(max(CHUNK + TAG + 1, size - len(self._raw)))
            if not data:
                self._eof = True
            else:
                self._raw += data

    def _take(self, size: int) -> bytes:
        self._fill(size)
        data = bytes(self._raw[:size])
        del self._raw[:size]
        return data

    def _line(self) -> bytes:
        while True:
            idx = self._raw.find(b"\n")
            if idx >= 0:
                line = bytes(self._raw[:idx])
                del self._raw[:idx + 1]
                return line
            if self._eof or len(self._raw) > MAX_HEADER:
                raise ArchiveError("not an age encrypted file, or its header is truncated")
            self._fill(len(self._raw) + 4096)

    def _read_header(self) -> tuple:
        if self._line() != INTRO:
            raise ArchiveError("not an age encrypted file (expected %s)" % INTRO.decode())
        header = INTRO + b"\n"
        stanzas = []
        line = self._line()
        while line.startswith(b"-> "):
            header += line + b"\n"
            fields = line[3:].split(b" ")
            if not fields or not all(fields):
                raise ArchiveError("malformed age header (bad stanza line)")
            body = b""
            while True:
                chunk = self._line()
                header += chunk + b"\n"
                body += chunk
                if len(chunk) > 64:
                    raise ArchiveError("malformed age header (stanza body line too long)")
                if len(chunk) < 64:
                    break
                if len(header) > MAX_HEADER:
                    raise ArchiveError("age header too large")
            try:
                stanzas.append(_Stanza(fields[0].decode("ascii"), [f.decode("ascii") for f in fields[1:]], _unb64(body)))
            except (ValueError, UnicodeDecodeError):
                raise ArchiveError("malformed age header (bad stanza encoding)") from None
            line = self._line()
        if not line.startswith(b"--- ") or not stanzas:
            raise ArchiveError("malformed age header (missing stanzas or MAC line)")
        header += b"---"
        try:
            mac = _unb64(line[4:])
        except ValueError:
            raise ArchiveError("malformed age header (bad MAC encoding)") from None
        if len(mac) != 32:
            raise ArchiveError("malformed age header (bad MAC length)")
        return header, mac, stanzas

    @staticmethod
    def _unwrap(stanzas: list, identities, passphrase) -> bytes:
        scrypts = [s for s in stanzas if s.kind == "scrypt"]
        if scrypts:
            if len(stanzas) != 1:
                raise ArchiveError("malformed age header (a scrypt stanza must be the only one)")
            if not passphrase:
                raise DecryptKeyError("the archive is encrypted with a passphrase: give the passphrase")
            return AgeReader._unwrap_scrypt(scrypts[0], passphrase)
        if not identities:
            raise DecryptKeyError("the archive is encrypted to age recipients: give an identity (AGE-SECRET-KEY-1...)")
        keys = []
        for identity in identities:
            private = X25519PrivateKey.from_private_bytes(_parse_identity(identity))
            keys.append((private, _raw_public(private)))
        for stanza in stanzas:
            if stanza.kind != "X25519":
                continue  # other recipient types (and grease) are ignored, as the spec says
            try:
                share = _unb64(stanza.args[0].encode("ascii")) if len(stanza.args) == 1 else b""
            except ValueError:
                share = b""
            if len(share) != 32 or len(stanza.body) != 32:
                raise ArchiveError("malformed age header (bad X25519 stanza)")
            for private, public in keys:
                try:
                    shared = private.exchange(X25519PublicKey.from_public_bytes(share))
                except ValueError:  # all-zero shared secret: a malicious share
                    raise ArchiveError("malformed age header (invalid X25519 share)") from None
                key = _hkdf(shared, share + public, _X25519_LABEL)
                try:
                    return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, stanza.body, None)
                except InvalidTag:
                    continue
        raise DecryptKeyError(_WRONG_KEY)

    @staticmethod
    def _unwrap_scrypt(stanza: _Stanza, passphrase: str) -> bytes:
        if len(stanza.args) != 2 or not stanza.args[1].isdigit() or stanza.args[1] != str(int(stanza.args[1])):
            raise ArchiveError("malformed age header (bad scrypt stanza)")
        try:
            salt = _unb64(stanza.args[0].encode("ascii"))
        except ValueError:
            salt = b""
        log_n = int(stanza.args[1])
        if len(salt) != 16 or len(stanza.body) != 32 or log_n < 1:
            raise ArchiveError("malformed age header (bad scrypt stanza)")
        if log_n > MAX_SCRYPT_LOG_N:
            raise ArchiveError("scrypt work factor 2^%d of this file is above the limit 2^%d" % (log_n, MAX_SCRYPT_LOG_N))
        try:
            return ChaCha20Poly1305(_scrypt_key(passphrase, salt, log_n)).decrypt(_ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            raise DecryptKeyError(_WRONG_KEY) from None

    # payload
    def _next_chunk(self) -> bytes:
        # Look one byte past a full chunk: only the end of the file tells which chunk is last.
        self._fill(CHUNK + TAG + 1)
        size = min(len(self._raw), CHUNK + TAG)
        last = len(self._raw) <= CHUNK + TAG
        data = bytes(self._raw[:size])
        del self._raw[:size]
        if size < TAG:
            raise ArchiveError("encrypted archive is truncated")
        try:
            plain = self._aead.decrypt(_stream_nonce(self._counter, last), data, None)
        except InvalidTag:
            if last:
                try:
                    self._aead.decrypt(_stream_nonce(self._counter, False), data, None)
                except InvalidTag:
                    pass
                else:
                    raise ArchiveError("encrypted archive is truncated") from None
            raise ArchiveError("encrypted archive is %s (chunk %d fails authentication)"
                               % ("truncated or corrupted" if last else "corrupted", self._counter)) from None
        if last and not plain and self._counter > 0:
            raise ArchiveError("encrypted archive is malformed (empty last chunk)")
        self._counter += 1
        self._done = last
        return plain

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed AgeReader")
        if size is None or size < 0:
            parts = []
            while True:
                data = self.read(CHUNK)
                if not data:
                    return b"".join(parts)
                parts.append(data)
        while self._pos >= len(self._plain):
            if self._done:
                return b""
            self._plain = self._next_chunk()
            self._pos = 0
        data = self._plain[self._pos:self._pos + size]
        self._pos += len(data)
        return data

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["AgeWriter", "AgeReader", "generate_identity", "recipient_of", "is_age", "bech32_encode", "bech32_decode",
           "SCRYPT_LOG_N", "MAX_SCRYPT_LOG_N"]
