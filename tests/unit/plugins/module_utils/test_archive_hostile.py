# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""archive.py against archives an attacker crafted (valid checksums, valid compression): bounded
memory and work, one set of structural rules for every reader, verify says what restore says,
signatures; and a seeded fuzz: every input ends in a result or an ArchiveError, nothing else."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import textwrap

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ansible_collections.sar.backup.plugins.module_utils import archive, signing
from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError, SourceError

MTIME = 1700000000
T0 = "files/core/0"
T1 = "files/core/1"


def _manifest(*members, sizes=None, fmt=2) -> dict:
    """A valid manifest whose sources are `members` (db/<cat>.pgdump or files/<cat>/<index>)."""
    sources = []
    for member in members:
        cat = member.split("/")[1].split(".")[0]
        kind = "postgresql" if member.startswith("db/") else "files"
        origin = "postgresql://sar@/run/postgresql:5432/pbx" if kind == "postgresql" else "/srv/" + member
        sources.append({"category": cat, "kind": kind, "origin": origin, "member": member,
                        "size": (sizes or {}).get(member), "files": None})
    cats = [c for c in ("core", "cdr_voicemail", "announcements") if c in {s["category"] for s in sources}] or ["core"]
    return {"format": fmt, "job": "nightly", "host": "pbx", "created": "2024-05-01T02:00:00+00:00", "categories": cats,
            "sources": sources, "compression": "zstd", "encrypted": False, "encryption": None, "tool": "sar-backup test"}


def _m(name, data=None, **attrs) -> tuple:
    info = tarfile.TarInfo(name)
    info.mtime = MTIME
    if data is None and "type" not in attrs:
        attrs["type"] = tarfile.DIRTYPE
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
    return info, data


def _sym(name, target):
    return _m(name, type=tarfile.SYMTYPE, linkname=target)


def _tar(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _entries(manifest, members, after=(), sums=True) -> list:
    """manifest.json, `members`, checksums.sha256 listing their regular files (valid), then `after`."""
    first = [_m("manifest.json", manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())]
    entries = first + list(members)
    if sums:
        text = "".join(archive.checksum_line(hashlib.sha256(data).hexdigest(), info.name)
                       for info, data in entries if data is not None and info.isreg()).encode("utf-8", "surrogateescape")
        entries.append(_m("checksums.sha256", text))
    return entries + list(after)


def _write(path, tar_bytes: bytes, compression="zstd") -> str:
    if compression == "zstd":
        path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(tar_bytes))
    else:
        import gzip  # pylint: disable=import-outside-toplevel
        path.write_bytes(gzip.compress(tar_bytes))
    return str(path)


def _sar(path, manifest, members, after=(), **kwargs) -> str:
    return _write(path, _tar(_entries(manifest, members, after, **kwargs)))


def _raw(entries) -> bytes:
    """Tar members without the end-of-archive blocks (to put hand-made headers after them)."""
    out = b""
    for info, data in entries:
        out += info.tobuf(tarfile.PAX_FORMAT)
        if data:
            out += data + b"\0" * (-len(data) % 512)
    return out


TREE0 = [_m(T0, mode=0o755), _m(T0 + "/a", b"alpha"), _m(T0 + "/sub"), _m(T0 + "/sub/b", b"beta")]
TREE1 = [_m(T1, mode=0o755), _m(T1 + "/c", b"gamma")]
TWO_TREES = _manifest(T0, T1)


def _refused(path, pattern):
    with pytest.raises(ArchiveError, match=pattern):
        archive.verify(path)


def _child_env() -> dict:
    root = os.path.abspath(archive.__file__)
    for _level in range(6):  # .../ansible_collections/sar/backup/plugins/module_utils/archive.py
        root = os.path.dirname(root)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in sys.path if p]))


PEAK_SCRIPT = textwrap.dedent("""
    import sys
    from ansible_collections.sar.backup.plugins.module_utils import archive
    from ansible_collections.sar.backup.plugins.module_utils.errors import ArchiveError

    def peak():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    try:
        archive.verify(sys.argv[1])
        outcome = "accepted"
    except ArchiveError as exc:
        outcome = "refused: %s" % exc
    print(peak())
    print(outcome)
""")


def _verify_in_child(path) -> tuple:
    """(peak memory of a fresh process verifying `path`, outcome)."""
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                         check=False, env=_child_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    peak, outcome = res.stdout.split("\n", 1)
    return int(peak), outcome.strip()


def _zstd_frames(path, parts) -> str:
    """A zstd file of one frame per part; a part (chunk, n) is n copies of the frame of chunk: a huge
    stream built (and compressed) in no time."""
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)
    with open(str(path), "wb") as raw:
        for part in parts:
            chunk, count = part if isinstance(part, tuple) else (part, 1)
            frame = cctx.compress(chunk)
            for _copy in range(count):
                raw.write(frame)
    return str(path)


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = MTIME
    return info.tobuf(tarfile.USTAR_FORMAT)


# ---------------------------------------------------------------- bounded memory and work

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024


