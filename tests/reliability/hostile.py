# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile .sar archives, crafted by class the way an attacker would build them.

Nothing here uses the collection's writer: members are written with `tarfile`
headers (or raw header bytes), compressed with `zstandard`/`gzip` directly,
and the checksums member is computed over exactly what was written, so every
archive passes the checksum check and only the hostile part can refuse it.
Unsigned by default; `Archive.sign_key` signs the checksums member the way
docs/restore.md says (ed25519, member `signature.ed25519`, last).

A case starts from `base()`: a faithful archive of the live appliance (its
profile's trees, real `pg_dump -Fc -Z0` dumps, the manifest the format
documents). Restored with `trust: any`, the base is accepted and changes
nothing; each case then changes one thing. Under SAR_SOAK (`make soak`) every
light case also comes gzip-compressed and signed by the host's own key (run
without `trust: any`), SAR_SOAK_COMBINATIONS (300) seeded random combinations
of two or three cases are added (SAR_SOAK_SEED picks another seed), the bombs
grow, and the `soak_only` cases (minutes each until refused early) run.

    ctx = Ctx(profile=..., host=..., sentinel=..., canary=..., dumps={...}, ...)
    for case in cases():
        path = build(case, ctx, "/tmp/x/%s.sar" % case.ident)

A `Case` names its class, the tokens one of which the refusal must name (a
member or a field), whether the archive layer alone (`archive.verify`) can
refuse it (`engine`; False for what needs the host's profile, database or
trust), whether it is a bomb (`heavy`: run in a child process whose memory is
measured) and whether a restore into a scratch directory may accept it
(`scratch_ok`: what only the profile mapping or the database refuses).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
import hashlib
import json
import math
import os
import pwd
import grp
import random
import stat
import tarfile

import zstandard

SOAK = os.environ.get("SAR_SOAK", "") not in ("", "0")
SOAK_SEED = int(os.environ.get("SAR_SOAK_SEED", "1"))
SOAK_COMBINATIONS = int(os.environ.get("SAR_SOAK_COMBINATIONS", "300"))
MB = 1024 * 1024

# Bomb sizes: bounded in `make test`, larger under `make soak`.
PAX_BOMB = 1024 * MB                                # the issue's 1 GB pax header, in both
GLOBAL_PAX_BOMB = (1024 if SOAK else 256) * MB
LONGNAME_BOMB = (1024 if SOAK else 256) * MB
OVERSIZE = (2048 if SOAK else 256) * MB             # a member far larger than declared
ZERO_TAIL = (4096 if SOAK else 256) * MB            # zeros after the end of the tar stream
WINDOW_MEMBER = (512 if SOAK else 160) * MB         # decoded through a 128 MB zstd window
MANY_MEMBERS = 1_000_000 if SOAK else 150_000
DEEP = 2040                                         # directory levels (1-letter names: within PATH_MAX)
MANY_SOURCES = 4_000_000 if SOAK else 2_000_000
MANY_LINKS = 1_000_000 if SOAK else 300_000
MANY_PAX_RECORDS = 4_000_000 if SOAK else 2_000_000

MANIFEST = "manifest.json"
CHECKSUMS = "checksums.sha256"
SIGNATURE = "signature.ed25519"
CATEGORIES = ("core", "cdr_voicemail", "announcements")
# The sample appliance's members (tests/harness/appliance.py layout).
T0 = "files/core/0"             # etc/asterisk (has an outside link -> links member, and an inside one)
T1 = "files/core/1"             # var/lib/starface/config
VM = "files/cdr_voicemail/0"
ANN = "files/announcements/0"
DBC = "db/core.pgdump"
DBV = "db/cdr_voicemail.pgdump"
LINKS0 = T0 + ".links.json"
MTIME = 1764900000

MISSING = object()       # a manifest field left out
_CHECKSUMS_DATA = object()
_SIGNATURE_DATA = object()
_MANIFEST_DATA = object()
DROP = object()          # a signature field left out


class Fill:
    """`size` bytes of one repeated byte, streamed (never held in memory)."""

    def __init__(self, size: int, byte: bytes = b"\0"):
        self.size = size
        self.byte = byte

    def chunks(self):
        block = self.byte * MB
        left = self.size
        while left > 0:
            step = min(left, MB)
            yield block if step == MB else block[:step]
            left -= step


_FILL_DIGESTS: dict = {}


def _digest(data) -> str:
    if isinstance(data, Fill):
        key = (data.size, data.byte)
        if key not in _FILL_DIGESTS:
            sha = hashlib.sha256()
            for chunk in data.chunks():
                sha.update(chunk)
            _FILL_DIGESTS[key] = sha.hexdigest()
        return _FILL_DIGESTS[key]
    return hashlib.sha256(data).hexdigest()


def _size(data) -> int:
    return data.size if isinstance(data, Fill) else len(data)


@dataclasses.dataclass
class Member:
    """One tar member. kind: file dir symlink hardlink chr blk fifo raw, or 'type:X' for a raw type flag."""

    name: str
    kind: str = "file"
    data: object = b""           # bytes, Fill, or one of the placeholders
    linkname: str = ""
    mode: int = 0o644
    mtime: int = MTIME
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"
    pax: dict | None = None      # extra pax records (path= overrides the name, etc.)
    listed: bool = True          # a regular member listed in checksums.sha256
    raw: object = None           # kind raw: callable(write) writing tar bytes itself

    @property
    def regular(self) -> bool:
        return self.kind == "file"


def file(name: str, data=b"", mode: int = 0o644, **kw) -> Member:
    return Member(name, "file", data, mode=mode, **kw)


def directory(name: str, mode: int = 0o755, **kw) -> Member:
    return Member(name, "dir", mode=mode, **kw)


def symlink(name: str, target: str, **kw) -> Member:
    return Member(name, "symlink", linkname=target, mode=0o777, **kw)


def hardlink(name: str, target: str, **kw) -> Member:
    return Member(name, "hardlink", linkname=target, **kw)


