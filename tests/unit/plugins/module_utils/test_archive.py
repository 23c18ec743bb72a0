# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""archive.py: the .sar container — round trips, standard tools, corruption, truncation, unsafe members, memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap

import pytest
import zstandard

from ansible_collections.sar.backup.plugins.module_utils import agecrypt, archive
from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError, SourceError

PASSPHRASE = "a long enough passphrase"
MTIME = 1700000000


def _manifest(*members, sizes=None) -> dict:
    """A valid manifest whose sources are `members` (db/<cat>.pgdump or files/<cat>/<index>)."""
    sources = []
    for member in members:
        cat = member.split("/")[1].split(".")[0]
        kind = "postgresql" if member.startswith("db/") else "files"
        origin = "postgresql://sar@/var/run/postgresql:5432/pbx" if kind == "postgresql" else "/srv/" + member
        sources.append({"category": cat, "kind": kind, "origin": origin, "member": member,
                        "size": (sizes or {}).get(member), "files": None})
    cats = [c for c in ("core", "cdr_voicemail", "announcements") if c in {s["category"] for s in sources}] or ["core"]
    return {"format": 1, "job": "nightly", "host": "pbx", "created": "2024-05-01T02:00:00+00:00",
            "categories": cats, "sources": sources, "compression": "zstd", "encrypted": False, "tool": "sar-backup test"}


# What _build() puts in: a dump and a tree (format 1 manifests are still read).
MANIFEST = _manifest("db/core.pgdump", "files/core/0", sizes={"db/core.pgdump": 5005})


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    monkeypatch.setattr(agecrypt, "SCRYPT_LOG_N", 10)


@pytest.fixture(scope="module")
def keypair():
    return agecrypt.generate_identity()


@pytest.fixture
def tree(tmp_path):
    """A small tree with the kinds of entries a real one has."""
    root = tmp_path / "tree"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "sub" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    (root / "sub" / "deeper" / "space name.wav").write_bytes(b"RIFF" * 1000)
    (root / "sub" / "link").symlink_to("../a.txt")
    os.mkfifo(str(root / "pipe"))
    os.chmod(str(root / "a.txt"), 0o640)
    os.chmod(str(root / "sub" / "deeper"), 0o750)
    for path in (root / "a.txt", root / "sub" / "big.bin", root / "sub" / "deeper", root / "empty-dir"):
        os.utime(str(path), (MTIME, MTIME))
    return root


def _build(path, tree_root, compression="zstd", encryption=None, extra=None):
    with archive.ArchiveWriter(str(path), compression=compression, encryption=encryption) as writer:
        writer.add_manifest(MANIFEST)
        dump = path.parent / "core.pgdump"
        dump.write_bytes(b"PGDMP" + os.urandom(5000))
        writer.add_file("db/core.pgdump", str(dump))
        stats = writer.add_tree("files/core/0", str(tree_root))
        for name, data in (extra or {}).items():
            writer.add_bytes(name, data)
        info = writer.close()
    return info, stats


def _tar_bytes(path, passphrase=None, identities=None) -> bytes:
    """The plain tar stream inside a .sar, decoded with the libraries directly (not archive.py)."""
    raw = open(str(path), "rb").read()
    if agecrypt.is_age(raw):
        raw = agecrypt.AgeReader(io.BytesIO(raw), identities=identities, passphrase=passphrase).read()
    if raw[:4] == archive.ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
    return gzip.decompress(raw)


def _names(tar_data: bytes) -> list:
    with tarfile.open(fileobj=io.BytesIO(tar_data), mode="r:") as tar:
        return tar.getnames()