def test_pax_header_bomb_refused_with_bounded_memory(tmp_path):
    """A 1 GiB pax header (declared and present, compressing to ~100 KiB) in front of a member: refused
    before tarfile reads it; the process verifying it stays far below 100 MB."""
    head = _raw([_m("manifest.json", json.dumps(_manifest(T0)).encode())])
    record = b"%d comment=" % GIB  # one pax record of 1 GiB: 1024 chunks of 1 MiB
    first = head + _header("././@PaxHeader", tarfile.XHDTYPE, GIB) + record + b"a" * (MIB - len(record))
    last = b"a" * (MIB - 1) + b"\n" + _tar([_m(T0)])
    path = _zstd_frames(tmp_path / "pax.sar", [first, (b"a" * MIB, 1022), last])
    assert os.path.getsize(path) < 1024 * 1024
    peak, outcome = _verify_in_child(path)
    assert "pax extended header of 1073741824 bytes" in outcome
    assert peak < 100 * 1024 * 1024, "verify peaked at %d MiB" % (peak >> 20)


def test_gnu_long_name_bomb_refused(tmp_path):
    head = _raw([_m("manifest.json", json.dumps(_manifest(T0)).encode())])
    size = 64 * MIB
    parts = [head + _header("././@LongLink", tarfile.GNUTYPE_LONGNAME, size), (b"a" * MIB, 64), _tar([_m(T0)])]
    path = _zstd_frames(tmp_path / "long.sar", parts)
    _refused(path, "GNU long name header of 67108864 bytes")


@pytest.mark.parametrize("case,pattern", [
    ("global", "global or Solaris pax headers"),
    ("chain", "more than 3 extended tar headers"),
    ("sparse", "is a sparse file"),
    ("digits", "corrupted"),
])
def test_other_extended_header_tricks_refused(tmp_path, case, pattern):
    head = _raw([_m("manifest.json", json.dumps(_manifest(T0)).encode())])

    def pax(records: bytes, kind=tarfile.XHDTYPE) -> bytes:
        return _header("././@PaxHeader", kind, len(records)) + records + b"\0" * (-len(records) % 512)

    rec = b"20 comment=aaaaaaaa\n"
    if case == "global":
        body = pax(rec, tarfile.XGLTYPE)
    elif case == "chain":
        body = pax(rec) * 5
    elif case == "sparse":
        body = pax(b"22 GNU.sparse.major=1\n22 GNU.sparse.minor=0\n")
    else:  # a record length tarfile's int() refuses (more than 4300 digits)
        body = pax(b"9" * 5000 + b" comment=x\n")
    path = _write(tmp_path / "x.sar", head + body + _tar(TREE0))
    _refused(path, pattern)


def test_zstd_window_bomb_refused_with_bounded_memory(tmp_path):
    """A frame whose header asks for a 128 MiB window (the zstd library's default limit) is refused
    before the decompressor allocates it."""
    tar = _tar(_entries(_manifest(T0), TREE0))
    params = zstandard.ZstdCompressionParameters(window_log=10, write_checksum=1)
    # One frame, streamed: no content size, so its header carries a window descriptor.
    raw = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(raw, closefd=False) as out:
        out.write(tar)
    frame = bytearray(raw.getvalue())
    assert frame[:4] == archive.ZSTD_MAGIC and not frame[4] & 0x20  # not single-segment: byte 5 is the window
    path = tmp_path / "window.sar"
    path.write_bytes(bytes(frame))
    archive.verify(str(path))  # the archive itself is fine
    frame[5] = (27 - 10) << 3  # Window_Descriptor: 2^27 bytes
    path.write_bytes(bytes(frame))
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bytes(frame))).read() == tar  # others decode it
    peak, outcome = _verify_in_child(path)
    assert outcome.startswith("refused") and "corrupted" in outcome, outcome
    assert peak < 100 * 1024 * 1024, "verify peaked at %d MiB" % (peak >> 20)


def test_long_zero_tail_refused_early(tmp_path):
    """Zeros after the end of the tar stream are end-of-archive padding only up to a few records:
    a gigabyte of them is refused after reading MAX_TAIL, not decompressed to the end."""
    tar = _tar(_entries(_manifest(T0), TREE0))
    path = _zstd_frames(tmp_path / "tail.sar", [tar, (bytes(MIB), 1024)])
    _refused(path, "more than 65536 bytes after the end of the tar stream")
    # A few padding records are fine (GNU tar pads to 10 KiB records).
    ok = _write(tmp_path / "ok.sar", tar + b"\0" * (4 * tarfile.RECORDSIZE))
    archive.verify(ok)
    bad = _write(tmp_path / "junk.sar", tar + b"\0" * 1000 + b"x")
    _refused(bad, "unexpected data after the end of the tar stream")


def test_decompression_bomb_stops_at_the_declared_size(tmp_path):
    """A dump declared as 10 bytes holding 80 MiB (of zeros: compresses to nothing): refused at its header,
    before its data is decompressed."""
    manifest = _manifest("db/core.pgdump", sizes={"db/core.pgdump": 10})
    info = tarfile.TarInfo("db/core.pgdump")
    info.size = 80 * MIB
    head = _raw([_m("manifest.json", json.dumps(manifest).encode())])
    path = _zstd_frames(tmp_path / "bomb.sar", [head + info.tobuf(tarfile.PAX_FORMAT), (bytes(MIB), 80)])
    with pytest.raises(ArchiveError, match=r"sources\[0\] \(db/core.pgdump\) hold more than 67108875 bytes"):
        archive.verify(path)
    # Within the slack (files grow between measuring and archiving) it is accepted.
    grown = _sar(tmp_path / "grown.sar", manifest, [_m("db/core.pgdump", b"x" * 5000)])
    assert archive.verify(grown)["members"][1]["size"] == 5000