@dataclasses.dataclass
class Archive:
    manifest: object
    members: list                       # manifest first, checksums/signature placeholders where they go
    compression: str = "zstd"           # zstd | gzip | none
    sign_key: object = None             # cryptography Ed25519PrivateKey
    manifest_raw: bytes | None = None
    sums_extra: list = dataclasses.field(default_factory=list)      # extra (name, digest) lines
    sums_override: dict = dataclasses.field(default_factory=dict)   # name -> digest
    sig_fields: dict = dataclasses.field(default_factory=dict)      # signature JSON fields replaced (DROP: removed)
    sig_over: bytes | None = None       # sign these bytes instead of the checksums member
    sig_raw: bytes | None = None        # the signature member's bytes, as they are
    sig_flip: bool = False              # one bit of the signature flipped
    tail: object = b""                  # inside the compression, after the end-of-archive blocks
    after: bytes = b""                  # outside the compression, after its end
    zstd_window_log: int | None = None
    end_blocks: bool = True

    # -- editing helpers used by the cases -------------------------------------------------
    def index(self, name: str) -> int:
        for i, m in enumerate(self.members):
            if m.name == name and m.kind != "raw":
                return i
        raise LookupError(name)

    def member(self, name: str) -> Member:
        return self.members[self.index(name)]

    def checksums_index(self) -> int:
        for i, m in enumerate(self.members):
            if m.data is _CHECKSUMS_DATA:
                return i
        raise LookupError(CHECKSUMS)

    def add(self, *members: Member) -> None:
        """Before the checksums member."""
        at = self.checksums_index()
        self.members[at:at] = list(members)

    def add_after(self, name: str, *members: Member) -> None:
        at = self.index(name) + 1
        self.members[at:at] = list(members)

    def add_to_tree(self, tree: str, *members: Member) -> None:
        """After the last member of tree `tree` (its own place in the archive). The manifest's declared
        size and file count follow, as a writer measuring the tree would declare them."""
        last = max(i for i, m in enumerate(self.members) if m.name == tree or m.name.startswith(tree + "/"))
        self.members[last + 1:last + 1] = list(members)
        try:
            src = self.source(tree)
        except LookupError:
            return
        for m in members:
            if m.kind == "dir" or m.kind == "raw" or not m.name.startswith(tree + "/"):
                continue
            if isinstance(src.get("files"), int):
                src["files"] += 1
            if isinstance(src.get("size"), int):
                src["size"] += _size(m.data) if m.regular else len(m.linkname) if m.kind == "symlink" else 0

    def remove(self, name: str) -> Member:
        return self.members.pop(self.index(name))

    def remove_tree(self, tree: str) -> None:
        self.members = [m for m in self.members
                        if not (m.name == tree or m.name.startswith(tree + "/") or m.name == tree + ".links.json")]

    def source(self, member: str) -> dict:
        for src in self.manifest["sources"]:
            if isinstance(src, dict) and src.get("member") == member:
                return src
        raise LookupError(member)

    def source_index(self, member: str) -> int:
        return self.manifest["sources"].index(self.source(member))

    def set_data(self, name: str, data) -> None:
        """Replace a member's content; the manifest's declared size follows (as a writer would)."""
        self.member(name).data = data
        try:
            self.source(name)["size"] = _size(data)
        except (LookupError, TypeError, KeyError):
            pass


# -- the valid starting point ---------------------------------------------------------------

@dataclasses.dataclass
class Ctx:
    profile: dict                  # the live appliance's profile (store.py shape)
    host: str
    sentinel: str                  # a directory outside the profile: must never change
    canary: str                    # world-writable: where a command run by a hostile dump would leave a file
    dumps: dict                    # name -> path: core, cdr_voicemail, other_tables, comment, plain
    comment_defn: bytes = b""      # the COMMENT statement in dumps["comment"] that payloads replace
    host_key: object = None        # the host's signing key (signed variants)
    foreign_key: object = None     # another host's key

    def tree_path(self, cat: str, index: int) -> str:
        return self.profile["categories"][cat]["paths"][index]

    def up_to_sentinel(self) -> str:
        """A relative path from tree core/0 (and from its extraction directory next to it) to the sentinel."""
        return os.path.relpath(os.path.join(self.sentinel, "escaped"), self.tree_path("core", 0))

    def read_dump(self, name: str) -> bytes:
        with open(self.dumps[name], "rb") as handle:
            return handle.read()


def _owner_names(st) -> tuple:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = ""
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = ""
    return user, group


