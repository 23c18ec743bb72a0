# SPDX-License-Identifier: GPL-3.0-or-later
"""Trees compressed ahead of their turn (ArchiveWriter.plan/spool_tree/add_spooled): what the runner
does while the database dumps run. The archive must be the one a plain build makes, member for
member, readable by verify() and by the standard tools, and nothing of the spool may outlive it."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import threading

import pytest
import zstandard

from ansible_collections.sar.backup.plugins.module_utils import agecrypt, archive
from ansible_collections.sar.backup.plugins.module_utils.errors import SourceError

MTIME = 1700000000


def _manifest(dump_size, compression="zstd", encrypted=False):
    sources = [
        {"category": "core", "kind": "postgresql", "origin": "postgresql://sar@/run/postgresql:5432/pbx?exclude_tables=cdr",
         "member": "db/core.pgdump", "size": dump_size, "files": 1 if dump_size is not None else None},
        {"category": "core", "kind": "files", "origin": "/etc/asterisk", "member": "files/core/0", "size": 4 << 20, "files": 4},
        {"category": "cdr_voicemail", "kind": "postgresql", "origin": "postgresql://sar@/run/postgresql:5432/pbx?tables=cdr",
         "member": "db/cdr_voicemail.pgdump", "size": dump_size, "files": 1 if dump_size is not None else None},
        {"category": "cdr_voicemail", "kind": "files", "origin": "/var/spool/asterisk/voicemail",
         "member": "files/cdr_voicemail/0", "size": 4 << 20, "files": 4},
    ]
    return {"format": 2, "job": "nightly", "host": "pbx", "created": "2024-05-01T02:00:00+00:00",
            "categories": ["core", "cdr_voicemail"], "sources": sources, "compression": compression,
            "encrypted": encrypted, "encryption": "recipients" if encrypted else None, "tool": "sar-backup test"}


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    monkeypatch.setattr(agecrypt, "SCRYPT_LOG_N", 10)


@pytest.fixture
def appliance(tmp_path):
    """Two trees (one with a symlink out of it: a links member) and two dumps."""
    trees = []
    for index, name in enumerate(("etc", "spool")):
        root = tmp_path / name
        (root / "sub").mkdir(parents=True)
        (root / "a.txt").write_bytes(b"hello %d\n" % index)
        (root / "sub" / "big.wav").write_bytes(os.urandom(3 * 1024 * 1024 + 17 * index))
        (root / "sub" / "small.wav").write_bytes(b"RIFF" * 3000)
        (root / "moh").symlink_to("/usr/share/asterisk/moh")
        for path in (root, root / "a.txt", root / "sub", root / "sub" / "big.wav"):
            os.utime(str(path), (MTIME, MTIME))
        trees.append(str(root))
    dumps = []
    for name in ("core", "cdr"):
        path = tmp_path / ("%s.pgdump" % name)
        path.write_bytes(b"PGDMP" + os.urandom(200000))
        os.utime(str(path), (MTIME, MTIME))
        dumps.append(str(path))
    return trees, dumps


def _plain(path, appliance, compression, encryption=None):
    trees, dumps = appliance
    manifest = _manifest(os.path.getsize(dumps[0]), compression, bool(encryption))
    with archive.ArchiveWriter(str(path), compression=compression, encryption=encryption) as writer:
        writer.add_manifest(manifest)
        writer.add_file("db/core.pgdump", dumps[0])
        writer.add_tree("files/core/0", trees[0])
        writer.add_file("db/cdr_voicemail.pgdump", dumps[1])
        writer.add_tree("files/cdr_voicemail/0", trees[1])
        return writer.close()


def _spooled(path, appliance, compression, encryption=None, on_thread=True):
    trees, dumps = appliance
    writer = archive.ArchiveWriter(str(path), compression=compression, encryption=encryption)
    writer.plan(_manifest(None, compression, bool(encryption)))

    def spool():
        writer.spool_tree("files/core/0", trees[0])
        writer.spool_tree("files/cdr_voicemail/0", trees[1])
    if on_thread:  # as the runner does: beside the dumps
        thread = threading.Thread(target=spool)
        thread.start()
        thread.join()
    else:
        spool()
    writer.add_manifest(_manifest(os.path.getsize(dumps[0]), compression, bool(encryption)))
    writer.add_file("db/core.pgdump", dumps[0])
    writer.add_spooled("files/core/0")
    writer.add_file("db/cdr_voicemail.pgdump", dumps[1])
    writer.add_spooled("files/cdr_voicemail/0")
    return writer.close()


def _tar_stream(path, identity=None) -> bytes:
    raw = open(str(path), "rb").read()
    if agecrypt.is_age(raw):
        raw = agecrypt.AgeReader(io.BytesIO(raw), identities=[identity]).read()
    if raw[:4] == archive.ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
    return gzip.decompress(raw)


def _members(tar_data: bytes) -> list:
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar_data), mode="r:") as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isreg() else b""
            out.append((info.name, info.type, info.size, info.mode, info.linkname,
                        None if info.name in ("manifest.json", "checksums.sha256") or info.name.endswith(".links.json") else info.mtime,
                        hashlib.sha256(data).hexdigest()))
    return out


def _leftovers(folder) -> list:
    return sorted(name for name in os.listdir(str(folder)) if ".spool-" in name)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
@pytest.mark.parametrize("encrypted", [False, True])
def test_spooled_build_is_the_plain_archive(tmp_path, appliance, compression, encrypted, monkeypatch):
    """The same tar stream as a plain build, in several frames (gzip members); verify() accepts it."""
    monkeypatch.setattr(archive, "SPOOL_PART", 1 << 20)  # several parts per tree
    identity, recipient = agecrypt.generate_identity()
    encryption = {"passphrase": None, "recipients": [recipient]} if encrypted else None
    out = tmp_path / "out"
    out.mkdir()
    plain, spooled = out / "plain.sar", out / "spooled.sar"
    _plain(plain, appliance, compression, encryption)
    info = _spooled(spooled, appliance, compression, encryption)
    assert _leftovers(out) == []
    assert info["size"] == os.path.getsize(str(spooled))
    a, b = _tar_stream(plain, identity), _tar_stream(spooled, identity)
    # member for member the same (the generated members' mtimes aside: when they were written)
    assert _members(a) == _members(b)
    assert len(a) == len(b)
    assert archive.verify(str(spooled), identities=[identity])["manifest"] == \
        archive.verify(str(plain), identities=[identity])["manifest"]
    listed = [m[0] for m in _members(b)]
    assert listed[:2] == ["manifest.json", "db/core.pgdump"] and listed[-1] == "checksums.sha256"
    assert listed.index("files/core/0") < listed.index("db/cdr_voicemail.pgdump") < listed.index("files/cdr_voicemail/0")
    assert "files/core/0.links.json" in listed
    if not encrypted:
        raw = open(str(spooled), "rb").read()
        magic = archive.ZSTD_MAGIC if compression == "zstd" else archive.GZIP_MAGIC
        assert raw.count(magic) >= 3  # the trees' frames (members) between the others


@pytest.mark.parametrize("compression, tool", [("zstd", "zstd -dc"), ("gzip", "gzip -dc")])
def test_spooled_archive_opens_with_the_standard_tools(tmp_path, appliance, compression, tool):
    sar = tmp_path / "x.sar"
    _spooled(sar, appliance, compression, on_thread=False)
    out = tmp_path / "std"
    out.mkdir()
    subprocess.run("%s %s | tar -x -C %s" % (tool, sar, out), shell=True, check=True)
    res = subprocess.run(["sha256sum", "--strict", "-c", "checksums.sha256"], cwd=str(out), capture_output=True,
                         check=False)
    assert res.returncode == 0 and res.stdout.count(b": OK") == 11, res.stdout + res.stderr
    assert open(str(out / "files/cdr_voicemail/0/sub/big.wav"), "rb").read() == \
        open(os.path.join(appliance[0][1], "sub", "big.wav"), "rb").read()


def test_final_manifest_must_keep_the_planned_sources(tmp_path, appliance):
    trees, _dumps = appliance
    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    writer.plan(_manifest(None))
    writer.spool_tree("files/core/0", trees[0])
    changed = _manifest(1000)
    changed["sources"][1]["size"] = 1  # a tree's declared size (its cap) is fixed by the plan
    with pytest.raises(ValueError, match="differ from the planned"):
        writer.add_manifest(changed)
    missing = _manifest(1000)
    del missing["sources"][3]
    with pytest.raises(ValueError, match="differ from the planned"):
        writer.add_manifest(missing)
    writer.abort()
    assert _leftovers(tmp_path) == [] and not os.path.exists(str(tmp_path / "x.sar"))


def test_spool_rules(tmp_path, appliance):
    trees, dumps = appliance
    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    with pytest.raises(ValueError, match="after plan"):
        writer.spool_tree("files/core/0", trees[0])
    writer.plan(_manifest(None))
    with pytest.raises(ValueError, match="once"):
        writer.plan(_manifest(None))
    with pytest.raises(ValueError, match="add_manifest"):
        writer.add_file("db/core.pgdump", dumps[0])  # no member before the manifest, spooled trees aside
    writer.spool_tree("files/core/0", trees[0])
    with pytest.raises(ValueError, match="twice"):
        writer.spool_tree("files/core/0", trees[0])
    with pytest.raises(ValueError, match="belongs to no source"):
        writer.spool_tree("files/announcements/0", trees[1])
    writer.add_manifest(_manifest(os.path.getsize(dumps[0])))
    with pytest.raises(ValueError, match="after plan"):
        writer.spool_tree("files/cdr_voicemail/0", trees[1])
    writer.add_file("db/core.pgdump", dumps[0])
    writer.add_spooled("files/core/0")
    with pytest.raises(ValueError, match="was not spooled"):
        writer.add_spooled("files/core/0")
    writer.add_file("db/cdr_voicemail.pgdump", dumps[1])
    writer.add_tree("files/cdr_voicemail/0", trees[1])  # a tree need not be spooled
    writer.close()
    assert archive.verify(str(tmp_path / "x.sar"))["manifest"]["sources"][0]["size"] == os.path.getsize(dumps[0])
    assert _leftovers(tmp_path) == []


def test_a_spooled_tree_never_added_fails_the_archive(tmp_path, appliance):
    trees, dumps = appliance
    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    writer.plan(_manifest(None))
    writer.spool_tree("files/core/0", trees[0])
    writer.spool_tree("files/cdr_voicemail/0", trees[1])
    writer.add_manifest(_manifest(os.path.getsize(dumps[0])))
    writer.add_file("db/core.pgdump", dumps[0])
    writer.add_spooled("files/core/0")
    writer.add_file("db/cdr_voicemail.pgdump", dumps[1])
    with pytest.raises(ValueError, match="never added"):
        writer.close()
    assert os.listdir(str(tmp_path)) != [] and _leftovers(tmp_path) == []
    assert not os.path.exists(str(tmp_path / "x.sar"))


def test_cancel_stops_a_spool_and_abort_leaves_nothing(tmp_path, appliance, monkeypatch):
    """The dumps failed: the run cancels the spooling thread; the tree stops at its next read."""
    monkeypatch.setattr(archive, "SPOOL_PART", 1 << 20)
    trees, _dumps = appliance
    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    writer.plan(_manifest(None))
    writer.spool_tree("files/core/0", trees[0])
    assert len(_leftovers(tmp_path)) >= 3  # 3 MiB of random data in parts of 1 MiB
    writer.cancel()
    with pytest.raises(SourceError, match="was stopped"):
        writer.spool_tree("files/cdr_voicemail/0", trees[1])
    with pytest.raises(ValueError, match="cannot be completed"):
        writer.add_manifest(_manifest(1000))
    writer.abort()
    assert _leftovers(tmp_path) == [] and not os.path.exists(str(tmp_path / "x.sar"))


def test_a_tree_replaced_by_a_file_fails_while_spooled(tmp_path, appliance):
    """The tree's root is no directory when its turn comes: the error, and no part left behind."""
    trees, _dumps = appliance
    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    writer.plan(_manifest(None))
    writer.spool_tree("files/core/0", trees[0])
    gone = trees[1] + ".gone"
    os.rename(trees[1], gone)
    open(trees[1], "w").close()
    with pytest.raises(SourceError, match="not a directory"):
        writer.spool_tree("files/cdr_voicemail/0", trees[1])
    writer.abort()
    assert _leftovers(tmp_path) == [] and not os.path.exists(str(tmp_path / "x.sar"))