def test_writer_refuses_a_source_grown_beyond_the_slack(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "SIZE_SLACK_BYTES", 1000)
    big = tmp_path / "dump"
    big.write_bytes(b"x" * 2000)
    writer = archive.ArchiveWriter(str(tmp_path / "x.sar"))
    writer.add_manifest(_manifest("db/core.pgdump", sizes={"db/core.pgdump": 100}))
    with pytest.raises(SourceError, match="grew to more than 1110 bytes"):
        writer.add_file("db/core.pgdump", str(big))
    writer.abort()


def test_checksums_member_larger_than_its_members_need_is_refused_unread(tmp_path):
    entries = _entries(_manifest(T0), TREE0, sums=False)
    entries.append(_m("checksums.sha256", b"0" * (2 * 1024 * 1024)))
    _refused(_write(tmp_path / "x.sar", _tar(entries)), "checksums.sha256 has 2097152 bytes, far more than")


def test_member_count_and_name_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "MAX_MEMBERS", 6)
    many = TREE0 + [_m(T0 + "/f%d" % i, b"x") for i in range(4)]
    _refused(_sar(tmp_path / "many.sar", _manifest(T0), many), "more than 6 members")
    writer = archive.ArchiveWriter(str(tmp_path / "w.sar"))
    writer.add_manifest(_manifest("db/core.pgdump"))
    writer.add_bytes("db/core.pgdump", b"x")
    writer.close()  # manifest, dump, checksums: fine
    monkeypatch.setattr(archive, "MAX_MEMBERS", 100000)
    for name in (T0 + "/" + "n" * 256, T0 + "/a/./b", T0 + "//b", T0 + "/" + "d/" * 4200 + "x"):
        path = _sar(tmp_path / "n.sar", _manifest(T0), [_m(T0), _m(name, b"x")])
        _refused(path, "unsafe archive member")
    path = _sar(tmp_path / "l.sar", _manifest(T0), [_m(T0), _sym(T0 + "/l", "x/" * 2048)])
    _refused(path, "symlink target is longer than 4095 bytes")


def test_depth_cap_read_and_written_alike(tmp_path, monkeypatch):
    """PATH_MAX allows 2048 levels ("d/d/..."): every level costs extraction, verification and removal a
    walk, so a member more than archive.MAX_DEPTH levels deep is refused by the reader and the writer."""
    deep = T0 + "/" + "/".join(["d"] * (archive.MAX_DEPTH - 3))
    assert archive.path_problem(deep) is None  # 256 components: at the cap
    path = _sar(tmp_path / "deep.sar", _manifest(T0), [_m(T0), _m(deep + "/f", b"x")])
    _refused(path, r"its name is more than 256 directories deep")
    monkeypatch.setattr(archive, "MAX_DEPTH", 6)
    tree = tmp_path / "tree"
    (tree / "a" / "b" / "c").mkdir(parents=True)
    (tree / "a" / "b" / "ok").write_bytes(b"x")  # files/core/0/a/b/ok: 6 levels
    writer = archive.ArchiveWriter(str(tmp_path / "w.sar"))
    writer.add_manifest(_manifest(T0))
    writer.add_tree(T0, str(tree))  # files/core/0/a/b/c is 6 levels: fine
    writer.abort()
    (tree / "a" / "b" / "c" / "too-deep").write_bytes(b"x")
    writer = archive.ArchiveWriter(str(tmp_path / "w2.sar"))
    writer.add_manifest(_manifest(T0))
    with pytest.raises(SourceError, match="too-deep'.*more than 6 directories deep"):
        writer.add_tree(T0, str(tree))
    writer.abort()
    assert not os.path.exists(str(tmp_path / "w2.sar"))


@pytest.mark.parametrize("field,value", [("mtime", float("inf")), ("mtime", 2 ** 50), ("uid", 2 ** 40),
                                         ("gid", -5), ("uname", "x" * 300)])
def test_implausible_member_metadata_refused(tmp_path, field, value):
    info, data = _m(T0 + "/a", b"x")
    if field in ("uid", "gid", "mtime"):
        info.pax_headers = {field: str(value)}
    else:
        setattr(info, field, value)
    _refused(_sar(tmp_path / "x.sar", _manifest(T0), [_m(T0), (info, data)]), "implausible")


# ---------------------------------------------------------------- structure: every member in its place

def test_symlink_across_trees_refused(tmp_path):
    """Each tree is extracted to a different place: a link from one tree into another resolves elsewhere."""
    for target in ("../0/a", "../../core/0/a", "../0"):
        path = _sar(tmp_path / "x.sar", TWO_TREES, TREE0 + TREE1 + [_sym(T1 + "/x", target)])
        _refused(path, r"symlink to .* leaves its tree files/core/1")
    # Through a link of its own tree that is fine by itself.
    path = _sar(tmp_path / "y.sar", TWO_TREES, TREE0 + TREE1 + [_sym(T1 + "/up", "."), _sym(T1 + "/x", "up/../../0/a")])
    _refused(path, "leaves its tree")
    inside = _sar(tmp_path / "z.sar", TWO_TREES, TREE0 + TREE1 + [_sym(T0 + "/sub/l", "../a"), _sym(T1 + "/l", "c")])
    assert archive.verify(inside)["members"][-2]["type"] == "symlink"