def _compare_tree(src, dst):
    for dirpath, dirnames, filenames in os.walk(str(src)):
        rel = os.path.relpath(dirpath, str(src))
        other = os.path.join(str(dst), rel)
        for name in dirnames + filenames:
            a, b = os.path.join(dirpath, name), os.path.join(other, name)
            sa = os.lstat(a)
            if stat.S_ISFIFO(sa.st_mode):
                assert not os.path.lexists(b)
                continue
            sb = os.lstat(b)
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), a
            if stat.S_ISLNK(sa.st_mode):
                assert os.readlink(a) == os.readlink(b)
                continue
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), a
            assert int(sa.st_mtime) == int(sb.st_mtime), a
            if stat.S_ISREG(sa.st_mode):
                assert open(a, "rb").read() == open(b, "rb").read(), a


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("compression", ["zstd", "gzip"])
@pytest.mark.parametrize("mode", ["plain", "passphrase", "recipients"])
def test_round_trip(tmp_path, tree, keypair, compression, mode):
    identity, recipient = keypair
    encryption = {"plain": None, "passphrase": {"passphrase": PASSPHRASE, "recipients": None},
                  "recipients": {"passphrase": None, "recipients": [recipient]}}[mode]
    keys = {"plain": {}, "passphrase": {"passphrase": PASSPHRASE}, "recipients": {"identities": [identity]}}[mode]
    sar = tmp_path / "job_pbx_20240501T020000Z.sar"
    info, stats = _build(sar, tree, compression, encryption)

    assert stats["files"] == 4 and stats["dirs"] == 4 and stats["symlinks"] == 1
    assert stats["bytes"] == 6 + 0 + 3 * 1024 * 1024 + 123 + 4000
    assert stats["skipped"] == [str(tree / "pipe")]
    assert stat.S_IMODE(os.stat(str(sar)).st_mode) == 0o600
    content = sar.read_bytes()
    assert info == {"path": str(sar), "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    assert agecrypt.is_age(content) == (mode != "plain")
    if mode == "plain":
        assert content.startswith(archive.ZSTD_MAGIC if compression == "zstd" else archive.GZIP_MAGIC)

    checked = archive.verify(str(sar), **keys)
    assert checked["manifest"] == MANIFEST and checked["checksums_ok"] is True
    assert checked["size"] == info["size"] and checked["sha256"] == info["sha256"]
    names = [m["name"] for m in checked["members"]]
    assert names[0] == "manifest.json" and names[-1] == "checksums.sha256"
    assert names[1:4] == ["db/core.pgdump", "files/core/0", "files/core/0/a.txt"]
    assert {"name": "files/core/0/sub/link", "type": "symlink", "size": 0} in checked["members"]
    assert {"name": "files/core/0/empty-dir", "type": "dir", "size": 0} in checked["members"]
    assert {"name": "files/core/0/empty.txt", "type": "file", "size": 0} in checked["members"]
    assert archive.read_manifest(str(sar), **keys) == MANIFEST

    dest = tmp_path / "out"
    dest.mkdir()
    done = archive.extract(str(sar), str(dest), **keys)
    assert "manifest.json" not in done and "checksums.sha256" not in done
    assert (dest / "db" / "core.pgdump").read_bytes() == (tmp_path / "core.pgdump").read_bytes()
    _compare_tree(tree, dest / "files" / "core" / "0")


def test_members_layout_and_checksums_with_sha256sum(tmp_path, tree):
    """The standard tools open the archive: zstd -dc | tar -x, then sha256sum -c."""
    odd = tree / "caf\xe9 \u00fcml\u00e4ut.txt"
    odd.write_bytes(b"unicode name")
    raw_name = os.path.join(os.fsencode(str(tree)), b"latin1-\xff.txt")  # not UTF-8 at all
    with open(raw_name, "wb") as handle:
        handle.write(b"latin1 name")
    sar = tmp_path / "x.sar"
    _build(sar, tree)
    names = _names(_tar_bytes(sar))
    assert names[0] == "manifest.json" and names[-1] == "checksums.sha256"
    out = tmp_path / "std"
    out.mkdir()
    subprocess.run("zstd -dc %s | tar -x -C %s" % (sar, out), shell=True, check=True)
    listed = (out / "checksums.sha256").read_bytes().decode("utf-8", "surrogateescape").splitlines()
    regular = [n for n in names if n not in ("checksums.sha256",) and not n.endswith(("/0", "empty-dir", "sub", "deeper", "link"))]
    assert sorted(line.split("  ", 1)[1] for line in listed) == sorted(regular)
    assert json.loads((out / "manifest.json").read_text()) == MANIFEST
    res = subprocess.run(["sha256sum", "--strict", "-c", "checksums.sha256"], cwd=str(out), capture_output=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(b": OK") == len(listed) == 8
    # A tampered file on disk is noticed by the same standard check.
    (out / "files" / "core" / "0" / "a.txt").write_bytes(b"changed\n")
    assert subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=str(out), capture_output=True, check=False).returncode != 0


@pytest.mark.skipif(not shutil.which("age"), reason="the age command (Debian package age) is not installed")
def test_encrypted_archive_opens_with_age_command(tmp_path, tree, keypair):
    """The documented pipeline with the reference Go implementation: age -d -i key | zstd -dc | tar -x."""
    identity, recipient = keypair
    sar = tmp_path / "x.sar"
    _build(sar, tree, encryption={"passphrase": None, "recipients": [recipient]})
    key = tmp_path / "key.txt"
    key.write_text("# created: test\n# public key: %s\n%s\n" % (recipient, identity))
    out = tmp_path / "std"
    out.mkdir()
    subprocess.run("age -d -i %s %s | zstd -dc | tar -x -C %s" % (key, sar, out), shell=True, check=True)
    res = subprocess.run(["sha256sum", "-c", "checksums.sha256"], cwd=str(out), capture_output=True, check=False)
    assert res.returncode == 0 and res.stdout.count(b": OK") == 6, res.stdout + res.stderr
    # And the other way: a file the age command encrypted opens here.
    plain = tmp_path / "plain.sar"
    _build(plain, tree)
    again = tmp_path / "again.sar"
    subprocess.run(["age", "-r", recipient, "-o", str(again), str(plain)], check=True)
    assert archive.verify(str(again), identities=[identity])["manifest"] == MANIFEST


def test_gzip_opens_with_gzip_tool(tmp_path, tree):
    sar = tmp_path / "x.sar"
    _build(sar, tree, compression="gzip")
    listing = subprocess.run("gzip -dc %s | tar -t" % sar, shell=True, check=True, capture_output=True, text=True).stdout
    assert listing.splitlines()[0] == "manifest.json" and listing.splitlines()[-1] == "checksums.sha256"


def test_checksum_lines_escape_like_coreutils():
    for name in ("plain", "back\\slash", "new\nline", "both\\\n"):
        line = archive.checksum_line("a" * 64, name)
        assert line.endswith("\n") and line.count("\n") == 1
        assert archive.parse_checksums(line.encode()) == [(name, "a" * 64)]
    assert archive.checksum_line("b" * 64, "x\ny").startswith("\\")
    with pytest.raises(ArchiveError, match="malformed"):
        archive.parse_checksums(b"nothex  name\n")


def test_select_prefixes_and_open_members(tmp_path, tree):
    sar = tmp_path / "x.sar"
    manifest = _manifest("files/core/1", "files/core/10", "db/core.pgdump")
    with archive.ArchiveWriter(str(sar), compression="gzip") as writer:
        writer.add_manifest(manifest)
        writer.add_tree("files/core/1", str(tree / "sub" / "deeper"))
        writer.add_tree("files/core/10", str(tree / "empty-dir"))
        writer.add_bytes("db/core.pgdump", b"dump")
    dest = tmp_path / "out"
    dest.mkdir()
    done = archive.extract(str(sar), str(dest), select=["files/core/1", "manifest.json", "checksums.sha256"])
    assert done == ["manifest.json", "files/core/1", "files/core/1/space name.wav", "checksums.sha256"]
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    assert b"  files/core/1/space name.wav\n" in (dest / "checksums.sha256").read_bytes()
    assert not (dest / "files" / "core" / "10").exists() and not (dest / "db").exists()
    assert oct(stat.S_IMODE(os.stat(str(dest / "files" / "core" / "1")).st_mode)) == oct(0o750)

    seen = []
    with archive.open_members(str(sar)) as members:
        for info, handle in members:
            seen.append((info.name, hashlib.sha256(handle.read()).hexdigest() if handle else None))
    assert seen[0][0] == "manifest.json"
    assert ("db/core.pgdump", hashlib.sha256(b"dump").hexdigest()) in seen
    assert ("files/core/10", None) in seen


# ---------------------------------------------------------------- writer behaviour

def test_writer_rules(tmp_path, tree):
    sar = tmp_path / "x.sar"
    writer = archive.ArchiveWriter(str(sar))
    with pytest.raises(ValueError, match="first"):
        writer.add_bytes("x", b"1")
    with pytest.raises(ValueError, match="manifest.json: field format is missing"):
        writer.add_manifest({})
    writer.add_manifest(MANIFEST)
    with pytest.raises(ValueError, match="first"):
        writer.add_manifest(MANIFEST)
    with pytest.raises(ValueError, match="belongs to no source"):
        writer.add_bytes("files/cdr_voicemail/0/x", b"1")
    for bad in ("../x", "/etc/x", "a/../../b", "a/./b", "a//b", "manifest.json", "checksums.sha256", "signature.ed25519"):
        with pytest.raises(ValueError):
            writer.add_bytes(bad, b"1")
    with pytest.raises(SourceError, match="not a directory"):
        writer.add_tree("files/x/0", str(tree / "a.txt"))
    with pytest.raises(SourceError, match="cannot read"):
        writer.add_file("db/x", str(tmp_path / "missing"))
    writer.abort()
    assert not sar.exists()
    writer.abort()  # twice is harmless


def test_abort_after_close_keeps_the_archive(tmp_path):
    sar = tmp_path / "x.sar"
    writer = archive.ArchiveWriter(str(sar), compression="gzip")
    writer.add_manifest(_manifest())
    info = writer.close()
    writer.abort()
    assert sar.exists() and writer.close() == info
    with pytest.raises(ValueError):
        writer.add_bytes("late", b"x")


def test_exception_in_with_removes_partial_file(tmp_path):
    sar = tmp_path / "x.sar"
    with pytest.raises(RuntimeError):
        with archive.ArchiveWriter(str(sar)) as writer:
            writer.add_manifest(_manifest("db/core.pgdump"))
            writer.add_bytes("db/core.pgdump", b"x" * 100000)
            raise RuntimeError("boom")
    assert not sar.exists()


def test_file_shrinking_while_read_is_a_source_error(tmp_path):
    src = tmp_path / "growing.log"
    src.write_bytes(os.urandom(3 * archive.COPY_CHUNK))

    def shrink(_done):
        with open(str(src), "r+b") as handle:
            handle.truncate(archive.COPY_CHUNK)

    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    writer.add_manifest(_manifest("db/core.pgdump"))
    with pytest.raises(SourceError, match="growing.log shrank"):
        writer.add_file("db/core.pgdump", str(src), progress=shrink)
    writer.abort()


def test_file_growing_while_read_keeps_the_stat_size(tmp_path):
    src = tmp_path / "growing.log"
    original = os.urandom(2 * archive.COPY_CHUNK + 5)
    src.write_bytes(original)
    calls = []

    def grow(done):
        calls.append(done)
        with open(str(src), "ab") as handle:
            handle.write(b"more" * 1000)

    sar = tmp_path / "x.sar"
    with archive.ArchiveWriter(str(sar)) as writer:
        writer.add_manifest(_manifest("db/core.pgdump", sizes={"db/core.pgdump": len(original)}))
        assert writer.add_file("db/core.pgdump", str(src), progress=grow) == len(original)
    assert sum(calls) == len(original)
    dest = tmp_path / "out"
    dest.mkdir()
    archive.extract(str(sar), str(dest))
    assert (dest / "db" / "core.pgdump").read_bytes() == original


# ---------------------------------------------------------------- damage

@pytest.mark.parametrize("compression,encrypted", [("zstd", False), ("gzip", False), ("zstd", True)])
def test_bit_flip_detected_and_nothing_extracted(tmp_path, tree, compression, encrypted):
    sar = tmp_path / "x.sar"
    encryption = {"passphrase": PASSPHRASE, "recipients": None} if encrypted else None
    keys = {"passphrase": PASSPHRASE} if encrypted else {}
    _build(sar, tree, compression, encryption)
    data = bytearray(sar.read_bytes())
    for pos in (len(data) // 2, len(data) // 3, len(data) - 20):
        damaged = bytearray(data)
        damaged[pos] ^= 0x04
        bad = tmp_path / "bad.sar"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(ArchiveError, match="corrupt|truncated"):
            archive.verify(str(bad), **keys)
        dest = tmp_path / ("out%d" % pos)
        dest.mkdir()
        with pytest.raises(ArchiveError):
            archive.extract(str(bad), str(dest), **keys)
        assert os.listdir(str(dest)) == []


@pytest.mark.parametrize("compression,encrypted", [("zstd", False), ("gzip", False), ("zstd", True), ("gzip", True)])
def test_truncation_detected_at_many_offsets(tmp_path, tree, compression, encrypted):
    sar = tmp_path / "x.sar"
    encryption = {"passphrase": PASSPHRASE, "recipients": None} if encrypted else None
    keys = {"passphrase": PASSPHRASE} if encrypted else {}
    _build(sar, tree, compression, encryption)
    data = sar.read_bytes()
    size = len(data)
    for cut in sorted({3, 30, 200, 5000, size // 4, size // 2, size - 1000, size - 17, size - 4, size - 1}):
        bad = tmp_path / "cut.sar"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArchiveError, match="truncated|corrupt|not a .sar|not an age"):
            archive.verify(str(bad), **keys)
        dest = tmp_path / ("out%d" % cut)
        dest.mkdir()
        with pytest.raises(ArchiveError):
            archive.extract(str(bad), str(dest), **keys)
        assert os.listdir(str(dest)) == []


def test_zstd_truncated_only_in_its_epilogue(tmp_path, tree):
    """zstandard's reader ends quietly when the checksum is cut off; the frame tracker does not."""
    sar = tmp_path / "x.sar"
    _build(sar, tree)
    data = sar.read_bytes()
    for cut in (1, 2, 4):
        (tmp_path / "cut.sar").write_bytes(data[:-cut])
        with pytest.raises(ArchiveError, match="truncated"):
            archive.verify(str(tmp_path / "cut.sar"))
    (tmp_path / "more.sar").write_bytes(data + b"garbage!")
    with pytest.raises(ArchiveError):
        archive.verify(str(tmp_path / "more.sar"))


def test_wrong_keys_refused(tmp_path, tree, keypair):
    sar = tmp_path / "x.sar"
    _build(sar, tree, encryption={"passphrase": PASSPHRASE, "recipients": None})
    with pytest.raises(ArchiveError, match="wrong passphrase"):
        archive.verify(str(sar), passphrase="not the passphrase")
    with pytest.raises(ArchiveError, match="encrypted: give its passphrase"):
        archive.read_manifest(str(sar))
    sar2 = tmp_path / "y.sar"
    _build(sar2, tree, encryption={"passphrase": None, "recipients": [keypair[1]]})
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="not encrypted to this identity"):
        archive.extract(str(sar2), str(dest), identities=[agecrypt.generate_identity()[0]])
    assert os.listdir(str(dest)) == []


def test_not_a_sar(tmp_path):
    junk = tmp_path / "junk.sar"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ArchiveError, match="not a .sar archive"):
        archive.verify(str(junk))
    plain_tar = tmp_path / "plain.sar"
    with tarfile.open(str(plain_tar), "w") as tar:
        tar.add(str(junk), arcname="junk")
    with pytest.raises(ArchiveError, match="not a .sar archive"):
        archive.verify(str(plain_tar))
    with pytest.raises(ArchiveError, match="cannot open"):
        archive.verify(str(tmp_path / "missing.sar"))


# ---------------------------------------------------------------- hand-made archives

def _member(name, data=None, **attrs):
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


TREE_MANIFEST = _manifest("files/core/0")
TREE_MANIFEST_BYTES = json.dumps(TREE_MANIFEST).encode()
TREE = [_member("files/core/0", type=tarfile.DIRTYPE, mode=0o755)]


def _handmade(path, members, manifest=True, checksums=True, sums=None, compression="zstd"):
    """A .sar built without archive.py, so any structure (and any attack) can be expressed.
    manifest=True: TREE_MANIFEST (one tree, files/core/0: the members give its directory, TREE)."""
    buf = io.BytesIO()
    listed = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = ([_member("manifest.json", TREE_MANIFEST_BYTES)] if manifest else []) + list(members)
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                listed.append((info.name, hashlib.sha256(data).hexdigest()))
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if checksums:
            text = "".join(archive.checksum_line(d, n) for n, d in (sums if sums is not None else listed)).encode()
            info = tarfile.TarInfo("checksums.sha256")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    raw = buf.getvalue()
    if compression == "zstd":
        raw = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    else:
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return str(path)


T = "files/core/0/"  # inside the hand-made archives' tree
EVIL = {
    "dotdot": [_member("../x", b"evil")],
    "dotdot-inside": [_member(T + "a/../../../x", b"evil")],
    "absolute": [_member("/etc/x", b"evil")],
    "symlink-absolute": [_member(T + "passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd")],
    "symlink-up": [_member(T + "up", type=tarfile.SYMTYPE, linkname="../../x")],
    # y/x -> .. is harmless alone; z -> y/x/.. then climbs above the root through it.
    "symlink-chain": [_member(T + "y", type=tarfile.DIRTYPE), _member(T + "y/x", type=tarfile.SYMTYPE, linkname=".."),
                      _member(T + "z", type=tarfile.SYMTYPE, linkname="y/x/..")],
    # Safe when added (b was no link yet); a later link b -> . makes a climb above the root.
    "symlink-late": [_member(T + "a", type=tarfile.SYMTYPE, linkname="b/.."),
                     _member(T + "b", type=tarfile.SYMTYPE, linkname=".")],
    # The classic: a harmless-looking link, then a file written through it.
    "through-symlink": [_member(T + "d", type=tarfile.SYMTYPE, linkname="."), _member(T + "d/f", b"evil")],
    "hardlink-up": [_member(T + "h", type=tarfile.LNKTYPE, linkname="../x")],
    "hardlink-absolute": [_member(T + "h", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
    "chardev": [_member(T + "null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)],
    "blockdev": [_member(T + "sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0)],
    "fifo": [_member(T + "pipe", type=tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_unsafe_members_refused_and_nothing_written(tmp_path, case):
    # A harmless member first: it must not be written either.
    sar = _handmade(tmp_path / "evil.sar", TREE + [_member(T + "ok.txt", b"fine")] + EVIL[case])
    with pytest.raises(ArchiveError, match="unsafe archive member"):
        archive.verify(sar)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="unsafe archive member"):
        archive.extract(sar, str(dest))
    assert os.listdir(str(dest)) == []
    assert not (tmp_path / "x").exists()


def test_safe_links_are_extracted(tmp_path):
    sar = _handmade(tmp_path / "ok.sar", TREE + [
        _member(T + "a", b"data", mode=0o644),
        _member(T + "rel", type=tarfile.SYMTYPE, linkname="a"),
        _member(T + "sub", type=tarfile.DIRTYPE, mode=0o700),
        _member(T + "sub/up", type=tarfile.SYMTYPE, linkname="../a"),
        _member(T + "hard", type=tarfile.LNKTYPE, linkname=T + "a")])
    archive.verify(sar)
    dest = tmp_path / "dest"
    dest.mkdir()
    archive.extract(sar, str(dest))
    files = dest / "files" / "core" / "0"
    assert (files / "sub" / "up").read_bytes() == b"data"
    assert os.readlink(str(files / "rel")) == "a"
    assert os.stat(str(files / "hard")).st_ino == os.stat(str(files / "a")).st_ino


def test_symlink_in_destination_is_not_followed(tmp_path):
    sar = _handmade(tmp_path / "ok.sar", TREE + [_member(T + "a", b"data")])
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "files").symlink_to(str(outside))
    with pytest.raises(ArchiveError, match="not a directory"):
        archive.extract(sar, str(dest))
    assert os.listdir(str(outside)) == []


@pytest.mark.parametrize("kind,pattern", [
    ("no-manifest", "first member"),
    ("no-checksums", "ends before checksums.sha256"),
    ("after-checksums", "follows checksums.sha256"),
    ("unlisted", "missing from checksums.sha256"),
    ("listed-not-present", "listed in checksums.sha256 but not in the archive"),
    ("wrong-digest", "does not match"),
    ("bad-manifest", "not a JSON object"),
])
def test_structure_violations(tmp_path, kind, pattern):
    path = tmp_path / "s.sar"
    good = TREE + [_member(T + "a", b"data")]
    manifest_sum = hashlib.sha256(TREE_MANIFEST_BYTES).hexdigest()
    if kind == "no-manifest":
        sar = _handmade(path, good, manifest=False)
    elif kind == "no-checksums":
        sar = _handmade(path, good, checksums=False)
    elif kind == "unlisted":
        sar = _handmade(path, good, sums=[("manifest.json", manifest_sum)])
    elif kind == "listed-not-present":
        sar = _handmade(path, good, sums=[("manifest.json", manifest_sum),
                                          (T + "a", hashlib.sha256(b"data").hexdigest()), (T + "b", "0" * 64)])
    elif kind == "wrong-digest":
        sar = _handmade(path, good, sums=[("manifest.json", manifest_sum),
                                          (T + "a", hashlib.sha256(b"DATA").hexdigest())])
    elif kind == "bad-manifest":
        sar = _handmade(path, [_member("manifest.json", b"[1, 2]")], manifest=False)
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in (("manifest.json", TREE_MANIFEST_BYTES), ("checksums.sha256", b""), (T + "late", b"x")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        path.write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
        sar = str(path)
    with pytest.raises(ArchiveError, match=pattern):
        archive.verify(sar)


# ---------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    from ansible_collections.sar.backup.plugins.module_utils import agecrypt, archive
    agecrypt.SCRYPT_LOG_N = 10
    work, phase = sys.argv[1], sys.argv[2]
    enc = {"passphrase": "passphrase!", "recipients": None}

    def manifest(size):
        return {"format": 2, "job": "big", "host": "pbx", "created": "2024-05-01T02:00:00+00:00", "categories": ["core"],
                "compression": "zstd", "encrypted": True, "encryption": "passphrase", "tool": "test",
                "sources": [{"category": "core", "kind": "postgresql", "origin": "db", "member": "db/core.pgdump",
                             "size": size, "files": 1}]}
    src, sar, small = (os.path.join(work, n) for n in ("big.bin", "big.sar", "small.sar"))

    def peak():
        # VmHWM: this process's own high-water mark. ru_maxrss also carries the parent's
        # across fork+exec, which would hide growth below the size of the test runner.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # Warm up every layer on a small archive so that library code and tables count as baseline.
    with archive.ArchiveWriter(small, compression="zstd", encryption=enc) as writer:
        writer.add_manifest(manifest(1000))
        writer.add_bytes("db/core.pgdump", b"x" * 1000)
    archive.verify(small, passphrase="passphrase!")
    if phase == "write":
        with open(src, "wb") as handle:
            for _ in range(80):
                handle.write(os.urandom(1024 * 1024))
            handle.write(bytes(16 * 1024 * 1024))  # zeros: a tiny input expanding to a lot of output when read
        base = peak()
        with archive.ArchiveWriter(sar, compression="zstd", encryption=enc) as writer:
            writer.add_manifest(manifest(96 * 1024 * 1024))
            writer.add_file("db/core.pgdump", src)
    else:
        base = peak()
        info = archive.verify(sar, passphrase="passphrase!")
        assert info["members"][1]["size"] == 96 * 1024 * 1024
        dest = os.path.join(work, "out")
        os.mkdir(dest)
        archive.extract(sar, dest, passphrase="passphrase!")
        assert os.path.getsize(os.path.join(dest, "db", "core.pgdump")) == 96 * 1024 * 1024
    print(base, peak())
""")


def _child_env() -> dict:
    """The child imports the collection the same way this process did (under
    ansible-test units the collection root is only on our sys.path)."""
    root = os.path.abspath(archive.__file__)
    for _level in range(6):  # .../ansible_collections/sar/backup/plugins/module_utils/archive.py
        root = os.path.dirname(root)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in sys.path if p]))


@pytest.mark.parametrize("threads", [None, 4])
def test_large_file_with_bounded_memory(tmp_path, threads):
    """Peak RSS growth while writing, then verifying and extracting, 96 MiB (more than the limit), each in a fresh process
    (the peak is a high-water mark, VmHWM: other tests must neither hide nor cause growth)."""
    prelude = "" if threads is None else (
        "import os; os.cpu_count = lambda: 16\n"  # as on a big machine: the thread cap must hold the memory
        "from ansible_collections.sar.backup.plugins.module_utils import archive; assert archive.ZSTD_MAX_THREADS == %d\n" % threads)
    limit = 64 * 1024 * 1024
    for phase in ("write", "read"):
        res = subprocess.run([sys.executable, "-c", prelude + MEMORY_SCRIPT, str(tmp_path), phase],
                             capture_output=True, text=True, check=False, env=_child_env())
        assert res.returncode == 0, res.stderr
        base, peak = (int(x) for x in res.stdout.split())
        assert peak - base < limit, "%s grew peak RSS by %d MiB" % (phase, (peak - base) >> 20)
    shutil.rmtree(str(tmp_path / "out"))


# ---------------------------------------------------------------- links out of a tree, routed extraction

def test_links_leaving_their_tree_go_to_the_links_member(tmp_path, tree):
    (tree / "moh").symlink_to("/usr/share/asterisk/moh")
    (tree / "sub" / "out").symlink_to("../../elsewhere")
    (tree / "sub" / "zchain").symlink_to("link/../..")  # through sub/link (-> ../a.txt): leaves the tree
    path = tmp_path / "x.sar"
    _info, stats = _build(path, tree)
    assert sorted(e["path"] for e in stats["external_links"]) == ["moh", "sub/out", "sub/zchain"]
    assert stats["symlinks"] == 1  # sub/link stays an ordinary member
    scanned = archive.scan(str(path))  # the archive verifies: nothing in the tar leaves its tree
    names = [m["name"] for m in scanned["members"]]
    assert "files/core/0/moh" not in names and "files/core/0/sub/link" in names
    assert names.index("files/core/0.links.json") == len(names) - 2  # right after its tree, before the checksums
    shown = subprocess.run(["bash", "-c", "zstd -dc %s | tar -xO files/core/0.links.json" % path],
                           capture_output=True, check=True).stdout  # standard tools read it
    links = json.loads(shown)
    expected = {"moh": "/usr/share/asterisk/moh", "sub/out": "../../elsewhere", "sub/zchain": "link/../.."}
    assert {e["path"]: e["target"] for e in links} == expected


def test_tree_without_outside_links_has_no_links_member(tmp_path, tree):
    path = tmp_path / "x.sar"
    _info, stats = _build(path, tree)
    assert stats["external_links"] == []
    assert not [m for m in archive.verify(str(path))["members"] if m["name"].endswith(archive.LINKS_SUFFIX)]


def test_extract_routed_sends_each_member_to_its_place(tmp_path, tree):
    path = tmp_path / "x.sar"
    _build(path, tree)
    dest = tmp_path / "restored-tree"
    dest.mkdir()
    dump = tmp_path / "restored.pgdump"
    stats = archive.extract_routed(str(path), {"files/core/0": str(dest), "db/core.pgdump": str(dump)})
    _compare_tree(tree, dest)
    assert dump.read_bytes() == (tmp_path / "core.pgdump").read_bytes()
    assert stats["db/core.pgdump"] == {"files": 1, "bytes": dump.stat().st_size}
    assert stats["files/core/0"]["files"] == 4
    # The tree's own directory takes the archived mode and time.
    assert stat.S_IMODE(dest.stat().st_mode) == stat.S_IMODE(tree.stat().st_mode)


def test_extract_routed_verifies_first_and_writes_nothing_when_damaged(tmp_path, tree):
    path = tmp_path / "x.sar"
    _build(path, tree)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(ArchiveError):
        archive.extract_routed(str(path), {"files/core/0": str(dest), "db/core.pgdump": str(tmp_path / "dump")})
    assert os.listdir(str(dest)) == [] and not (tmp_path / "dump").exists()


def test_names_and_manifest_belong_to_the_format(tmp_path):
    """archive.py names archives and writes the manifest; what it writes its readers accept, and an
    encryption option is recorded by kind only (never its secret)."""
    import datetime  # pylint: disable=import-outside-toplevel
    moment = datetime.datetime(2026, 3, 29, 0, 30, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    name = archive.archive_name("nightly", "pbx-1", moment)
    assert name == "nightly_pbx-1_20260328T223005Z.sar"
    assert archive.ARCHIVE_NAME_RE.match(name) and archive.archive_pattern("nightly").match(name)
    assert not archive.archive_pattern("night").match(name)
    partial = archive.partial_name(name)
    assert partial == ".nightly_pbx-1_20260328T223005Z.sar.partial" and not partial.endswith(".sar")
    assert archive.partial_pattern("nightly").match(partial) and not archive.partial_pattern("nightly").match(name)
    manifest = archive.new_manifest(job="nightly", host="pbx-1", created="2026-03-29T00:30:05+02:00",
                                    categories=["core"], compression="zstd",
                                    encryption={"passphrase": "very secret words"},
                                    sources=[{"category": "core", "kind": "files", "origin": "/srv/core",
                                              "member": "files/core/0", "size": 1, "files": 1}], tool="sar-backup t")
    assert manifest["format"] == archive.FORMAT_VERSION and manifest["encryption"] == "passphrase"
    assert "very secret words" not in json.dumps(manifest)
    archive.validate_manifest(manifest)
    future = dict(manifest, format=archive.FORMAT_VERSION + 1)
    with pytest.raises(ArchiveError, match="format"):
        archive.validate_manifest(future)