def test_the_plan_is_a_copy(tmp_path, appliance):
    """Changing the dict given to plan() afterwards changes nothing the writer checks."""
    trees, dumps = appliance
    planned = _manifest(None)
    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    writer.plan(planned)
    final = copy.deepcopy(planned)
    planned["sources"][1]["origin"] = "/elsewhere"
    writer.spool_tree("files/core/0", trees[0])
    final["sources"][0]["size"] = final["sources"][2]["size"] = os.path.getsize(dumps[0])
    writer.add_manifest(final)
    writer.abort()


# ---------------------------------------------------------------- gzip on several threads

def _text(size: int) -> bytes:
    """Compressible like configuration and CDR dumps: words, numbers, repeats at distances past 32 KiB too."""
    import random  # pylint: disable=import-outside-toplevel
    rnd = random.Random(size)
    words = [b"extension", b"voicemail", b"context", b"exten", b"=>", b"Dial(SIP/", b"answer", b"2024-05-01"]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rnd.choice(words) for _word in range(12)) + b" %d\n" % rnd.randrange(10 ** 6)
    return bytes(out[:size])


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("size", [0, 1, archive.GZIP_BLOCK - 1, archive.GZIP_BLOCK, archive.GZIP_BLOCK + 1,
                                  3 * archive.GZIP_BLOCK + 12345])
