# SPDX-License-Identifier: GPL-3.0-or-later
"""The one size formatter and the one streaming SHA-256 of the engine (issue 10)."""
from __future__ import annotations

import hashlib
import io
import os

import pytest

from ansible_collections.sar.backup.plugins.module_utils import fsutil


@pytest.mark.parametrize("num, shown", [
    (None, "-"),
    (0, "0 B"),
    (999, "999 B"),
    (1000, "1.0 KB"),
    (1234, "1.2 KB"),
    (31_234_567, "31.2 MB"),
    (200_000, "200 KB"),
    (274_743, "275 KB"),
    (99_950, "100 KB"),
    (99_940, "99.9 KB"),
    (8_000_000_000, "8.0 GB"),
    (2_400_000_000_000, "2.4 TB"),
    (5_000_000_000_000_000, "5000 TB"),
])
def test_format_size(num, shown):
    assert fsutil.format_size(num) == shown


def test_format_size_in_a_fixed_unit():
    assert fsutil.format_size(0, "MB") == "0.0 MB"
    assert fsutil.format_size(2_500_000_000, "MB") == "2500 MB"
    assert fsutil.format_size(1_500_000.0, "MB") == "1.5 MB"


def test_format_size_reads_back_with_parse_size():
    assert fsutil.parse_size(fsutil.format_size(31_200_000), "x") == 31_200_000


def test_sha256_stream_reads_what_is_left_in_pieces_and_feeds_the_sinks():
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one piece
    handle = io.BytesIO(b"skip" + data)
    handle.read(4)
    seen = []
    other = hashlib.sha512()
    digest, total = fsutil.sha256_stream(handle, chunk=100_000, sinks=(seen.append, other.update))
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest() and total == len(data)
    assert b"".join(seen) == data and max(len(piece) for piece in seen) == 100_000
    assert other.hexdigest() == hashlib.sha512(data).hexdigest()


class _ShortReads(io.RawIOBase):
    """readinto() that returns fewer bytes than asked, as pipes and network readers do."""

    def __init__(self, data: bytes):
        super().__init__()
        self.data, self.pos, self.calls = data, 0, 0

    def readable(self):
        return True

    def readinto(self, buf):
        self.calls += 1
        take = min(len(buf), 777, len(self.data) - self.pos)
        buf[:take] = self.data[self.pos:self.pos + take]
        self.pos += take
        return take


class _ReadOnly(io.RawIOBase):
    """A raw file object with read() only: io.RawIOBase's readinto() is a stub that raises."""

    def __init__(self, data: bytes):
        super().__init__()
        self.stream = io.BytesIO(data)

    def readable(self):
        return True

    def read(self, size=-1):
        return self.stream.read(size)


def test_sha256_stream_without_sinks_reads_into_one_buffer_through_short_reads():
    data = os.urandom(50_000)
    handle = _ShortReads(data)
    digest, total = fsutil.sha256_stream(handle, chunk=4096)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest() and total == len(data)
    assert handle.calls == -(-len(data) // 777) + 1  # every piece through readinto, then the empty read


def test_sha256_stream_falls_back_to_read_where_readinto_is_a_stub():
    data = os.urandom(30_000)
    digest, total = fsutil.sha256_stream(_ReadOnly(data), chunk=4096)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest() and total == len(data)


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_001)
    digest, total = fsutil.sha256_file(str(path))
    assert digest.hexdigest() == hashlib.sha256(b"x" * 3_000_001).hexdigest() and total == 3_000_001
    (tmp_path / "empty").write_bytes(b"")
    digest, total = fsutil.sha256_file(str(tmp_path / "empty"))
    assert digest.hexdigest() == hashlib.sha256(b"").hexdigest() and total == 0
    with pytest.raises(OSError):
        fsutil.sha256_file(str(tmp_path / "missing"))
