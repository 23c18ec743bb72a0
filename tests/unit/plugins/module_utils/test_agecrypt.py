# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""agecrypt.py: age v1 interop with the real rage implementation (pyrage), STREAM edge cases, tampering."""

from __future__ import annotations

import io
import os

import pytest

from ansible_collections.sar.backup.plugins.module_utils import agecrypt
from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError

pyrage = pytest.importorskip("pyrage")

CHUNK = agecrypt.CHUNK
# Empty, tiny, around and exactly at chunk boundaries, and several chunks.
SIZES = [0, 1, 1000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK, 200 * 1024]


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    monkeypatch.setattr(agecrypt, "SCRYPT_LOG_N", 10)


@pytest.fixture(scope="module")
def keypair():
    return agecrypt.generate_identity()


def _encrypt(data: bytes, **kwargs) -> bytes:
    out = io.BytesIO()
    writer = agecrypt.AgeWriter(out, **kwargs)
    writer.write(data)
    writer.close()
    return out.getvalue()


def _decrypt(blob: bytes, **kwargs) -> bytes:
    return agecrypt.AgeReader(io.BytesIO(blob), **kwargs).read()


def test_keys_match_rage(keypair):
    identity, recipient = keypair
    assert identity.startswith("AGE-SECRET-KEY-1") and identity == identity.upper()
    assert recipient.startswith("age1") and len(recipient) == 62
    assert agecrypt.recipient_of(identity) == recipient
    assert str(pyrage.x25519.Identity.from_str(identity).to_public()) == recipient
    ident = pyrage.x25519.Identity.generate()
    assert agecrypt.recipient_of(str(ident)) == str(ident.to_public())


def test_bech32_round_trip_and_checksum():
    data = bytes(range(32))
    text = agecrypt.bech32_encode("age", data)
    assert agecrypt.bech32_decode(text) == ("age", data)
    assert agecrypt.bech32_decode(text.upper()) == ("age", data)
    broken = text[:-1] + ("q" if text[-1] != "q" else "p")
    with pytest.raises(ValueError):
        agecrypt.bech32_decode(broken)


@pytest.mark.parametrize("size", SIZES)
def test_x25519_writer_decrypts_with_rage(keypair, size):
    identity, recipient = keypair
    data = os.urandom(size)
    blob = _encrypt(data, recipients=[recipient])
    assert pyrage.decrypt(blob, [pyrage.x25519.Identity.from_str(identity)]) == data


@pytest.mark.parametrize("size", SIZES)
def test_passphrase_writer_decrypts_with_rage(size):
    data = os.urandom(size)
    blob = _encrypt(data, passphrase="correct horse battery")
    assert b"\n-> scrypt " in blob[:100] and b" 10\n" in blob[:100]
    assert pyrage.passphrase.decrypt(blob, "correct horse battery") == data


@pytest.mark.parametrize("size", SIZES)
def test_reader_decrypts_rage_x25519(keypair, size):
    identity, recipient = keypair
    data = os.urandom(size)
    blob = pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(recipient)])
    assert _decrypt(blob, identities=[identity]) == data
    # Small odd reads cross chunk boundaries.
    reader = agecrypt.AgeReader(io.BytesIO(blob), identities=[identity])
    parts = []
    while True:
        part = reader.read(7777)
        if not part:
            break
        parts.append(part)
    assert b"".join(parts) == data


def test_reader_decrypts_rage_passphrase():
    # rage calibrates its own work factor (about a second of scrypt): one multi-chunk file ending in a short
    # chunk. Up to what we write ourselves (2^18) it decrypts; above, the reader refuses before any scrypt work
    # (the memory bound on hostile archives), naming the limit.
    data = os.urandom(2 * CHUNK + 5)
    blob = pyrage.passphrase.encrypt(data, "another passphrase")
    log_n = int(blob.split(b"-> scrypt ", 1)[1].split(b"\n", 1)[0].split()[1])
    if log_n <= agecrypt.MAX_SCRYPT_LOG_N:
        assert _decrypt(blob, passphrase="another passphrase") == data
    else:
        with pytest.raises(ArchiveError, match="work factor 2\\^%d of this file is above the limit 2\\^18" % log_n):
            _decrypt(blob, passphrase="another passphrase")
    # The same data at the work factor age and we use (2^18) decrypts: rebuilt with our writer, read by rage.
    ours = _encrypt(data, passphrase="another passphrase")
    assert pyrage.passphrase.decrypt(ours, "another passphrase") == data


def test_several_recipients_each_can_decrypt():
    keys = [agecrypt.generate_identity() for dummy in range(3)]
    data = os.urandom(5000)
    blob = _encrypt(data, recipients=[pair[1] for pair in keys])
    for identity, dummy in keys:
        assert pyrage.decrypt(blob, [pyrage.x25519.Identity.from_str(identity)]) == data
        assert _decrypt(blob, identities=[identity]) == data
    # An identity list where only the last one fits.
    other = agecrypt.generate_identity()[0]
    assert _decrypt(blob, identities=[other, keys[2][0]]) == data