def test_parallel_gzip_is_one_standard_member(tmp_path, threads, size):
    data = _text(size // 2) + os.urandom(size - size // 2)
    out = io.BytesIO()
    comp = archive._ParallelGzip(out, threads=threads)  # pylint: disable=protected-access
    view = memoryview(data)
    for start in range(0, len(data), 300000):  # writes that straddle the blocks
        comp.write(view[start:start + 300000])
    comp.close()
    comp.close()  # once only
    member = out.getvalue()
    assert member[:2] == archive.GZIP_MAGIC
    assert gzip.decompress(member) == data
    path = tmp_path / "x.gz"
    path.write_bytes(member)
    assert subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout == data
    assert subprocess.run(["gzip", "-t", str(path)], check=False).returncode == 0


def test_parallel_gzip_keeps_the_ratio_of_a_serial_gzip():
    """Each block is primed with the 32 KiB before it: no ratio lost at the block borders."""
    data = _text(6 * archive.GZIP_BLOCK)
    out = io.BytesIO()
    comp = archive._ParallelGzip(out, threads=4)  # pylint: disable=protected-access
    comp.write(data)
    comp.close()
    serial = len(gzip.compress(data, compresslevel=archive.GZIP_LEVEL))
    assert len(out.getvalue()) <= serial * 1.005, (len(out.getvalue()), serial)


def test_parallel_gzip_abandoned_writes_nothing_more():
    out = io.BytesIO()
    comp = archive._ParallelGzip(out, threads=2)  # pylint: disable=protected-access
    comp.write(os.urandom(5 * archive.GZIP_BLOCK + 7))
    written = len(out.getvalue())
    comp.abandon()
    comp.close()
    assert len(out.getvalue()) == written  # no last block, no trailer: not a complete member
    with pytest.raises(ValueError):
        comp.write(b"more")
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(out.getvalue())


# -- the archive written back to disk while it is built (archive.EARLY_SYNC) ----------------
def _recording_fdatasync(monkeypatch, fail_after=None):
    """fdatasync as the writer calls it, recorded: (the file's inode, its size then)."""
    calls = []

    def fdatasync(fd):
        st = os.fstat(fd)
        calls.append((st.st_ino, st.st_size))
        if fail_after is not None and len(calls) > fail_after:
            raise OSError(5, "Input/output error")
        os.fsync(fd)
    monkeypatch.setattr(archive, "_fdatasync", fdatasync)
    return calls


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_the_archive_is_written_back_while_it_is_built(tmp_path, appliance, compression, monkeypatch):
    monkeypatch.setattr(archive, "EARLY_SYNC", 1 << 20)
    calls = _recording_fdatasync(monkeypatch)
    pokes = []  # the file's size each time the writer asks for a sync (the sync thread runs when it can)
    real_poke = archive._EarlySync.poke  # pylint: disable=protected-access
    monkeypatch.setattr(archive._EarlySync, "poke",  # pylint: disable=protected-access
                        lambda self: (pokes.append(os.fstat(self.fd).st_size), real_poke(self)))
    sar = tmp_path / "early.sar"
    info = _plain(sar, appliance, compression)
    size = os.path.getsize(str(sar))
    assert info["size"] == size > 6 << 20  # the trees' random data: about 6 MiB that does not compress
    # asked every MiB or so while the file grew, from its first MiB on
    assert len(pokes) >= 4 and pokes == sorted(pokes) and 0 < pokes[0] < size // 2, (pokes, size)
    # synced at least once, at most once a request, always the .sar file itself
    assert 1 <= len(calls) <= len(pokes), (calls, pokes)
    assert {ino for ino, _seen in calls} == {os.stat(str(sar)).st_ino}
    assert all(0 < seen <= size for _ino, seen in calls), (calls, size)
    assert archive.verify(str(sar))["checksums_ok"] is True
    assert hashlib.sha256(sar.read_bytes()).hexdigest() == info["sha256"]


def test_a_short_archive_gets_only_the_last_fsync(tmp_path, appliance, monkeypatch):
    calls = _recording_fdatasync(monkeypatch)
    _plain(tmp_path / "short.sar", appliance, "zstd")  # under EARLY_SYNC (128 MiB)
    assert calls == []


def test_a_failed_write_back_fails_the_archive_and_leaves_nothing(tmp_path, appliance, monkeypatch):
    """The kernel reports a write-back error to one fsync only: the one the early sync made. close()
    must raise it (not a clean fsync after it), and no archive is left."""
    monkeypatch.setattr(archive, "EARLY_SYNC", 1 << 20)
    calls = _recording_fdatasync(monkeypatch, fail_after=0)
    sar = tmp_path / "failed.sar"
    with pytest.raises(OSError, match="Input/output error"):
        _plain(sar, appliance, "zstd")
    assert len(calls) >= 1
    assert not sar.exists()