def test_hardlink_across_trees_refused(tmp_path):
    path = _sar(tmp_path / "x.sar", TWO_TREES, TREE0 + TREE1 + [_m(T1 + "/h", type=tarfile.LNKTYPE, linkname=T0 + "/a")])
    _refused(path, "hardlink to 'files/core/0/a', which is not an earlier regular file of the same tree")
    path = _sar(tmp_path / "y.sar", TWO_TREES, TREE0 + [_m(T0 + "/h", type=tarfile.LNKTYPE, linkname=T0 + "/sub")] + TREE1)
    _refused(path, "not an earlier regular file")
    ok = _sar(tmp_path / "z.sar", TWO_TREES, TREE0 + [_m(T0 + "/h", type=tarfile.LNKTYPE, linkname=T0 + "/a")] + TREE1)
    archive.verify(ok)


LINKS_CASES = {
    "dotdot": ([{"path": "../x", "target": "/etc"}], r"\[0\]\.path must be a relative path inside the tree"),
    "dotdot-inside": ([{"path": "sub/../../x", "target": "/etc"}], r"\[0\]\.path"),
    "absolute": ([{"path": "/etc/cron.d/x", "target": "/tmp"}], r"\[0\]\.path"),
    "nul-path": ([{"path": "a\0b", "target": "/x"}], r"\[0\]\.path"),
    "nul-target": ([{"path": "moh", "target": "/usr/\0share"}], r"\[0\]\.target"),
    "number-target": ([{"path": "moh", "target": 5}], r"\[0\]\.target must be a symlink target"),
    "empty-target": ([{"path": "moh", "target": ""}], r"\[0\]\.target"),
    "null-entry": ([None], r"field \[0\] must be an object"),
    "string": ("moh -> /usr/share/asterisk/moh", "must be a JSON list of links, got a string"),
    "object": ({"path": "moh", "target": "/x"}, "must be a JSON list"),
    "existing-member": ([{"path": "a", "target": "/x"}], r"\[0\]\.path names 'a', which the tree already holds"),
    "twice": ([{"path": "m", "target": "/x"}, {"path": "m", "target": "/y"}], r"\[1\]\.path names 'm'"),
    "parent-missing": ([{"path": "nodir/m", "target": "/x"}], r"must lie in a directory of the tree"),
    "parent-is-file": ([{"path": "a/m", "target": "/x"}], r"must lie in a directory of the tree"),
    "huge-mtime": ([{"path": "m", "target": "/x", "mtime": 10 ** 30}], r"\[0\]\.mtime"),
    "float-mtime": ([{"path": "m", "target": "/x", "mtime": 1.5}], r"\[0\]\.mtime"),
    "negative-uid": ([{"path": "m", "target": "/x", "uid": -1}], r"\[0\]\.uid"),
    "nul-owner": ([{"path": "m", "target": "/x", "owner": "ro\0ot"}], r"\[0\]\.owner"),
    "not-json": (b"[{", "is not valid JSON"),
    "deep": (b"[" * 100000 + b"]" * 100000, "is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(LINKS_CASES))
def test_hostile_links_members_refused(tmp_path, case):
    value, pattern = LINKS_CASES[case]
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    path = _sar(tmp_path / "x.sar", _manifest(T0), TREE0 + [_m(T0 + ".links.json", data)])
    with pytest.raises(ArchiveError, match="files/core/0.links.json"):
        archive.verify(path)
    _refused(path, pattern)
    # parse_links() itself, as restore calls it, says the same.
    entries = {T0: "dir", T0 + "/a": "file", T0 + "/sub": "dir", T0 + "/sub/b": "file"}
    with pytest.raises(ArchiveError, match=pattern):
        archive.parse_links(data, T0 + ".links.json", entries)


def test_links_member_parsed_by_the_scan(tmp_path):
    links = [{"path": "moh", "target": "/usr/share/asterisk/moh", "mtime": MTIME, "owner": "root", "group": None,
              "uid": 0, "gid": None, "future": [1, 2]}, {"path": "sub/up", "target": "../../elsewhere"}]
    path = _sar(tmp_path / "x.sar", _manifest(T0), TREE0 + [_m(T0 + ".links.json", json.dumps(links).encode())])
    scanned = archive.scan(path)
    expected = [{"path": "moh", "target": "/usr/share/asterisk/moh", "mtime": MTIME, "owner": "root", "group": None,
                 "uid": 0, "gid": None},
                {"path": "sub/up", "target": "../../elsewhere", "mtime": None, "owner": None, "group": None,
                 "uid": None, "gid": None}]
    assert scanned["links"] == {T0: expected}
    assert json.loads(json.dumps(scanned["links"])) == scanned["links"]  # plain JSON-able data
    types = {m["name"]: m["type"] for m in scanned["members"]}
    assert archive.parse_links(json.dumps(links).encode(), T0, types) == expected
    # Members of the tree after its links member: refused (restore recreates the links last).
    late = _sar(tmp_path / "y.sar", _manifest(T0), TREE0 + [_m(T0 + ".links.json", b"[]"), _m(T0 + "/late", b"x")])
    _refused(late, "must come after every member of its tree")


@pytest.mark.parametrize("member", ["manifest.json", "checksums.sha256", "signature.ed25519", "files/core/0/x",
                                    "db/core.dump", "files/core/01", "files/core/-1", "files/cdr_voicemail/0",
                                    "db/../core.pgdump", None, 7, ["files/core/0"]])
def test_manifest_listing_impossible_members_refused(tmp_path, member):
    manifest = _manifest(T0)
    manifest["sources"][0]["member"] = member
    path = _sar(tmp_path / "x.sar", manifest, TREE0)
    _refused(path, r"manifest.json: field sources\[0\]\.member must be 'files/core/<index>'")


@pytest.mark.parametrize("change,pattern", [
    (("format", 3), r"field format must be 1 or 2"),
    (("format", "2"), r"field format must be 1 or 2"),
    (("format", True), r"field format must be 1 or 2"),
    (("categories", "core"), r"field categories must be a non-empty list"),
    (("categories", [1]), r"field categories\[0\] must be one of"),
    (("categories", ["core", "core"]), r"field categories\[1\] repeats"),
    (("sources", "files/core/0"), r"field sources must be a list"),
    (("sources", [None]), r"field sources\[0\] must be an object, got null"),
    (("job", "../x"), r"field job must be a job name"),
    (("host", None), r"field host must be a non-empty one-line string"),
    (("created", 20240501), r"field created must be"),
    (("encrypted", "no"), r"field encrypted must be true or false"),
    (("encryption", "passphrase"), r"field encryption must be null when encrypted is false"),
    (("compression", "xz"), r"field compression must be one of"),
    (("tool", "a\nb"), r"field tool must be"),
])
def test_manifest_fields_checked(tmp_path, change, pattern):
    manifest = _manifest(T0)
    manifest[change[0]] = change[1]
    _refused(_sar(tmp_path / "x.sar", manifest, TREE0), pattern)
    with pytest.raises(ArchiveError, match=pattern):
        archive.validate_manifest(manifest)


@pytest.mark.parametrize("field,value,pattern", [
    ("category", 5, r"sources\[0\]\.category must be one of the archive's categories"),
    ("category", "announcements", r"sources\[0\]\.category"),
    ("kind", "tree", r"sources\[0\]\.kind must be postgresql or files"),
    ("origin", "relative/path", r"sources\[0\]\.origin must be a normal absolute path"),
    ("origin", "/srv/../etc", r"sources\[0\]\.origin must be a normal absolute path"),
    ("origin", "/srv/\0x", r"sources\[0\]\.origin must be a string without NUL"),
    ("size", -1, r"sources\[0\]\.size must be a non-negative integer \(below 2\^53\) or null"),
    ("size", 10 ** 30, r"sources\[0\]\.size"),
    ("size", "12", r"sources\[0\]\.size"),
    ("files", 1.5, r"sources\[0\]\.files"),
])
def test_manifest_source_fields_checked(tmp_path, field, value, pattern):
    manifest = _manifest(T0)
    manifest["sources"][0][field] = value
    _refused(_sar(tmp_path / "x.sar", manifest, TREE0), pattern)


def test_manifest_unknown_keys_ignored_and_both_formats_read(tmp_path):
    for fmt in (1, 2):
        manifest = _manifest(T0, fmt=fmt)
        manifest["rows"] = {"users": 12, "cdr": 3400}
        manifest["sources"][0]["tables"] = ["a", "b"]
        assert archive.verify(_sar(tmp_path / "x.sar", manifest, TREE0))["manifest"] == manifest
    assert archive.FORMAT_VERSION == 2 and archive.FORMATS == (1, 2)


def test_manifest_bombs_refused(tmp_path):
    for data, pattern in ((b"[" * 100000 + b"]" * 100000, "not valid JSON"), (b"1" * 10000, "not valid JSON|not a JSON object"),
                          (b" " * (archive.MAX_MANIFEST + 1), "larger than")):
        _refused(_sar(tmp_path / "x.sar", data, TREE0), pattern)


@pytest.mark.parametrize("members,pattern", [
    (TREE0 + [_m(T0 + "/a", b"again")], "member 'files/core/0/a' appears twice"),
    (TREE0 + [_m(T0 + "/sub", b"a file now")], "member 'files/core/0/sub' appears twice"),
    (TREE0 + [_sym(T0 + "/a", "sub")], "appears twice"),
    (TREE0 + [_m("manifest.json", b"{}")], "appears twice"),
    (TREE0 + [_m(T0)], "appears twice"),
])
def test_duplicate_members_refused(tmp_path, members, pattern):
    _refused(_sar(tmp_path / "x.sar", _manifest(T0), members), pattern)


@pytest.mark.parametrize("members,pattern", [
    (TREE0 + [_m("files/core/7/x", b"x")], "member 'files/core/7/x' belongs to no source"),
    (TREE0 + [_m("db/core.pgdump", b"x")], "belongs to no source"),
    (TREE0 + [_m("x", b"x")], "belongs to no source"),
    (TREE0 + [_m("files/core/1.links.json", b"[]")], "belongs to no source"),
    ([_m(T0 + "/a", b"x")] + TREE0[:1], "comes before its tree's directory member"),
    ([_m(T0, b"not a directory")], "must be a directory"),
    ([_m(T0), _m(T0 + "/x/y", b"x")], "its directory 'files/core/0/x' is not an earlier member"),
    (TREE0 + [_m(T0 + "/a/y", b"x")], "'files/core/0/a' is not a directory"),
    ([_m(T0, b"x")], "must be a directory"),
    ([], r"sources\[0\]\.member names 'files/core/0', which is not in the archive"),
])
def test_members_must_belong_to_their_sources(tmp_path, members, pattern):
    _refused(_sar(tmp_path / "x.sar", _manifest(T0), members), pattern)


def test_dump_member_must_be_a_regular_file(tmp_path):
    manifest = _manifest("db/core.pgdump")
    _refused(_sar(tmp_path / "x.sar", manifest, [_m("db/core.pgdump")]), "must be a regular file")
    _refused(_sar(tmp_path / "y.sar", manifest, [_m("db/core.pgdump", b"d"), _m("db/core.pgdump/x", b"d")]),
             "belongs to no source")


def test_writer_output_always_verifies_whatever_the_symlinks(tmp_path):
    """The writer judges a tree's symlinks the way readers do (against the links before each and against
    all): links that only stay inside through another link that leaves go to the links member."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "f").write_bytes(b"x")
    (root / "a").symlink_to("b/..")       # fine while b is no link; b -> . makes it climb out
    (root / "b").symlink_to(".")
    (root / "c").symlink_to("sub/../f")   # inside
    (root / "d").symlink_to("out/..")     # through a link that leaves: judged with out as a plain name
    (root / "out").symlink_to("/etc")
    (root / "e").symlink_to("../1/x")     # into another tree
    (root / "sub" / "up").symlink_to("../../0/f")
    path = str(tmp_path / "x.sar")
    with archive.ArchiveWriter(path) as writer:
        writer.add_manifest(_manifest(T0))
        stats = writer.add_tree(T0, str(root))
    links = {e["path"] for e in stats["external_links"]}
    assert {"a", "e", "out", "sub/up"} <= links and "c" not in links
    scanned = archive.scan(path)
    kept = {m["name"][len(T0) + 1:] for m in scanned["members"] if m["type"] == "symlink"}
    assert kept | links == {"a", "b", "c", "d", "e", "out", "sub/up"} and not kept & links
    assert {e["path"] for e in scanned["links"][T0]} == links


def test_verify_and_restore_agree_on_an_accepted_archive(tmp_path):
    """What verify accepts, extract_routed (restore's extraction) writes without complaint."""
    links = [{"path": "moh", "target": "/usr/share/asterisk/moh"}]
    members = TREE0 + [_sym(T0 + "/sub/l", "../a"), _m(T0 + "/h", type=tarfile.LNKTYPE, linkname=T0 + "/a"),
                       _m(T0 + ".links.json", json.dumps(links).encode())] + TREE1
    path = _sar(tmp_path / "x.sar", TWO_TREES, members)
    scanned = archive.scan(path)
    routes = {T0: str(tmp_path / "t0"), T1: str(tmp_path / "t1")}
    for dest in routes.values():
        os.mkdir(dest)
    stats = archive.extract_routed(path, routes, scanned=scanned)
    assert stats[T0]["files"] == 2 and (tmp_path / "t0" / "sub" / "l").read_bytes() == b"alpha"
    assert scanned["links"] == {T0: [dict(links[0], mtime=None, owner=None, group=None, uid=None, gid=None)], T1: []}


def test_archive_changed_between_scan_and_extraction(tmp_path):
    path = tmp_path / "x.sar"
    _sar(path, TWO_TREES, TREE0 + TREE1)
    scanned = archive.scan(str(path))
    _sar(path, TWO_TREES, TREE0 + [_m(T0 + "/extra", b"x")] + TREE1)  # another valid archive in its place
    os.mkdir(str(tmp_path / "t0"))
    with pytest.raises(ArchiveError, match="changed since it was verified"):
        archive.extract_routed(str(path), {T0: str(tmp_path / "t0")}, scanned=scanned)


# ---------------------------------------------------------------- signatures

@pytest.fixture(scope="module")
def signer():
    return signing.Signer(Ed25519PrivateKey.generate())


def _signed(tmp_path, signer, name="s.sar") -> str:
    tree = tmp_path / "tree"
    if not tree.exists():
        (tree / "sub").mkdir(parents=True)
        (tree / "a").write_bytes(b"alpha")
    path = str(tmp_path / name)
    with archive.ArchiveWriter(path, signer=signer) as writer:
        writer.add_manifest(_manifest(T0))
        writer.add_tree(T0, str(tree))
    return path


def _plain_tar(path) -> bytes:
    with open(path, "rb") as handle:
        return zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True).read()


def _members_of(tar_bytes: bytes) -> list:
    out = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for info in tar:
            out.append((info, tar.extractfile(info).read() if info.isreg() else None))
    return out


def test_unsigned_and_signed_archives(tmp_path, signer):
    unsigned = _sar(tmp_path / "u.sar", _manifest(T0), TREE0)
    assert archive.verify(unsigned)["signature"] is None
    signed = _signed(tmp_path, signer)
    result = archive.verify(signed)
    assert result["signature"] == {"public_key": signer.public_key, "fingerprint": signer.fingerprint}
    names = [m["name"] for m in result["members"]]
    assert names[-2:] == ["checksums.sha256", "signature.ed25519"]
    sums = [d for i, d in _members_of(_plain_tar(signed)) if i.name == "checksums.sha256"][0]
    assert b"signature.ed25519" not in sums  # not listed in the checksums it signs
    assert signing.check_trust(result["signature"], None, trusted_keys=[signer.public_key])["trusted"]
    out = tmp_path / "out"
    out.mkdir()
    assert "signature.ed25519" not in archive.extract(signed, str(out))
    subprocess.run("zstd -dc %s | tar -t >/dev/null" % signed, shell=True, check=True)  # standard tools still read it


def _rebuilt(tmp_path, members, name="t.sar") -> str:
    return _write(tmp_path / name, _tar(members))


def test_tampered_signature_refused(tmp_path, signer):
    members = _members_of(_plain_tar(_signed(tmp_path, signer)))
    body = json.loads(members[-1][1])
    raw = bytearray(base64.b64decode(body["signature"]))
    raw[0] ^= 1
    body["signature"] = base64.b64encode(bytes(raw)).decode()
    forged = members[:-1] + [_m("signature.ed25519", json.dumps(body).encode())]
    _refused(_rebuilt(tmp_path, forged), "does not match the archive's checksums")
    # Changed content with checksums recomputed: the signature no longer matches.
    changed = [(i, d) if i.name != T0 + "/a" else _m(T0 + "/a", b"ALPHA") for i, d in members[:-2]]
    resummed = _entries(changed[0][1], changed[1:])
    _refused(_rebuilt(tmp_path, resummed + [members[-1]], "c.sar"), "does not match")
    # Someone else's key over the changed checksums: valid, and says who signed it (trust is the caller's call).
    other = signing.Signer(Ed25519PrivateKey.generate())
    resigned = resummed + [_m("signature.ed25519", other.signature_member(resummed[-1][1]))]
    assert archive.verify(_rebuilt(tmp_path, resigned, "o.sar"))["signature"]["public_key"] == other.public_key
    garbage = members[:-1] + [_m("signature.ed25519", b'{"algorithm": "rsa"}')]
    _refused(_rebuilt(tmp_path, garbage, "g.sar"), "field 'algorithm' must be 'ed25519'")


def test_signature_member_place(tmp_path, signer):
    members = _members_of(_plain_tar(_signed(tmp_path, signer)))
    sig = members[-1]
    _refused(_rebuilt(tmp_path, members + [_m(T0 + "/late", b"x")], "a.sar"), "follows signature.ed25519")
    _refused(_rebuilt(tmp_path, members + [sig], "b.sar"), "follows signature.ed25519")
    _refused(_rebuilt(tmp_path, members[:-2] + [sig, members[-2]], "c.sar"), "must come right after checksums.sha256")
    _refused(_rebuilt(tmp_path, members[:-1] + [_m("signature.ed25519")], "d.sar"), "must be a regular file")
    _refused(_rebuilt(tmp_path, members[:-1] + [_m("other", b"x")], "e.sar"), "only signature.ed25519 may follow")


# ---------------------------------------------------------------- fuzz: results or ArchiveError, nothing else

def _real_archive(tmp_path) -> bytes:
    """The tar stream of a small real archive: a dump, two trees, symlinks, a links member."""
    root = tmp_path / "src"
    (root / "t0" / "sub" / "deep").mkdir(parents=True)
    (root / "t0" / "a.txt").write_bytes(b"hello\n")
    (root / "t0" / "sub" / "deep" / "v.wav").write_bytes(b"RIFF" * 50)
    (root / "t0" / "sub" / "up").symlink_to("../a.txt")
    (root / "t0" / "moh").symlink_to("/usr/share/asterisk/moh")
    (root / "t1").mkdir()
    (root / "t1" / "x").write_bytes(b"x")
    (root / "dump").write_bytes(b"PGDMP" + bytes(range(200)))
    manifest = _manifest("db/core.pgdump", T0, T1, sizes={"db/core.pgdump": 205})
    path = str(tmp_path / "real.sar")
    with archive.ArchiveWriter(path) as writer:
        writer.add_manifest(manifest)
        writer.add_file("db/core.pgdump", str(root / "dump"))
        writer.add_tree(T0, str(root / "t0"))
        writer.add_tree(T1, str(root / "t1"))
    archive.verify(path)
    return _plain_tar(path)


NAMES = ["../x", "/etc/passwd", T0 + "/../../x", "", ".", T0 + "//a", T0 + "/a\0b", T0 + "/" + "n" * 300, T0,
         T0 + "/a.txt", T1 + "/x", "files/core/2/x", "manifest.json", "checksums.sha256", "signature.ed25519",
         "db/core.pgdump", T0 + ".links.json", T0 + "/sub", T0 + "/sub/up", "caf\udcff", "\u00e9t\u00e9"]
TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z", tarfile.GNUTYPE_SPARSE]
JSON_VALUES = [None, True, False, 0, -1, 1, 2, 3, 2 ** 70, 1.5, float("nan"), "", "x", "\0", "../x", "/abs", "core",
               "files", "postgresql", T0, "db/core.pgdump", "manifest.json", [], [None], ["core", "core"], [1, 2], {},
               {"a": 1}, "a" * 300, "\ud800", [[[[]]]], {"path": "x", "target": "y"}]


def _mutate_members(rng, members) -> list:
    members = [(copy.copy(i), d) for i, d in members]
    for _round in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        k = rng.randrange(len(members))
        info, data = members[k]
        if op == 0:
            info.name = rng.choice(NAMES)
        elif op == 1:
            info.type = rng.choice(TYPES)
        elif op == 2:
            info.linkname = rng.choice(NAMES + ["../../..", "/", "a/" * 40])
        elif op == 3:
            setattr(info, rng.choice(["mtime", "uid", "gid", "mode"]), rng.choice([0, -1, 2 ** 33, 7, 1.5]))
        elif op == 4:
            members.pop(k)
        elif op == 5:
            members.insert(rng.randrange(len(members) + 1), (copy.copy(info), data))
        elif op == 6:
            j = rng.randrange(len(members))
            members[k], members[j] = members[j], members[k]
        elif data is not None:
            data = bytearray(data)
            for _flip in range(rng.randint(1, 4)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            members[k] = (info, bytes(data))
    if rng.random() < 0.8:  # recompute the checksums of what is there now: keep them valid
        body = [(i, d) for i, d in members if i.name not in ("checksums.sha256", "signature.ed25519")]
        if body and body[0][0].name == "manifest.json" and body[0][1] is not None:
            members = _entries(body[0][1], body[1:])
    return members


def _mutate_bytes(rng, tar: bytes) -> bytes:
    data = bytearray(tar)
    op = rng.randrange(4)
    if op == 0:
        for _flip in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif op == 1:
        del data[rng.randrange(len(data)):]
    elif op == 2:
        start = rng.randrange(len(data) // 512) * 512
        data[start:start] = data[start:start + 512 * rng.randint(1, 3)]
    else:
        start = rng.randrange(len(data) // 512) * 512
        del data[start:start + 512 * rng.randint(1, 3)]
    return bytes(data)


def _json_paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key in value:
            yield from _json_paths(value[key], path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _json_paths(item, path + (i,))


def _substituted(value, path, new):
    if not path:
        return new
    value = copy.deepcopy(value)
    holder = value
    for key in path[:-1]:
        holder = holder[key]
    if new is KeyError and isinstance(holder, dict):
        del holder[path[-1]]
    else:
        holder[path[-1]] = None if new is KeyError else new
    return value


def _every_reader(path: str, tmp_path, counter: list) -> None:
    """Each reader ends in a result or an ArchiveError; when verify accepts, extraction works too."""
    counter[0] += 1
    try:
        archive.read_manifest(path)
    except ArchiveError:
        pass
    try:
        with archive.open_members(path) as members:
            for _info, handle in members:
                if handle is not None:
                    handle.read(100)
    except ArchiveError:
        pass
    try:
        scanned = archive.scan(path)
    except ArchiveError:
        return
    counter[1] += 1
    dest = tmp_path / ("x%d" % counter[0])
    dest.mkdir()
    routes = {}
    for i, src in enumerate(scanned["manifest"]["sources"]):
        routes[src["member"]] = str(dest / ("s%d" % i))
        if src["kind"] == "files":
            os.mkdir(routes[src["member"]])
    archive.extract_routed(path, routes, scanned=scanned)
    whole = tmp_path / ("w%d" % counter[0])
    whole.mkdir()
    archive.extract(path, str(whole))


def test_fuzz_tar_mutations(tmp_path):
    rng = random.Random(20240501)
    members = _members_of(_real_archive(tmp_path))
    counter = [0, 0]
    for case in range(160):
        mutated = _mutate_members(rng, members)
        fmt = rng.choice([tarfile.PAX_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
        try:
            tar = _tar(mutated, fmt)
        except (ValueError, TypeError, tarfile.TarError, UnicodeError, OverflowError):
            continue  # tarfile cannot even write it
        if case % 3 == 0:
            tar = _mutate_bytes(rng, tar)
        path = _write(tmp_path / "f.sar", tar, rng.choice(["zstd", "gzip"]))
        _every_reader(path, tmp_path, counter)
    assert counter[0] > 100 and counter[1] >= 1  # cases run; some (e.g. reordered siblings) still valid


def test_fuzz_manifest_and_links_values(tmp_path):
    rng = random.Random(7)
    members = _members_of(_real_archive(tmp_path))
    manifest = json.loads(members[0][1])
    at = [i for i, (info, _d) in enumerate(members) if info.name.endswith(".links.json")][0]
    links = json.loads(members[at][1])
    counter = [0, 0]
    targets = [("manifest", p) for p in _json_paths(manifest)] + [("links", p) for p in _json_paths(links)]
    for kind, path in targets:
        for new in rng.sample(JSON_VALUES + [KeyError], 4):
            if kind == "manifest":
                body = [_m("manifest.json", json.dumps(_substituted(manifest, path, new)).encode())] + members[1:at + 1]
            else:
                body = members[:at] + [_m(members[at][0].name, json.dumps(_substituted(links, path, new)).encode())]
            body += [(i, d) for i, d in members[at + 1:] if i.name != "checksums.sha256"]
            archive_path = _write(tmp_path / "j.sar", _tar(_entries(body[0][1], body[1:])))
            _every_reader(archive_path, tmp_path, counter)
    assert counter[0] > 150 and counter[1] > 10