def test_writer_streams_one_chunk_at_a_time(keypair):
    out = io.BytesIO()
    writer = agecrypt.AgeWriter(out, recipients=[keypair[1]])
    header_size = len(out.getvalue())
    writer.write(b"x" * (3 * CHUNK + 1))
    # Three full chunks are out already; only the tail waits for close().
    assert len(out.getvalue()) == header_size + 3 * (CHUNK + agecrypt.TAG)
    writer.write(b"y" * (CHUNK - 1))
    assert len(out.getvalue()) == header_size + 3 * (CHUNK + agecrypt.TAG)
    writer.close()
    assert len(out.getvalue()) == header_size + 4 * (CHUNK + agecrypt.TAG)
    assert _decrypt(out.getvalue(), identities=[keypair[0]]) == b"x" * (3 * CHUNK + 1) + b"y" * (CHUNK - 1)


def test_is_age(keypair):
    assert agecrypt.is_age(_encrypt(b"abc", recipients=[keypair[1]])[:30])
    assert not agecrypt.is_age(b"\x28\xb5\x2f\xfd" + b"\0" * 30)
    assert not agecrypt.is_age(b"age-encryption.org/v2\n")


def test_wrong_identity_and_passphrase(keypair):
    blob = _encrypt(b"secret", recipients=[keypair[1]])
    with pytest.raises(ArchiveError, match="wrong passphrase or not encrypted to this identity"):
        _decrypt(blob, identities=[agecrypt.generate_identity()[0]])
    with pytest.raises(ArchiveError, match="give an identity"):
        _decrypt(blob, passphrase="whatever")
    blob = _encrypt(b"secret", passphrase="right one")
    with pytest.raises(ArchiveError, match="wrong passphrase or not encrypted to this identity"):
        _decrypt(blob, passphrase="wrong one")
    with pytest.raises(ArchiveError, match="give the passphrase"):
        _decrypt(blob, identities=[keypair[0]])


def test_bad_identity_message_hides_the_key():
    identity = agecrypt.generate_identity()[0]
    broken = identity[:-3] + "QQQ"
    with pytest.raises(ArchiveError) as info:
        agecrypt.recipient_of(broken)
    assert broken not in str(info.value) and "AGE-SECRET-KEY-1" in str(info.value)


def test_scrypt_work_factor_limit():
    blob = _encrypt(b"data", passphrase="p")
    assert b" 10\n" in blob[:100]
    # 2^23 would need 8 GiB: refused from the header, before any scrypt work; so is anything above what we
    # write (2^18, 256 MiB): a crafted archive's 2^19 (512 MiB) too.
    with pytest.raises(ArchiveError, match="work factor 2\\^23"):
        _decrypt(blob.replace(b" 10\n", b" 23\n", 1), passphrase="p")
    with pytest.raises(ArchiveError, match="work factor 2\\^19"):
        _decrypt(blob.replace(b" 10\n", b" 19\n", 1), passphrase="p")
    with pytest.raises(ArchiveError, match="malformed"):
        _decrypt(blob.replace(b" 10\n", b" 010\n", 1), passphrase="p")


@pytest.mark.parametrize("size", [0, 1000, CHUNK, 2 * CHUNK, 2 * CHUNK + 500])
def test_truncation_detected(keypair, size):
    blob = _encrypt(os.urandom(size), recipients=[keypair[1]])
    header_end = blob.index(b"\n---") + 1
    header_end = blob.index(b"\n", header_end) + 1
    cuts = {10, header_end - 5, header_end + 8, header_end + 16, len(blob) - 1, len(blob) - 17}
    # Exactly at a chunk boundary: the previous chunk authenticates, but as a non-last chunk.
    cuts |= {header_end + 16 + k * (CHUNK + agecrypt.TAG) for k in range(1, size // CHUNK + 1)}
    for cut in sorted(c for c in cuts if 0 < c < len(blob)):
        with pytest.raises(ArchiveError, match="truncated"):
            _decrypt(blob[:cut], identities=[keypair[0]])


def test_tampering_detected(keypair):
    identity, recipient = keypair
    blob = bytearray(_encrypt(os.urandom(3 * CHUNK), recipients=[recipient]))
    header_end = blob.index(b"\n---") + 1
    mac_at = header_end + 4
    payload_at = blob.index(b"\n", header_end) + 1 + 16
    for pos, message in ((payload_at + CHUNK + 100, "corrupted"), (len(blob) - 3, "corrupted"),
                         (mac_at + 2, "MAC"), (payload_at - 3, "corrupted")):
        damaged = bytearray(blob)
        damaged[pos] ^= 0x01
        with pytest.raises(ArchiveError, match=message):
            _decrypt(bytes(damaged), identities=[identity])
    # A swapped stanza body no longer unwraps the file key.
    line_start = blob.index(b"-> X25519 ") + 1
    body_at = blob.index(b"\n", line_start) + 1
    damaged = bytearray(blob)
    damaged[body_at + 2] = ord("A") if damaged[body_at + 2] != ord("A") else ord("B")
    with pytest.raises(ArchiveError, match="wrong passphrase|malformed"):
        _decrypt(bytes(damaged), identities=[identity])
    # Appended bytes after the last chunk.
    with pytest.raises(ArchiveError):
        _decrypt(bytes(blob) + b"junk", identities=[identity])


def test_not_age():
    with pytest.raises(ArchiveError, match="not an age"):
        _decrypt(b"hello world\n" * 10, passphrase="x")