def _leaves(rel_dir: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    norm = os.path.normpath(os.path.join(rel_dir or ".", target))
    return norm == ".." or norm.startswith("../")


def tree_members(root: str, prefix: str) -> tuple:
    """(members, links entries, size, files) of the directory `root` as archive tree `prefix`."""
    members, links = [], []
    totals = {"size": 0, "files": 0}

    def visit(path: str, name: str, rel: str) -> None:
        st = os.lstat(path)
        user, group = _owner_names(st)
        common = {"mode": stat.S_IMODE(st.st_mode), "mtime": int(st.st_mtime), "uid": st.st_uid, "gid": st.st_gid,
                  "uname": user, "gname": group}
        if stat.S_ISDIR(st.st_mode):
            members.append(Member(name, "dir", **common))
            for child in sorted(os.listdir(path)):
                visit(os.path.join(path, child), name + "/" + child, (rel + "/" if rel else "") + child)
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                members.append(Member(name, "file", handle.read(), **common))
            totals["size"] += st.st_size
            totals["files"] += 1
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            totals["size"] += st.st_size
            totals["files"] += 1
            if _leaves(os.path.dirname(rel), target):
                links.append({"path": rel, "target": target, "mtime": int(st.st_mtime), "owner": user,
                              "group": group, "uid": st.st_uid, "gid": st.st_gid})
            else:
                members.append(Member(name, "symlink", linkname=target, **common))

    visit(root, prefix, "")
    return members, links, totals["size"], totals["files"]


def links_bytes(entries) -> bytes:
    return json.dumps(entries, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogateescape")


def database_origin(profile: dict, tables: list, exclude: list) -> str:
    db = profile["database"]
    text = "postgresql://%s@%s:%s/%s" % (db.get("user") or "", db.get("host") or "", db.get("port") or "",
                                         db.get("name") or "")
    if tables:
        text += "?tables=" + ",".join(tables)
    elif exclude:
        text += "?exclude_tables=" + ",".join(exclude)
    return text


def base(ctx: Ctx, categories=CATEGORIES, compression: str = "zstd") -> Archive:
    """A faithful archive of the live appliance: what the format documents, nothing hostile."""
    sources, members = [], []
    for cat in categories:
        spec = ctx.profile["categories"][cat]
        tables, exclude = list(spec.get("tables") or []), list(spec.get("exclude_tables") or [])
        if tables or exclude:
            data = ctx.read_dump(cat)
            member = "db/%s.pgdump" % cat
            members.append(file(member, data, mode=0o600))
            sources.append({"category": cat, "kind": "postgresql", "origin": database_origin(ctx.profile, tables, exclude),
                            "member": member, "size": len(data), "files": 1})
        for index, path in enumerate(spec.get("paths") or []):
            prefix = "files/%s/%d" % (cat, index)
            tree, links, size, count = tree_members(path, prefix)
            members += tree
            if links:
                members.append(file(prefix + ".links.json", links_bytes(links)))
            sources.append({"category": cat, "kind": "files", "origin": os.path.normpath(path), "member": prefix,
                            "size": size, "files": count})
    manifest = {"categories": list(categories), "compression": compression, "created": "2026-12-05T02:00:00+00:00",
                "encrypted": False, "encryption": None, "format": 2, "host": ctx.host, "job": "nightly",
                "sources": sources, "tool": "sar-backup 0.1.0"}
    layout = [file(MANIFEST, _MANIFEST_DATA)] + members + [file(CHECKSUMS, _CHECKSUMS_DATA)]
    return Archive(manifest=manifest, members=layout, compression=compression)


# -- writing ------------------------------------------------------------------------------

def checksum_line(digest: str, name: str) -> str:
    """sha256sum's line, escaped as coreutils escapes odd names."""
    if "\\" in name or "\n" in name:
        return "\\%s  %s\n" % (digest, name.replace("\\", "\\\\").replace("\n", "\\n"))
    return "%s  %s\n" % (digest, name)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def public_key_text(key) -> str:
    from cryptography.hazmat.primitives import serialization
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + _b64(raw)


def signature_bytes(key, signed: bytes, fields: dict | None = None, flip: bool = False) -> bytes:
    sig = bytearray(key.sign(signed))
    if flip:
        sig[17] ^= 0x01
    body = {"algorithm": "ed25519", "public_key": public_key_text(key), "signature": _b64(bytes(sig))}
    for name, value in (fields or {}).items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return (json.dumps(body, sort_keys=True) + "\n").encode("ascii")


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def _header(m: Member, size: int) -> bytes:
    info = tarfile.TarInfo(m.name)
    info.type = m.kind[5:].encode("ascii") if m.kind.startswith("type:") else _TYPES[m.kind]
    info.size = size
    info.linkname = m.linkname
    info.mode = m.mode
    info.mtime = m.mtime
    info.uid, info.gid, info.uname, info.gname = m.uid, m.gid, m.uname, m.gname
    if m.kind in ("chr", "blk"):
        info.devmajor, info.devminor = 1, 3
    info.pax_headers = dict(m.pax or {})
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Sink:
    """The tar stream: through the compressor into the file, counting tar bytes for padding."""

    def __init__(self, path: str, arch: Archive, big: bool):
        self.raw = open(path, "wb")  # pylint: disable=consider-using-with
        self.pos = 0
        if arch.compression == "zstd":
            kwargs = {"write_checksum": 1}
            if arch.zstd_window_log:
                kwargs["window_log"] = arch.zstd_window_log
            params = zstandard.ZstdCompressionParameters.from_level(1 if big else 3, **kwargs)
            self.comp = zstandard.ZstdCompressor(compression_params=params).stream_writer(self.raw, closefd=False)
        elif arch.compression == "gzip":
            self.comp = gzip.GzipFile(filename="", fileobj=self.raw, mode="wb", compresslevel=1 if big else 6, mtime=0)
        else:
            self.comp = None

    def write(self, data) -> None:
        (self.comp or self.raw).write(data)
        self.pos += len(data)

    def pad(self) -> None:
        rest = -self.pos % tarfile.BLOCKSIZE
        if rest:
            self.write(b"\0" * rest)

    def close(self, after: bytes) -> None:
        if self.comp is not None:
            self.comp.close()
        self.raw.write(after)
        self.raw.close()


def manifest_bytes(arch: Archive) -> bytes:
    if arch.manifest_raw is not None:
        return arch.manifest_raw
    return json.dumps(arch.manifest, sort_keys=False, indent=1).encode("utf-8", "surrogateescape")


def checksums_bytes(arch: Archive) -> bytes:
    """The checksums member an attacker computes: every regular member written (unless `listed` is off)."""
    manifest = manifest_bytes(arch)
    lines = []
    for m in arch.members:
        if not m.regular or not m.listed or m.data is _CHECKSUMS_DATA or m.data is _SIGNATURE_DATA:
            continue
        data = manifest if m.data is _MANIFEST_DATA else m.data
        lines.append(checksum_line(arch.sums_override.get(m.name) or _digest(data), m.name))
    lines += [checksum_line(d, n) for n, d in arch.sums_extra]
    return "".join(lines).encode("utf-8", "surrogateescape")


def write(arch: Archive, path: str) -> str:
    manifest = manifest_bytes(arch)
    sums = checksums_bytes(arch)
    members = list(arch.members)
    if arch.sign_key is not None and not any(m.data is _SIGNATURE_DATA for m in members):
        members.append(file(SIGNATURE, _SIGNATURE_DATA))
    signature = arch.sig_raw
    if signature is None and arch.sign_key is not None:
        signature = signature_bytes(arch.sign_key, sums if arch.sig_over is None else arch.sig_over, arch.sig_fields,
                                    flip=arch.sig_flip)
    big = any(isinstance(m.data, Fill) for m in members) or isinstance(arch.tail, Fill) \
        or any(m.kind == "raw" for m in members)
    sink = _Sink(path, arch, big)
    try:
        for m in members:
            if m.kind == "raw":
                m.raw(sink)
                continue
            data = m.data
            if data is _MANIFEST_DATA:
                data = manifest
            elif data is _CHECKSUMS_DATA:
                data = sums
            elif data is _SIGNATURE_DATA:
                data = signature or b""
            size = _size(data) if m.regular else 0
            sink.write(_header(m, size))
            if m.regular:
                if isinstance(data, Fill):
                    for chunk in data.chunks():
                        sink.write(chunk)
                else:
                    sink.write(data)
                sink.pad()
        if arch.end_blocks:
            end = 2 * tarfile.BLOCKSIZE
            end += -(sink.pos + end) % tarfile.RECORDSIZE
            sink.write(b"\0" * end)
        if isinstance(arch.tail, Fill):
            for chunk in arch.tail.chunks():
                sink.write(chunk)
        elif arch.tail:
            sink.write(arch.tail)
    finally:
        sink.close(arch.after)
    return path


# -- raw header bombs ---------------------------------------------------------------------

def _special_header(typeflag: bytes, name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = typeflag
    info.size = size
    info.mtime = MTIME
    return info.tobuf(tarfile.USTAR_FORMAT)


def pax_record_bomb(size: int, typeflag: bytes = tarfile.XHDTYPE, keyword: str = "comment") -> Member:
    """A pax extended header (`x`, or global `g`) of `size` bytes: one record holding a huge value."""
    def emit(sink):
        sink.write(_special_header(typeflag, "././@PaxHeader", size))
        head = b"%d %s=" % (size, keyword.encode("ascii"))
        for chunk in Fill(size - len(head) - 1, b"A").chunks():
            if head:
                sink.write(head)
                head = b""
            sink.write(chunk)
        sink.write(b"\n")
        sink.pad()
    return Member("", "raw", raw=emit)


def pax_many_records(count: int) -> Member:
    """A pax header of `count` distinct short records (a dict of that many entries in a naive reader)."""
    records = []
    for i in range(count):
        body = b" k%08d=v\n" % i
        length = len(body) + 2
        records.append(b"%d%s" % (length, body))
    data = b"".join(records)

    def emit(sink):
        sink.write(_special_header(tarfile.XHDTYPE, "././@PaxHeader", len(data)))
        sink.write(data)
        sink.pad()
    return Member("", "raw", raw=emit)


def gnu_longname_bomb(size: int) -> Member:
    def emit(sink):
        sink.write(_special_header(tarfile.GNUTYPE_LONGNAME, "././@LongLink", size))
        for chunk in Fill(size - 1, b"a").chunks():
            sink.write(chunk)
        sink.write(b"\0")
        sink.pad()
    return Member("", "raw", raw=emit)


def many_directories(prefix: str, count: int) -> Member:
    """`count` directory members prefix/m0000000.. as raw ustar headers (fast: only the digits change)."""
    def emit(sink):
        first = bytearray(_special_header(tarfile.DIRTYPE, prefix + "/m0000000", 0))
        at = len(prefix) + 2
        head, mid, tail = bytes(first[:at]), bytes(first[at + 7:148]), bytes(first[156:])
        base_sum = sum(first[:148]) + 8 * 32 + sum(first[156:]) - 7 * 48
        batch = []
        for i in range(count):
            digits = b"%07d" % i
            batch.append(head + digits + mid + b"%06o\0 " % (base_sum + sum(digits)) + tail)
            if len(batch) == 4096:
                sink.write(b"".join(batch))
                batch = []
        if batch:
            sink.write(b"".join(batch))
    return Member("", "raw", raw=emit)


# -- cases --------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    cls: str
    mutate: object                 # callable(Archive, Ctx)
    expect: tuple = ()             # the refusal names one of these (case-insensitive); () = any message
    engine: bool = True            # archive.verify alone must refuse it
    heavy: bool = False            # a bomb: run in a child, memory measured
    scratch_ok: bool = False       # a restore into a scratch directory may accept it
    signed: bool = False           # signed by the host's key: run without trust any
    compression: str = "zstd"
    soak_only: bool = False        # too slow for the bounded suite while it is not refused early

    @property
    def ident(self) -> str:
        return "%s-%s" % (self.cls, self.name)


CLASSES = ("paths", "symlinks", "hardlinks", "special", "duplicates", "manifest", "links", "profile", "dumps",
           "signature", "headers", "decompression")

_CASES: list = []


def _case(cls: str, name: str, expect=(), **kw):
    def deco(fn):
        _CASES.append(Case(name, cls, fn, tuple(expect), **kw))
        return fn
    return deco


def _tree_file(arch: Archive, tree: str, rel: str, data: bytes = b"pwned\n", **kw) -> Member:
    m = file("%s/%s" % (tree, rel), data, **kw)
    arch.add_to_tree(tree, m)
    return m


# paths ---------------------------------------------------------------------------------
@_case("paths", "absolute", expect=("/escaped", "absolute"))
def _mutation_001(arch, ctx):
    arch.add_to_tree(T0, file(os.path.join(ctx.sentinel, "escaped")))


@_case("paths", "dotdot_in_tree", expect=("..",))
def _mutation_002(arch, ctx):
    _tree_file(arch, T0, ctx.up_to_sentinel())


@_case("paths", "dotdot_first", expect=("..",))
def _mutation_003(arch, ctx):
    arch.add(file("../../escaped"))


@_case("paths", "pax_path_dotdot", expect=("..",))
def _mutation_004(arch, ctx):
    arch.add_to_tree(T0, file(T0 + "/benign.conf", b"x", pax={"path": T0 + "/" + ctx.up_to_sentinel()}))


@_case("paths", "nul_in_name", expect=("nul", "\\x00", "\\0"))
def _mutation_005(arch, ctx):
    arch.add_to_tree(T0, file(T0 + "/placeholder", b"x", pax={"path": T0 + "/sip.conf\0.evil"}))


@_case("paths", "empty_name", expect=("name", "''"))
def _mutation_006(arch, ctx):
    arch.add_to_tree(T0, file(T0 + "/placeholder", b"x", pax={"path": ""}))


@_case("paths", "through_symlink_inside", expect=(T0 + "/d2",))
def _mutation_007(arch, ctx):
    arch.add_to_tree(T0, directory(T0 + "/d"), symlink(T0 + "/d2", "d"), file(T0 + "/d2/pwned", b"x"))


@_case("paths", "through_symlink_outside", expect=(T0 + "/out",))
def _mutation_008(arch, ctx):
    arch.add_to_tree(T0, symlink(T0 + "/out", ctx.sentinel), file(T0 + "/out/pwned", b"x"))


@_case("paths", "tree_parent_is_symlink", expect=("files/core",))
def _mutation_009(arch, ctx):
    arch.members.insert(1, symlink("files/core", ctx.sentinel))


@_case("paths", "member_outside_sources", expect=("notes/readme.txt",))
def _mutation_010(arch, ctx):
    arch.add(file("notes/readme.txt", b"not part of any source\n"))


@_case("paths", "name_too_long", expect=("x" * 300,))
def _mutation_011(arch, ctx):
    _tree_file(arch, T0, "x" * 300)


@_case("paths", "path_longer_than_path_max", expect=(T0 + "/" + "d" * 100,))
def _mutation_012(arch, ctx):
    parts = ["d" * 100] * 41  # 4141 bytes below the tree: more than PATH_MAX (4096) wherever it lands
    members = [directory(T0 + "/" + "/".join(parts[:i + 1])) for i in range(len(parts))]
    members.append(file(T0 + "/" + "/".join(parts) + "/deep", b"x"))
    arch.add_to_tree(T0, *members)


@_case("paths", "very_deep_tree", expect=(T0 + "/d/d/d", "directories deep"))
def _mutation_013(arch, ctx):
    # Within PATH_MAX, but 2040 directories deep: extraction that walks each member's path from the root
    # would cost depth^2 lookups of depth-long paths, recursive removal would overflow Python's stack.
    # A real appliance tree is a few dozen levels deep: archive.MAX_DEPTH refuses it when it is read.
    parts = ["d"] * DEEP
    members = [directory(T0 + "/" + "/".join(parts[:i + 1])) for i in range(len(parts))]
    members.append(file(T0 + "/" + "/".join(parts[:-1]) + "/z", b"x"))
    arch.add_to_tree(T0, *members)


@_case("paths", "after_end_of_archive", expect=())
def _mutation_014(arch, ctx):
    # A member after the two zero blocks (what `tar -i` would still extract).
    late = tarfile.TarInfo(T0 + "/late.conf")
    late.size = 5
    arch.tail = late.tobuf(tarfile.PAX_FORMAT) + b"late\n".ljust(512, b"\0") + b"\0" * 1024


# symlinks ------------------------------------------------------------------------------
@_case("symlinks", "absolute_target", expect=(T0 + "/abs",))
def _mutation_015(arch, ctx):
    arch.add_to_tree(T0, symlink(T0 + "/abs", ctx.sentinel))


@_case("symlinks", "leaves_archive", expect=(T0 + "/up",))
def _mutation_016(arch, ctx):
    arch.add_to_tree(T0, symlink(T0 + "/up", ctx.up_to_sentinel()))


@_case("symlinks", "into_other_tree", expect=(T0 + "/other",))
def _mutation_017(arch, ctx):
    arch.add_to_tree(T0, symlink(T0 + "/other", "../1/license.xml"))


@_case("symlinks", "into_other_category", expect=(T0 + "/ann",))
def _mutation_018(arch, ctx):
    arch.add_to_tree(T0, symlink(T0 + "/ann", "../../announcements/0/welcome.wav"))


@_case("symlinks", "to_dump_member", expect=(T0 + "/dump",))
def _mutation_019(arch, ctx):
    arch.add_to_tree(T0, symlink(T0 + "/dump", "../../../db/core.pgdump"))


@_case("symlinks", "chain_leaves_tree", expect=(T0 + "/s1", T0 + "/s2"))
def _mutation_020(arch, ctx):
    arch.add_to_tree(T0, directory(T0 + "/d"), symlink(T0 + "/s1", "d/.."), symlink(T0 + "/s2", "s1/../1"))


@_case("symlinks", "retargeted_later", expect=(T0 + "/sip-link.conf",))
def _mutation_021(arch, ctx):
    # The inside link sip-link.conf -> sip.conf appears again, now pointing into another tree.
    arch.add_to_tree(T0, symlink(T0 + "/sip-link.conf", "../1/starface.properties"))


@_case("symlinks", "earlier_link_retargeted_by_later_dir_link", expect=(T0 + "/a", T0 + "/b"))
def _mutation_022(arch, ctx):
    # a -> b/x stays inside while b is a directory; a later member turns b into a link out of the tree.
    arch.add_to_tree(T0, directory(T0 + "/b"), symlink(T0 + "/a", "b/x"), symlink(T0 + "/b", ".."))


@_case("symlinks", "tree_root_is_symlink", expect=(T0,))
def _mutation_023(arch, ctx):
    arch.member(T0).kind = "symlink"
    arch.member(T0).linkname = ctx.sentinel


@_case("symlinks", "tree_root_link_inside_archive", expect=(T1,))
def _mutation_024(arch, ctx):
    root = arch.member(T1)
    root.kind, root.linkname = "symlink", "0"


# hardlinks -----------------------------------------------------------------------------
@_case("hardlinks", "across_trees", expect=(T1 + "/h",))
def _mutation_025(arch, ctx):
    arch.add_to_tree(T1, hardlink(T1 + "/h", T0 + "/sip.conf"))


@_case("hardlinks", "across_categories", expect=(ANN + "/h",))
def _mutation_026(arch, ctx):
    arch.add_to_tree(ANN, hardlink(ANN + "/h", T0 + "/sip.conf"))


@_case("hardlinks", "to_dump", expect=(T0 + "/h",))
def _mutation_027(arch, ctx):
    arch.add_to_tree(T0, hardlink(T0 + "/h", DBC))


@_case("hardlinks", "to_manifest", expect=(T0 + "/h",))
def _mutation_028(arch, ctx):
    arch.add_to_tree(T0, hardlink(T0 + "/h", MANIFEST))


@_case("hardlinks", "to_nothing", expect=(T0 + "/h",))
def _mutation_029(arch, ctx):
    arch.add_to_tree(T0, hardlink(T0 + "/h", T0 + "/no-such-file"))


@_case("hardlinks", "to_later_member", expect=(T0 + "/a-first",))
def _mutation_030(arch, ctx):
    arch.members.insert(arch.index(T0) + 1, hardlink(T0 + "/a-first", T0 + "/sip.conf"))


@_case("hardlinks", "absolute", expect=(T0 + "/h",))
def _mutation_031(arch, ctx):
    arch.add_to_tree(T0, hardlink(T0 + "/h", os.path.join(ctx.sentinel, "keep.txt")))


@_case("hardlinks", "dotdot", expect=(T0 + "/h",))
def _mutation_032(arch, ctx):
    arch.add_to_tree(T0, hardlink(T0 + "/h", T0 + "/../1/license.xml"))


@_case("hardlinks", "to_symlink", expect=(T0 + "/h",))
def _mutation_033(arch, ctx):
    arch.add_to_tree(T0, hardlink(T0 + "/h", T0 + "/sip-link.conf"))


@_case("hardlinks", "to_directory", expect=(T1 + "/h",))
def _mutation_034(arch, ctx):
    arch.add_to_tree(T1, hardlink(T1 + "/h", T1 + "/certs"))


# special files -------------------------------------------------------------------------
@_case("special", "char_device", expect=(T0 + "/null",))
def _mutation_035(arch, ctx):
    arch.add_to_tree(T0, Member(T0 + "/null", "chr", mode=0o666))


@_case("special", "block_device", expect=(T0 + "/sda",))
def _mutation_036(arch, ctx):
    arch.add_to_tree(T0, Member(T0 + "/sda", "blk", mode=0o660))


@_case("special", "fifo", expect=(T0 + "/pipe",))
def _mutation_037(arch, ctx):
    arch.add_to_tree(T0, Member(T0 + "/pipe", "fifo"))


@_case("special", "unknown_type", expect=(T0 + "/odd",))
def _mutation_038(arch, ctx):
    arch.add_to_tree(T0, Member(T0 + "/odd", "type:Z"))


@_case("special", "gnu_sparse", expect=(T0 + "/sparse",))
def _mutation_039(arch, ctx):
    arch.add_to_tree(T0, Member(T0 + "/sparse", "type:S"))


# duplicates ----------------------------------------------------------------------------
@_case("duplicates", "same_file_twice", expect=(T0 + "/sip.conf",))
def _mutation_040(arch, ctx):
    first = arch.member(T0 + "/sip.conf")
    second = file(first.name, first.data, listed=False)
    arch.add_to_tree(T0, second)


@_case("duplicates", "file_twice_other_content", expect=(T0 + "/sip.conf",))
def _mutation_041(arch, ctx):
    arch.add_to_tree(T0, file(T0 + "/sip.conf", b"[general]\nallowguest=yes\n", listed=False))


@_case("duplicates", "file_then_directory", expect=(T0 + "/sip.conf",))
def _mutation_042(arch, ctx):
    arch.add_to_tree(T0, directory(T0 + "/sip.conf"))


@_case("duplicates", "directory_then_file", expect=(T1 + "/certs",))
def _mutation_043(arch, ctx):
    arch.add_to_tree(T1, file(T1 + "/certs", b"x", listed=False))


@_case("duplicates", "file_then_symlink", expect=(T0 + "/extensions.conf",))
def _mutation_044(arch, ctx):
    arch.add_to_tree(T0, symlink(T0 + "/extensions.conf", "sip.conf"))


@_case("duplicates", "manifest_twice", expect=(MANIFEST,))
def _mutation_045(arch, ctx):
    arch.add(file(MANIFEST, json.dumps({"format": 1}).encode(), listed=False))


@_case("duplicates", "checksums_twice", expect=(CHECKSUMS,))
def _mutation_046(arch, ctx):
    arch.members.append(file(CHECKSUMS, _CHECKSUMS_DATA))


@_case("duplicates", "listed_twice", expect=(T0 + "/sip.conf",))
def _mutation_047(arch, ctx):
    data = arch.member(T0 + "/sip.conf").data
    arch.sums_extra.append((T0 + "/sip.conf", _digest(data)))


@_case("duplicates", "tree_root_twice", expect=(T0,))
def _mutation_048(arch, ctx):
    arch.add_to_tree(T1, directory(T0))


# manifest: the document itself -----------------------------------------------------------
def _raw_manifest(data: bytes):
    def mutate(arch, ctx):
        arch.manifest_raw = data
    return mutate


for _name, _data in (("not_json", b"{this is not json"), ("not_utf8", b'{"format": 1, "job": "\xff\xfe"}'),
                     ("json_array", b"[]"), ("json_null", b"null"), ("json_string", b'"manifest"'),
                     ("json_number", b"1"), ("empty", b""), ("deep_nesting", b"[" * 200000 + b"]" * 200000),
                     ("deep_nesting_objects", b'{"a":' * 100000 + b"1" + b"}" * 100000)):
    _CASES.append(Case(_name, "manifest", _raw_manifest(_data), (MANIFEST,)))


def _huge_manifest(arch, ctx):
    arch.manifest["padding"] = "x" * (17 * MB)


def _many_sources(arch, ctx):
    rest = {k: v for k, v in arch.manifest.items() if k != "sources"}
    arch.manifest_raw = json.dumps(rest).encode()[:-1] + b', "sources": [' + b"{}," * (MANY_SOURCES - 1) + b"{}]}"


_CASES.append(Case("huge", "manifest", _huge_manifest, (MANIFEST,), heavy=True))
_CASES.append(Case("many_sources", "manifest", _many_sources, (MANIFEST, "sources"), heavy=True))


@_case("manifest", "not_first", expect=(MANIFEST,))
def _mutation_049(arch, ctx):
    arch.members.insert(0, directory("files"))


@_case("manifest", "missing", expect=(MANIFEST,))
def _mutation_050(arch, ctx):
    arch.members.pop(0)


@_case("manifest", "is_directory", expect=(MANIFEST,))
def _mutation_051(arch, ctx):
    arch.members[0] = directory(MANIFEST)


@_case("manifest", "is_symlink", expect=(MANIFEST,))
def _mutation_052(arch, ctx):
    arch.members[0] = symlink(MANIFEST, DBC)


@_case("manifest", "not_listed", expect=(MANIFEST,))
def _mutation_053(arch, ctx):
    arch.members[0].listed = False


def _set_field(field: str, value):
    def mutate(arch, ctx):
        if value is MISSING:
            del arch.manifest[field]
        else:
            arch.manifest[field] = copy.deepcopy(value)
    return mutate


_NAN, _INF = float("nan"), float("inf")
TOP_FIELDS = {
    "format": [None, "2", 3, 0, True, 2.0, [], {}, MISSING],
    "tool": [None, 5, [], {}, MISSING],
    "job": [None, 5, [], {}, MISSING],
    "host": [None, 5, [], {}, MISSING],
    "created": [None, 5, [], {}, MISSING],
    "categories": [None, "core", 5, {}, [5], [None], [["core"]], ["evil"], [], ["core", "core"], MISSING],
    "sources": [None, "x", 5, {}, [None], [5], ["x"], [[]], [], MISSING],
    "compression": [None, 5, "lzma", [], MISSING],
    "encrypted": [None, "no", 1, [], MISSING],
    "encryption": [5, "rot13", [], {}],
}


_LABELS: set = set()


def _label(value, scope: str) -> str:
    """A readable, unique (within `scope`) name for a wrong value."""
    if value is MISSING:
        text = "missing"
    elif value is None:
        text = "null"
    elif isinstance(value, float) and math.isnan(value):
        text = "nan"
    else:
        shown = json.dumps(value) if not isinstance(value, str) else value
        shown = shown.replace("[", "L").replace("]", "").replace("{", "D").replace("}", "").replace("/", "S")
        shown = shown.replace(".", "dot").replace("\0", "NUL").replace('"', "")
        text = "".join(c if c.isalnum() else "_" for c in "%s_%s" % (type(value).__name__, shown))[:40].rstrip("_")
    label, number = text, 2
    while (scope, label) in _LABELS:
        label, number = "%s_%d" % (text, number), number + 1
    _LABELS.add((scope, label))
    return label


for _field, _values in TOP_FIELDS.items():
    for _value in _values:
        _CASES.append(Case("%s_%s" % (_field, _label(_value, _field)), "manifest", _set_field(_field, _value), (_field,)))


def _set_source(member: str, field: str, value):
    def mutate(arch, ctx):
        src = arch.source(member)
        if value is MISSING:
            del src[field]
        else:
            src[field] = copy.deepcopy(value)
    return mutate


SOURCE_FIELDS = {
    T0: {
        "category": [None, 5, [], {}, "evil", "cdr_voicemail", MISSING],
        "kind": [None, 5, [], "shell", "postgresql", MISSING],
        "origin": [None, 5, [], {}, "", "relative/etc/asterisk", "/", "/etc/../etc/asterisk\0x", MISSING],
        "member": [None, 5, [], "", "../x", "/files/core/0", MANIFEST, CHECKSUMS, SIGNATURE, T1, DBC, "files/core/9",
                   "files/core/00", "files/core/0/", "files/core/0/../1", MISSING],
        # null and missing are allowed (docs/sar-format.md); a declared size below the real one is caught
        # by the cap (declared + 10 % + 64 MiB), not refused as such.
        "size": [-1, "1", 1.5, True, 10 ** 30, 2 ** 53, _NAN, _INF, [], {}],
        "files": [-1, "1", 1.5, True, [], 2 ** 53],
    },
    DBC: {
        "category": [None, 5, "evil", "announcements"],
        "kind": [None, "files", "shell"],
        "member": [None, T0, "db/core.pgdump/../x", "db/evil.pgdump", MANIFEST],
        "size": [-1, "1", _NAN, 10 ** 30],
    },
}

for _member, _fields in SOURCE_FIELDS.items():
    _short = "tree" if _member == T0 else "dump"
    for _field, _values in _fields.items():
        for _value in _values:
            _CASES.append(Case("%s_%s_%s" % (_short, _field, _label(_value, _short + _field)), "manifest",
                               _set_source(_member, _field, _value), (_field, _member)))


@_case("manifest", "source_listed_twice", expect=(T0, "sources[3]", "twice"))
def _mutation_054(arch, ctx):
    arch.manifest["sources"].insert(3, copy.deepcopy(arch.source(T0)))


@_case("manifest", "source_entry_is_list", expect=("sources",))
def _mutation_055(arch, ctx):
    arch.manifest["sources"][0] = [DBC]


# links members: every wrong shape --------------------------------------------------------
def _links(entries_or_raw):
    def mutate(arch, ctx):
        data = entries_or_raw(ctx) if callable(entries_or_raw) else entries_or_raw
        arch.member(LINKS0).data = data if isinstance(data, bytes) else links_bytes(data)
    return mutate


_MOH = {"path": "moh", "target": "/usr/share/asterisk/moh", "mtime": MTIME, "owner": "root", "group": "root",
        "uid": 0, "gid": 0}


def _moh(**over):
    entry = dict(_MOH)
    for key, value in over.items():
        if value is MISSING:
            entry.pop(key, None)
        else:
            entry[key] = value
    return entry


LINKS_SHAPES = {
    "string": "moh", "object": {"moh": "/usr/share/asterisk/moh"}, "null": None, "number": 5,
    "null_entry": [None], "string_entry": ["moh"], "list_entry": [["moh", "/x"]],
    "path_int": [_moh(path=5)], "path_null": [_moh(path=None)], "path_missing": [_moh(path=MISSING)],
    "path_nul": [_moh(path="mo\0h")], "path_dotdot": [_moh(path="../../escaped")],
    "path_absolute": [_moh(path="/etc/cron.d/escaped")], "path_empty": [_moh(path="")],
    "path_dot": [_moh(path=".")], "path_trailing_slash": [_moh(path="moh/")],
    "path_existing_file": [_moh(path="sip.conf")], "path_missing_parent": [_moh(path="nodir/moh")],
    "path_through_inside_link": [_moh(path="sip-link.conf/moh")],
    "path_twice": [_moh(), _moh()],
    "target_int": [_moh(target=5)], "target_null": [_moh(target=None)], "target_list": [_moh(target=["/x"])],
    "target_missing": [_moh(target=MISSING)], "target_nul": [_moh(target="/usr/share\0/x")],
    "target_empty": [_moh(target="")],
    "mtime_huge": [_moh(mtime=10 ** 30)], "mtime_string": [_moh(mtime="yesterday")],
    "mtime_float_nan": [_moh(mtime=_NAN)], "uid_string": [_moh(uid="root", owner=None)],
    "gid_huge": [_moh(gid=10 ** 30, group=None)], "owner_list": [_moh(owner=["root"])],
}
for _name, _shape in LINKS_SHAPES.items():
    _CASES.append(Case(_name, "links", _links(_shape), (LINKS0, "path", "target", "links")))
_CASES.append(Case("not_json", "links", _links(b"\xff\xfenot json"), (LINKS0,)))


@_case("links", "for_missing_tree", expect=("files/core/7.links.json",))
def _mutation_056(arch, ctx):
    arch.add(file("files/core/7.links.json", links_bytes([_MOH])))


@_case("links", "member_is_directory", expect=(LINKS0,))
def _mutation_057(arch, ctx):
    i = arch.index(LINKS0)
    arch.members[i] = directory(LINKS0)


@_case("links", "member_is_symlink", expect=(LINKS0,))
def _mutation_058(arch, ctx):
    i = arch.index(LINKS0)
    arch.members[i] = symlink(LINKS0, "0/sip.conf")


@_case("links", "member_twice", expect=(LINKS0,))
def _mutation_059(arch, ctx):
    arch.add(file(LINKS0, links_bytes([_moh(path="moh2")]), listed=False))


@_case("links", "many_entries", expect=(LINKS0,), heavy=True)
def _mutation_060(arch, ctx):
    body = b",".join(b'{"path":"l%07d","target":"/x"}' % i for i in range(MANY_LINKS))
    arch.member(LINKS0).data = b"[" + body + b"]"


# the profile decides where things go -------------------------------------------------------
@_case("profile", "origin_outside_profile", expect=(T0, "origin"), engine=False, scratch_ok=True)
def _mutation_061(arch, ctx):
    arch.source(T0)["origin"] = ctx.sentinel


@_case("profile", "origin_other_category_path", expect=(T0, "origin"), engine=False, scratch_ok=True)
def _mutation_062(arch, ctx):
    arch.source(T0)["origin"] = ctx.tree_path("announcements", 0)


@_case("profile", "origins_swapped", expect=(T0, T1), engine=False, scratch_ok=True)
def _mutation_063(arch, ctx):
    a, b = arch.source(T0), arch.source(T1)
    a["origin"], b["origin"] = b["origin"], a["origin"]


@_case("profile", "more_trees_than_paths", expect=("files/core/2",), engine=False, scratch_ok=True)
def _mutation_064(arch, ctx):
    arch.add(directory("files/core/2"), file("files/core/2/escaped", b"pwned\n"))
    arch.manifest["sources"].append({"category": "core", "kind": "files", "origin": ctx.sentinel,
                                     "member": "files/core/2", "size": 6, "files": 1})


@_case("profile", "unknown_category", expect=("evil",), scratch_ok=True)
def _mutation_065(arch, ctx):
    arch.add(directory("files/evil/0"), file("files/evil/0/escaped", b"pwned\n"))
    arch.manifest["categories"].append("evil")
    arch.manifest["sources"].append({"category": "evil", "kind": "files", "origin": ctx.sentinel,
                                     "member": "files/evil/0", "size": 6, "files": 1})


@_case("profile", "profile_path_missing", expect=(T1, "paths[1]"), engine=False, scratch_ok=True)
def _mutation_066(arch, ctx):
    arch.remove_tree(T1)
    arch.manifest["sources"].remove(arch.source(T1))


@_case("profile", "dump_for_category_without_tables", expect=("db/announcements.pgdump", "announcements"),
       engine=False, scratch_ok=True)
def _mutation_067(arch, ctx):
    data = ctx.read_dump("core")
    arch.add(file("db/announcements.pgdump", data, mode=0o600))
    arch.manifest["sources"].append({"category": "announcements", "kind": "postgresql", "origin": "postgresql://x",
                                     "member": "db/announcements.pgdump", "size": len(data), "files": 1})


# dumps restore only what their category owns --------------------------------------------------
def _patched_comment(ctx, payload: bytes) -> bytes:
    """The comment dump with its COMMENT statement replaced by `payload`, same length (offsets stay valid)."""
    data = ctx.read_dump("comment")
    old = ctx.comment_defn
    assert data.count(old) == 1, "the COMMENT statement is not in the dump exactly once"
    assert len(payload) < len(old) - 3, "payload too long for the padded comment"
    new = payload + b"\n--" + b"-" * (len(old) - len(payload) - 3)
    return data.replace(old, new)


@_case("dumps", "other_category_table", expect=(DBC, "cdr"), engine=False, scratch_ok=True)
def _mutation_068(arch, ctx):
    arch.set_data(DBC, ctx.read_dump("other_tables"))


@_case("dumps", "cdr_dump_holds_core_tables", expect=(DBV, "users"), engine=False, scratch_ok=True)
def _mutation_069(arch, ctx):
    arch.set_data(DBV, ctx.read_dump("other_tables"))


@_case("dumps", "psql_meta_command", expect=(DBC, "COMMENT"), engine=False, scratch_ok=True)
def _mutation_070(arch, ctx):
    arch.set_data(DBC, _patched_comment(ctx, b"\\! touch %s/meta-command" % ctx.canary.encode()))


@_case("dumps", "copy_to_program", expect=(DBC, "COMMENT"), engine=False, scratch_ok=True)
def _mutation_071(arch, ctx):
    arch.set_data(DBC, _patched_comment(ctx, b"COPY (SELECT 1) TO PROGRAM 'touch %s/copy-program';"
                                        % ctx.canary.encode()))


@_case("dumps", "drop_other_table", expect=(DBC, "COMMENT"), engine=False, scratch_ok=True)
def _mutation_072(arch, ctx):
    arch.set_data(DBC, _patched_comment(ctx, b"DROP TABLE public.cdr CASCADE;"))


@_case("dumps", "create_role", expect=(DBC, "COMMENT"), engine=False, scratch_ok=True)
def _mutation_073(arch, ctx):
    arch.set_data(DBC, _patched_comment(ctx, b"CREATE ROLE sar_hostile_probe SUPERUSER LOGIN;"))


@_case("dumps", "plain_sql_script", expect=(DBC,), engine=False, scratch_ok=True)
def _mutation_074(arch, ctx):
    arch.set_data(DBC, b"\\! touch %s/plain-sql\n" % ctx.canary.encode() + ctx.read_dump("plain"))


@_case("dumps", "not_a_dump", expect=(DBC,), engine=False, scratch_ok=True)
def _mutation_075(arch, ctx):
    arch.set_data(DBC, b"PGDMP" + os.urandom(4000))


# signatures ----------------------------------------------------------------------------------
def _signed(fn):
    def mutate(arch, ctx):
        arch.sign_key = ctx.host_key or ctx.foreign_key
        fn(arch, ctx)
    return mutate


def _sig_case(name, expect=(SIGNATURE,), signed=True):
    def deco(fn):
        _CASES.append(Case(name, "signature", _signed(fn) if signed else fn, tuple(expect)))
        return fn
    return deco


@_sig_case("tampered_after_signing")
def _mutation_076(arch, ctx):
    arch.sig_over = checksums_bytes(arch)  # what the host signed; then a member changes, checksums recomputed
    extra = b"\n[evil]\ntype=friend\n"
    member = arch.member(T0 + "/sip.conf")
    member.data += extra
    arch.source(T0)["size"] += len(extra)


@_sig_case("bit_flipped")
def _mutation_077(arch, ctx):
    arch.sig_flip = True


@_sig_case("over_the_manifest")
def _mutation_078(arch, ctx):
    arch.sig_over = json.dumps(arch.manifest, indent=1).encode()


@_sig_case("foreign_key_claims_the_hosts")
def _mutation_079(arch, ctx):
    arch.sign_key = ctx.foreign_key
    if ctx.host_key is not None:
        arch.sig_fields["public_key"] = public_key_text(ctx.host_key)


@_sig_case("not_last")
def _mutation_080(arch, ctx):
    arch.members.insert(arch.checksums_index(), file(SIGNATURE, _SIGNATURE_DATA, listed=False))


@_sig_case("twice")
def _mutation_081(arch, ctx):
    arch.members += [file(SIGNATURE, _SIGNATURE_DATA), file(SIGNATURE, _SIGNATURE_DATA)]


@_sig_case("member_after_it", expect=(SIGNATURE, T0 + "/late.conf"))
def _mutation_082(arch, ctx):
    arch.members += [file(SIGNATURE, _SIGNATURE_DATA), file(T0 + "/late.conf", b"late\n", listed=False)]


@_sig_case("not_json")
def _mutation_083(arch, ctx):
    arch.sig_raw = b"\xffnot json"


@_sig_case("json_list")
def _mutation_084(arch, ctx):
    arch.sig_raw = b"[]"


@_sig_case("too_large")
def _mutation_085(arch, ctx):
    arch.sig_fields["padding"] = "x" * 8000


@_sig_case("algorithm_rsa", expect=(SIGNATURE, "algorithm"))
def _mutation_086(arch, ctx):
    arch.sig_fields["algorithm"] = "rsa"


@_sig_case("public_key_int", expect=(SIGNATURE, "public_key"))
def _mutation_087(arch, ctx):
    arch.sig_fields["public_key"] = 5


@_sig_case("public_key_missing", expect=(SIGNATURE, "public_key"))
def _mutation_088(arch, ctx):
    arch.sig_fields["public_key"] = DROP


@_sig_case("signature_not_base64", expect=(SIGNATURE, "signature"))
def _mutation_089(arch, ctx):
    arch.sig_fields["signature"] = "not base64 !!"


@_sig_case("signature_list", expect=(SIGNATURE, "signature"))
def _mutation_090(arch, ctx):
    arch.sig_fields["signature"] = ["AAAA"]


@_sig_case("member_is_directory", signed=False)
def _mutation_091(arch, ctx):
    arch.members.append(directory(SIGNATURE))


@_sig_case("member_is_symlink", signed=False)
def _mutation_092(arch, ctx):
    arch.members.append(symlink(SIGNATURE, CHECKSUMS))


@_sig_case("listed_in_checksums")
def _mutation_093(arch, ctx):
    arch.sums_extra.append((SIGNATURE, "0" * 64))


# header bombs ----------------------------------------------------------------------------------
def _before(name: str, bomb):
    def mutate(arch, ctx):
        arch.members.insert(arch.index(name), bomb())
    return mutate


_CASES += [
    Case("pax_header_1gb", "headers", _before(ANN + "/welcome.wav", lambda: pax_record_bomb(PAX_BOMB)), (), heavy=True),
    Case("global_pax_header", "headers",
         _before(ANN + "/welcome.wav", lambda: pax_record_bomb(GLOBAL_PAX_BOMB, tarfile.XGLTYPE)), (), heavy=True),
    Case("pax_many_records", "headers", _before(ANN + "/welcome.wav", lambda: pax_many_records(MANY_PAX_RECORDS)),
         (), heavy=True),
    Case("gnu_longname", "headers", _before(ANN + "/welcome.wav", lambda: gnu_longname_bomb(LONGNAME_BOMB)),
         (), heavy=True),
    Case("many_members", "headers", _before(T0 + "/extensions.conf", lambda: many_directories(T0, MANY_MEMBERS)),
         (), heavy=True),
]


@_case("headers", "pax_size_lies", expect=())
def _mutation_094(arch, ctx):
    arch.member(T0 + "/sip.conf").pax = {"size": str(10 ** 12)}


@_case("headers", "pax_linkpath_leaves", expect=(T0 + "/sip-link.conf",))
def _mutation_095(arch, ctx):
    arch.member(T0 + "/sip-link.conf").pax = {"linkpath": ctx.sentinel}


# decompression bombs -----------------------------------------------------------------------------
@_case("decompression", "tree_file_far_larger_than_declared", expect=(ANN + "/welcome.wav", ANN, "size"), heavy=True)
def _mutation_096(arch, ctx):
    arch.member(ANN + "/welcome.wav").data = Fill(OVERSIZE)


@_case("decompression", "dump_far_larger_than_declared", expect=(DBV, "size"), heavy=True)
def _mutation_097(arch, ctx):
    arch.member(DBV).data = Fill(OVERSIZE)


@_case("decompression", "zero_tail", expect=(), heavy=True)
def _mutation_098(arch, ctx):
    arch.tail = Fill(ZERO_TAIL)


@_case("decompression", "zero_tail_gzip", expect=(), heavy=True, compression="gzip")
def _mutation_099(arch, ctx):
    arch.tail = Fill(ZERO_TAIL)


@_case("decompression", "zstd_window_128mb", expect=(), heavy=True)
def _mutation_100(arch, ctx):
    # A member declared at its true size, compressed with a 128 MB window (the decoder's default limit):
    # decoding it takes the window's memory unless the reader caps the window.
    arch.zstd_window_log = 27
    arch.set_data(ANN + "/welcome.wav", Fill(WINDOW_MEMBER))
    src = arch.source(ANN)
    src["size"] = sum(_size(m.data) for m in arch.members if m.name.startswith(ANN + "/") and m.regular)


@_case("decompression", "junk_after_frame", expect=())
def _mutation_101(arch, ctx):
    arch.after = b"\x28\xb5\x2f\xfd" + os.urandom(64)


# -- selection ------------------------------------------------------------------------------

def cases(soak: bool = SOAK) -> list:
    """Every case; under SAR_SOAK also gzip and host-signed variants and seeded random combinations."""
    names = [c.ident for c in _CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    out = [c for c in _CASES if soak or not c.soak_only]
    if not soak:
        return out
    light = [c for c in out if not c.heavy and not c.soak_only and c.compression == "zstd"]
    for c in light:
        out.append(dataclasses.replace(c, name=c.name + "+gzip", compression="gzip"))
        if c.cls not in ("signature",):
            out.append(dataclasses.replace(c, name=c.name + "+signed", signed=True))
    rng = random.Random(SOAK_SEED)
    mixable = [c for c in light if c.cls not in ("manifest", "dumps") or c.name.startswith(("tree_", "dump_"))]
    for number in range(SOAK_COMBINATIONS):
        picked = rng.sample(mixable, rng.choice((2, 3)))
        out.append(combine(picked, "combo%04d" % number, signed=rng.random() < 0.3,
                           compression=rng.choice(("zstd", "gzip"))))
    return out


def combine(parts: list, name: str, signed: bool = False, compression: str = "zstd") -> Case:
    def mutate(arch, ctx):
        applied = 0
        for part in parts:
            snapshot = copy.deepcopy(arch, {id(arch.sign_key): arch.sign_key})
            try:
                part.mutate(arch, ctx)
                applied += 1
            except (LookupError, KeyError, TypeError, AttributeError, ValueError):
                # An earlier part removed what this one changes: keep the archive as it was.
                arch.__dict__.update(snapshot.__dict__)
        assert applied, "no part of %s applied" % name
    return Case("%s[%s]" % (name, "+".join(p.ident for p in parts)), "combined", mutate,
                tuple(t for p in parts for t in p.expect) if all(p.expect for p in parts) else (),
                engine=any(p.engine for p in parts), scratch_ok=all(p.scratch_ok for p in parts),
                signed=signed, compression=compression)


def build(case: Case, ctx: Ctx, path: str) -> str:
    arch = base(ctx, compression=case.compression)
    if case.signed and ctx.host_key is not None:
        arch.sign_key = ctx.host_key
    case.mutate(arch, ctx)
    return write(arch, path)


def build_valid(ctx: Ctx, path: str, sign_key=None, compression: str = "zstd") -> str:
    """The base archive itself (unsigned, or signed with `sign_key`)."""
    arch = base(ctx, compression=compression)
    arch.sign_key = sign_key
    return write(arch, path)
