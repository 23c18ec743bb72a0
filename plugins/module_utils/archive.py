# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The .sar archive (SPEC section 5; docs/sar-format.md): write (streaming), read, verify, safe extract.

Layers, outermost last: tar (pax) -> zstd or gzip -> optional age encryption -> file.
Members: `manifest.json` first, `checksums.sha256` (sha256sum -c format) after every other
member, then optionally the ed25519 signature of the checksums (`signature.ed25519`).
Everything streams: memory stays bounded whatever the size of the data.

Archives read back from a share, a server or a USB drive are untrusted: every reader checks
every header, name and manifest field against one set of rules and fixed limits (documented
in docs/sar-format.md) before acting on it, and refuses anything else with ArchiveError."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import datetime
import errno
import grp
import gzip
import hashlib
import json
import os
import posixpath
import pwd
import queue
import re
import stat
import struct
import sys
import tarfile
import threading
import time
import zlib

from . import agecrypt, signing
from .errors import ArchiveError, DecryptKeyError, MissingLibrary, SourceError, ValidationError
from .fsutil import sha256_stream
from .job import CATEGORIES, NAME_RE

try:
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

# Format of archives written from now on; readers accept every format in FORMATS.
# 2: optional signature member after checksums.sha256; manifests validated strictly.
FORMAT_VERSION = 2
FORMATS = (1, 2)
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.sha256"
SIGNATURE = signing.SIGNATURE
COMPRESSIONS = ("zstd", "gzip")
KIND_DB = "postgresql"
KIND_FILES = "files"
KINDS = (KIND_DB, KIND_FILES)
ENCRYPTIONS = ("passphrase", "recipients")
# Next to tree member `files/<category>/<index>`: the tree's symlinks that point out of it (JSON list).
LINKS_SUFFIX = ".links.json"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
COPY_CHUNK = 1024 * 1024
# The writer hashes on a thread of its own: source data is read into HASH_BUFFERS reused buffers of
# COPY_CHUNK bytes, and at most HASH_QUEUE pieces wait to be hashed (a few MiB in all).
HASH_BUFFERS = 4
HASH_QUEUE = 32
ZSTD_LEVEL = 3
GZIP_LEVEL = 6
# gzip is compressed in blocks of GZIP_BLOCK bytes on up to GZIP_MAX_THREADS threads (as pigz does:
# each block primed with the 32 KiB before it, ended on a byte boundary, so the blocks make one
# deflate stream and one gzip member); at most 2 blocks a thread are in flight.
GZIP_BLOCK = 1024 * 1024
GZIP_MAX_THREADS = 4
# zstd worker threads: a few overlap compression with reading; more would only cost memory.
# Workers buffer several jobs each: 2 MiB jobs keep that near 10-15 MiB a thread (zstd's default
# jobs for level 3 cost ~45 MiB a thread) at the same ratio and speed (measured).
ZSTD_MAX_THREADS = 4
ZSTD_JOB_SIZE = 2 * 1024 * 1024
# A tree compressed ahead of its turn (ArchiveWriter.spool_tree, while the database dumps run) waits
# in files of at most SPOOL_PART bytes next to the archive, each removed once copied into it: staging
# never holds more than one part twice.
SPOOL_PART = 64 * 1024 * 1024
# The .sar file is written back to disk while it is built: every EARLY_SYNC bytes, a thread of its own
# calls fdatasync() on it, so the fsync at close() that makes the archive durable has only the tail left.
# Without it, a machine with much memory keeps the whole archive dirty until that fsync (the kernel
# starts writing back only at 10 % of RAM), and the run waits for all of it at the end.
EARLY_SYNC = 128 * 1024 * 1024

# ---- Limits: what any archive may cost a reader (docs/sar-format.md, "Limits"). Together they keep
# verify and restore of any file, however crafted, under ~100 MB of memory. The writer refuses to
# build an archive beyond them, so a backup never turns out unreadable at restore time.
# Members read into memory whole. A real manifest is a few KiB (later: row counts per table);
# hostile JSON expands ~25x in memory.
MAX_MANIFEST = 256 * 1024
# Tar members (every entry of every tree, plus manifest, checksums, links, signature). The scan
# keeps ~0.3 KiB per member besides its name (the member list, digests, the checksums member).
MAX_MEMBERS = 100000
# Member names and link targets, all together, as held in memory (1 byte a character for ASCII,
# up to 4 otherwise): ~100,000 names of 80 characters.
MAX_NAMES_TOTAL = 8 * 1024 * 1024
# One member name (UTF-8 bytes: PATH_MAX, as extraction needs it to fit a path), one path component
# (NAME_MAX) and one link target (PATH_MAX - 1).
MAX_NAME = 4096
MAX_COMPONENT = 255
# Directory levels in one member name: PATH_MAX alone would allow 2048 ("a/a/..."), and extraction,
# verification and removal walk each level; an appliance's trees are a few dozen levels deep.
MAX_DEPTH = 256
MAX_LINK_TARGET = 4095
# Extended tar headers are refused before tarfile reads them into memory: a pax header of a real
# member holds a long or non-ASCII name (a few hundred bytes), a GNU long name header one name.
MAX_PAX_HEADER = 64 * 1024
MAX_GNU_LONG = MAX_NAME + 512
MAX_EXTENDED_TOTAL = 64 * 1024 * 1024
# At most this many extended headers (pax, GNU long name/link) in front of one member.
MAX_EXTENDED_CHAIN = 3
# zstd frames asking for a larger window are refused (our writer: level 3, 2 MiB; zstd -19: 8 MiB).
MAX_ZSTD_WINDOW = 8 * 1024 * 1024
# After the tar end-of-archive block: zero padding to the end of the record (10 KiB), a few records at most.
MAX_TAIL = 64 * 1024
# All links members together (~200 bytes a link: ~1,300 links pointing out of their trees).
MAX_LINKS = 256 * 1024
# A source's regular members may exceed the size the manifest declares by this much: files grow
# (logs, recordings, voicemail arriving) between measuring a tree and archiving it, and the
# archive takes each file at its size when it is reached. More is not growth but a decompression
# bomb, and restore budgets staging space from the declared sizes.
SIZE_SLACK_PERCENT = 10
SIZE_SLACK_BYTES = 64 * 1024 * 1024
# checksums.sha256 may exceed the exact size its lines need (known from the members) only by this.
CHECKSUMS_SLACK = 4096
# Resolving one symlink (following the archive's own symlinks): components walked and links followed;
# and the steps all symlinks of an archive may take together.
MAX_RESOLVE_STEPS = 256
MAX_LINK_HOPS = 64
MAX_RESOLVE_TOTAL = 4 * 1000 * 1000
# Plausible member metadata (os.utime, os.chown refuse beyond) and declared sizes (2^53: exact in JSON).
_MAX_MTIME = 2 ** 40
_MAX_COUNT = 2 ** 53
_MAX_ID = 2 ** 32 - 1
_MAX_OWNER = 256

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_RESERVED = (MANIFEST, CHECKSUMS, SIGNATURE)
_DIR = "dir"  # value of a directory in a scan's member table (regular files: their SHA-256 digest)
_MISSING = object()
_LINK_KEYS = ("path", "target", "mtime", "owner", "group", "uid", "gid")
_STR_BASE = sys.getsizeof("")


class _MemberRow:
    """The instances' __dict__ share one key table (PEP 412): taken as a plain dict, an entry of the
    member list costs half the memory of a dict literal (96 bytes instead of 184; measured)."""


class _LinkRow:
    """The same for the entries of links members."""


# -- naming and the manifest: what an archive is called and what it declares about itself ---------
# <job>_<host>_<YYYYMMDDTHHMMSSZ>.sar (UTC); an upload's temporary name never ends in .sar.
ARCHIVE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*_[A-Za-z0-9-]+_\d{8}T\d{6}Z\.sar$")
_NAME_TIME = "%Y%m%dT%H%M%SZ"


def archive_name(job: str, host: str, moment: datetime.datetime) -> str:
    """<job>_<host>_<YYYYMMDDTHHMMSSZ>.sar (UTC)."""
    return "%s_%s_%s.sar" % (job, host, moment.astimezone(datetime.timezone.utc).strftime(_NAME_TIME))


def archive_pattern(job: str) -> re.Pattern:
    """Names of this job's archives: <job>_<host>_<YYYYMMDDTHHMMSSZ>.sar."""
    return re.compile(r"^%s_[A-Za-z0-9-]+_\d{8}T\d{6}Z\.sar$" % re.escape(job))


def partial_name(name: str) -> str:
    """Temporary name an upload uses until it is complete (never ends in .sar)."""
    return ".%s.partial" % name


def partial_pattern(job: str) -> re.Pattern:
    """This job's leftover partials (and nothing else: retention removes only these)."""
    return re.compile(r"^\.%s_[A-Za-z0-9-]+_\d{8}T\d{6}Z\.sar\.partial$" % re.escape(job))


def new_manifest(*, job: str, host: str, created: str, categories, compression: str, encryption, sources,
                 tool: str) -> dict:
    """The manifest of an archive written now (FORMAT_VERSION): `encryption` is the job's encryption
    option (None, {passphrase: ...} or {recipients: [...]}: only its kind is recorded, never a secret);
    `sources` the archived sources, in member order. ArchiveWriter.add_manifest validates it as readers do."""
    return {
        "format": FORMAT_VERSION,
        "tool": tool,
        "job": job,
        "host": host,
        "created": created,
        "categories": list(categories),
        "compression": compression,
        "encrypted": bool(encryption),
        "encryption": (None if not encryption else ("passphrase" if encryption.get("passphrase") else "recipients")),
        "sources": list(sources),
    }


def _member_row(name: str, kind: str, size: int) -> dict:
    row = _MemberRow()
    # Attributes first, always in this order, then __dict__: that keeps the key table shared.
    row.name = name
    row.type = kind
    row.size = size
    return row.__dict__


def _link_row(entry: dict) -> dict:
    row = _LinkRow()
    for key in _LINK_KEYS:
        setattr(row, key, entry.get(key))
    return row.__dict__


def _zstd():
    if zstandard is None:
        raise MissingLibrary("zstandard", "zstd compression of archives")
    return zstandard


# ---------------------------------------------------------------- helpers

_UNAMES: dict = {}
_GNAMES: dict = {}


def _uname(uid: int) -> str:
    if uid not in _UNAMES:
        try:
            _UNAMES[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _UNAMES[uid] = ""
    return _UNAMES[uid]


def _gname(gid: int) -> str:
    if gid not in _GNAMES:
        try:
            _GNAMES[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            _GNAMES[gid] = ""
    return _GNAMES[gid]


def checksum_line(digest: str, name: str) -> str:
    """One line of `sha256sum` output, escaped the way coreutils does for odd names."""
    if "\\" in name or "\n" in name:
        return "\\%s  %s\n" % (digest, name.replace("\\", "\\\\").replace("\n", "\\n"))
    return "%s  %s\n" % (digest, name)


def _iter_checksums(data: bytes):
    """(line number, name, hexdigest) of each line of a checksums.sha256 member, one at a time."""
    start = number = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        line = data[start:end].decode("utf-8", "surrogateescape")
        start = end + 1
        number += 1
        if not line:
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, sep, name = line[:64], line[64:66], line[66:]
        if len(digest) != 64 or sep not in ("  ", " *") or not name or digest.strip("0123456789abcdef"):
            raise ArchiveError("checksums.sha256 is malformed (line %d)" % number)
        yield number, (_unescape(name) if escaped else name), digest


def parse_checksums(data: bytes) -> list:
    """[(name, hexdigest)] from a checksums.sha256 member; ArchiveError when malformed."""
    return [(name, digest) for _number, name, digest in _iter_checksums(data)]


def _line_size(name: str) -> int:
    """The bytes of `name`'s line in checksums.sha256, as checksum_line() writes it."""
    size = len(name) if name.isascii() else len(name.encode("utf-8", "surrogateescape"))
    odd = name.count("\\") + name.count("\n")
    return 67 + size + (odd + 1 if odd else 0)


def _weight(text: str) -> int:
    """What a name costs in memory beyond an empty string (1 to 4 bytes a character)."""
    return sys.getsizeof(text) - _STR_BASE if text else 0


def _unescape(name: str) -> str:
    out, i = [], 0
    while i < len(name):
        if name[i] == "\\" and i + 1 < len(name) and name[i + 1] in "\\n":
            out.append("\\" if name[i + 1] == "\\" else "\n")
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _show(value, limit: int = 80) -> str:
    """repr() of a value from an untrusted archive, cut short for a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _encoded(text: str) -> bytes | None:
    """The bytes a name stands for on disk; None when it cannot be one (a lone surrogate from JSON)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return None


def path_problem(name, what: str = "path") -> str | None:
    """Why `name` is not a canonical relative path (a/b/c: no '', '.', '..' parts, no NUL,
    within the name limits); None when it is one."""
    if not isinstance(name, str):
        return "is not a string"
    if not name:
        return "is empty"
    if "\0" in name:
        return "has a NUL character"
    if name.startswith("/"):
        return "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "has '..' in its path"
    if "" in parts or "." in parts:
        return "is not in canonical form (empty or '.' components)"
    if len(parts) > MAX_DEPTH:
        return "is more than %d directories deep" % MAX_DEPTH
    raw = _encoded(name)
    if raw is None:
        return "is not a valid file name (unencodable characters)"
    if len(raw) > MAX_NAME:
        return "is longer than %d bytes" % MAX_NAME
    if len(raw) > MAX_COMPONENT and max(len(p) for p in raw.split(b"/")) > MAX_COMPONENT:
        return "has a %s component longer than %d bytes" % (what, MAX_COMPONENT)
    return None


def _target_problem(target) -> str | None:
    """Why `target` cannot be a symlink's target; None when it can."""
    if not isinstance(target, str):
        return "is not a string"
    if not target:
        return "is empty"
    if "\0" in target:
        return "has a NUL character"
    raw = _encoded(target)
    if raw is None:
        return "is not a valid path (unencodable characters)"
    if len(raw) > MAX_LINK_TARGET:
        return "is longer than %d bytes" % MAX_LINK_TARGET
    return None


def _owner_problem(value) -> str | None:
    if len(value) > _MAX_OWNER or "\0" in value:
        return "is not a plausible user or group name"
    return None


def _member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a member may not be extracted anywhere, judged on its own header; None when fine."""
    why = path_problem(info.name)
    if why is not None:
        return "its name %s" % why
    if info.ischr() or info.isblk():
        return "device file"
    if info.isfifo():
        return "fifo"
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()) or info.issparse():
        return "unsupported member type %r" % info.type
    if info.issym():
        why = _target_problem(info.linkname)
        if why is not None:
            return "its symlink target %s" % why
    elif info.islnk():
        why = path_problem(info.linkname)
        if why is not None:
            return "its hardlink target %s" % why
    if not isinstance(info.size, int) or info.size < 0:
        return "negative size"
    mtime = info.mtime
    if not isinstance(mtime, (int, float)) or not -_MAX_MTIME < mtime < _MAX_MTIME:
        return "implausible modification time %s" % _show(mtime)
    for field in ("uid", "gid"):
        value = getattr(info, field)
        if not isinstance(value, int) or not 0 <= value <= _MAX_ID:
            return "implausible %s %s" % (field, _show(value))
    for field in ("uname", "gname"):
        if _owner_problem(getattr(info, field) or ""):
            return "implausible %s %s" % (field, _show(getattr(info, field)))
    return None


def _check_arcname(name: str) -> str:
    if not isinstance(name, str) or not name.strip("/"):
        raise ValueError("archive member name must be a non-empty string")
    name = name.rstrip("/")
    if name.startswith("/") or ".." in name.split("/") or "\0" in name:
        raise ValueError("archive member name %r must be relative without '..'" % name)
    why = path_problem(name)
    if why is not None:
        raise ValueError("archive member name %r %s" % (name, why))
    return name


def size_cap(declared) -> int:
    """The most bytes a source's regular members may hold when the manifest declares `declared`
    (None: unknown, counted as 0)."""
    declared = declared or 0
    return declared + declared * SIZE_SLACK_PERCENT // 100 + SIZE_SLACK_BYTES


# ---------------------------------------------------------------- manifest

def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _bad(where: str, field: str, problem: str, value=_MISSING) -> ArchiveError:
    if value is _MISSING:
        return ArchiveError("%s: field %s %s" % (where, field, problem))
    return ArchiveError("%s: field %s %s, got %s %s" % (where, field, problem, _json_type(value), _show(value)))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(obj: dict, key: str, where: str, field: str, limit: int = 256) -> str:
    """A required one-line string of at most `limit` characters."""
    if key not in obj:
        raise _bad(where, field, "is missing")
    value = obj[key]
    if not isinstance(value, str) or not value or len(value) > limit or any(c < " " or c == "\x7f" for c in value):
        raise _bad(where, field, "must be a non-empty one-line string of at most %d characters" % limit, value)
    return value


def _count(obj: dict, key: str, where: str, field: str):
    value = obj.get(key)
    if value is not None and (not _is_int(value) or not 0 <= value < _MAX_COUNT):
        raise _bad(where, field, "must be a non-negative integer (below 2^53) or null", value)
    return value


def validate_manifest(manifest) -> dict:
    """Check every field of a manifest (types and values); returns it, or raises ArchiveError
    naming the field (`manifest.json: field sources[2].member must be ...`).

    Unknown keys are allowed and ignored (a newer writer may add some); a known key of the
    wrong type or value is refused."""
    where = MANIFEST
    if not isinstance(manifest, dict):
        raise ArchiveError("%s is not a JSON object: not a .sar archive" % MANIFEST)
    if "format" not in manifest:
        raise _bad(where, "format", "is missing")
    fmt = manifest["format"]
    if not _is_int(fmt) or fmt not in FORMATS:
        raise _bad(where, "format", "must be %s (the formats this sar-backup reads; a newer one wrote this archive?)"
                   % " or ".join(str(f) for f in FORMATS), fmt)
    _text(manifest, "tool", where, "tool")
    if not isinstance(manifest.get("job"), str) or not NAME_RE.match(manifest["job"]):
        raise _bad(where, "job", "must be a job name ([A-Za-z0-9][A-Za-z0-9._-]{0,63})", manifest.get("job"))
    host = _text(manifest, "host", where, "host", 253)
    if "/" in host:
        raise _bad(where, "host", "must be a host name", host)
    _text(manifest, "created", where, "created", 64)
    categories = manifest.get("categories")
    if not isinstance(categories, list) or not categories:
        raise _bad(where, "categories", "must be a non-empty list of categories", categories)
    for i, cat in enumerate(categories):
        if not isinstance(cat, str) or cat not in CATEGORIES:
            raise _bad(where, "categories[%d]" % i, "must be one of %s" % ", ".join(CATEGORIES), cat)
        if cat in categories[:i]:
            raise _bad(where, "categories[%d]" % i, "repeats %r" % cat)
    if manifest.get("compression") not in COMPRESSIONS:
        raise _bad(where, "compression", "must be one of %s" % ", ".join(COMPRESSIONS), manifest.get("compression"))
    encrypted = manifest.get("encrypted")
    if not isinstance(encrypted, bool):
        raise _bad(where, "encrypted", "must be true or false", encrypted)
    encryption = manifest.get("encryption")
    if encryption is not None and encryption not in ENCRYPTIONS:
        raise _bad(where, "encryption", "must be null, %s" % " or ".join(ENCRYPTIONS), encryption)
    if "encryption" in manifest and (encryption is None) == encrypted:
        raise _bad(where, "encryption", "must be %s when encrypted is %s"
                   % ("passphrase or recipients" if encrypted else "null", "true" if encrypted else "false"), encryption)
    sources = manifest.get("sources")
    if not isinstance(sources, list):
        raise _bad(where, "sources", "must be a list", sources)
    members = set()
    for i, src in enumerate(sources):
        field = "sources[%d]" % i
        if not isinstance(src, dict):
            raise _bad(where, field, "must be an object", src)
        cat = src.get("category")
        if not isinstance(cat, str) or cat not in categories:
            raise _bad(where, field + ".category", "must be one of the archive's categories (%s)" % ", ".join(categories), cat)
        kind = src.get("kind")
        if kind not in KINDS:
            raise _bad(where, field + ".kind", "must be %s" % " or ".join(KINDS), kind)
        member = src.get("member")
        if kind == KIND_DB:
            ok = member == "db/%s.pgdump" % cat
            shape = "'db/%s.pgdump' for a postgresql source of category %s" % (cat, cat)
        else:
            index = member[len("files/%s/" % cat):] if isinstance(member, str) and member.startswith("files/%s/" % cat) else ""
            ok = index.isdigit() and index.isascii() and len(index) <= 6 and str(int(index)) == index
            shape = "'files/%s/<index>' (index 0, 1, ...) for a files source of category %s" % (cat, cat)
        if not ok:
            raise _bad(where, field + ".member", "must be " + shape, member)
        if member in members:
            raise _bad(where, field + ".member", "repeats %r (each source has its own member)" % member)
        members.add(member)
        origin = src.get("origin")
        if not isinstance(origin, str) or "\0" in origin or len(origin) > 4096:
            raise _bad(where, field + ".origin", "must be a string without NUL", origin)
        if kind == KIND_FILES and (not origin.startswith("/") or origin == "/" or posixpath.normpath(origin) != origin):
            raise _bad(where, field + ".origin", "must be a normal absolute path (where the tree goes back to)", origin)
        _count(src, "size", where, field + ".size")
        _count(src, "files", where, field + ".files")
    return manifest


def _parse_json(data: bytes, what: str):
    """JSON from an archive member; ArchiveError (never another exception) when it is not JSON."""
    try:
        return json.loads(data.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        raise ArchiveError("%s is not valid JSON" % what) from None


def _parse_manifest(data: bytes) -> dict:
    manifest = _parse_json(data, MANIFEST) if data.strip() else None
    if not isinstance(manifest, dict):
        raise ArchiveError("manifest.json is not a JSON object: not a .sar archive")
    return validate_manifest(manifest)


class _Layout:
    """Which source of a validated manifest each member belongs to."""

    def __init__(self, manifest: dict):
        self.sources = manifest["sources"]
        self.index = {src["member"]: i for i, src in enumerate(self.sources)}
        self.caps = [size_cap(src.get("size")) for src in self.sources]

    def role(self, name: str) -> tuple:
        """(role, source index): role "dump" or "tree" (the source's own member), "entry" (below a
        tree), "links" (a tree's links member), or (None, None): the member belongs to no source."""
        i = self.index.get(name)
        if i is not None:
            return ("dump" if self.sources[i]["kind"] == KIND_DB else "tree"), i
        if name.startswith("files/"):
            parts = name.split("/", 3)
            if len(parts) == 4:
                i = self.index.get("/".join(parts[:3]))
                if i is not None and self.sources[i]["kind"] == KIND_FILES:
                    return "entry", i
        if name.endswith(LINKS_SUFFIX):
            i = self.index.get(name[:-len(LINKS_SUFFIX)])
            if i is not None and self.sources[i]["kind"] == KIND_FILES:
                return "links", i
        return None, None


# ---------------------------------------------------------------- links members

def _links_problem(entry, tree: str, tree_entries, paths: set) -> tuple:
    """(field, problem) of one links entry, or (None, None) when it is valid."""
    if not isinstance(entry, dict):
        return "", "must be an object {path, target, ...}"
    rel = entry.get("path")
    why = path_problem(rel)
    if why is not None:
        return ".path", "must be a relative path inside the tree (it %s)" % why
    full = tree + "/" + rel
    if len(full) > MAX_NAME:
        return ".path", "is too long"
    parent = full.rpartition("/")[0]
    if parent != tree and tree_entries.get(parent) != _DIR:
        return ".path", "must lie in a directory of the tree (%r is not a directory member)" % parent[len(tree) + 1:]
    if full in tree_entries or rel in paths:
        return ".path", "names %r, which the tree already holds" % rel
    why = _target_problem(entry.get("target"))
    if why is not None:
        return ".target", "must be a symlink target (it %s)" % why
    mtime = entry.get("mtime")
    if mtime is not None and (not _is_int(mtime) or not -_MAX_MTIME < mtime < _MAX_MTIME):
        return ".mtime", "must be an integer time or absent"
    for key in ("owner", "group"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or _owner_problem(value)):
            return "." + key, "must be a user or group name or null"
    for key in ("uid", "gid"):
        value = entry.get(key)
        if value is not None and (not _is_int(value) or not 0 <= value <= _MAX_ID):
            return "." + key, "must be a numeric id or null"
    return None, None


class _EntryTypes:
    """A scan's member table seen as {member name: member type} (what parse_links() takes)."""

    def __init__(self, table: dict):
        self._table = table

    def get(self, name: str, default=None):
        value = self._table.get(name, _MISSING)
        return default if value is _MISSING else _kind_of(value)

    def __contains__(self, name) -> bool:
        return name in self._table


def parse_links(data: bytes, member: str, tree_entries) -> list:
    """The entries of a tree's links member, every one checked; ArchiveError naming the member and field.

    `member`: the links member's name (`files/<cat>/<i>.links.json`) or its tree's; `tree_entries`:
    {member name: member type ('dir', 'file', 'symlink', 'hardlink')} of the archive's members, e.g.
    `{m["name"]: m["type"] for m in scanned["members"]}`. Each entry's path must be a relative
    path below an existing directory member of the tree where the tree holds nothing yet (and no
    other entry), its target a non-empty path; returns [{path, target, mtime, owner, group, uid, gid}]
    (missing optional fields None)."""
    tree = member[:-len(LINKS_SUFFIX)] if member.endswith(LINKS_SUFFIX) else member
    where = tree + LINKS_SUFFIX
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_LINKS:
        raise ArchiveError("%s is larger than %d bytes" % (where, MAX_LINKS))
    entries = _parse_json(bytes(data), where)
    if not isinstance(entries, list):
        raise ArchiveError("%s: must be a JSON list of links, got %s" % (where, _json_type(entries)))
    out = []
    paths: set = set()
    for i, entry in enumerate(entries):
        field, problem = _links_problem(entry, tree, tree_entries, paths)
        if problem is not None:
            value = entry.get(field[1:]) if field else entry
            raise _bad(where, "[%d]%s" % (i, field), problem, value)
        paths.add(entry["path"])
        out.append(_link_row(entry))
    return out


# ---------------------------------------------------------------- writing

class _Hasher:
    """SHA-256 work done on a thread of its own, in the order it is handed over: hashlib releases
    the GIL while it hashes, so the two SHA-256 passes of a build (each member's data, the bytes of
    the .sar file) run beside the thread that reads the sources and feeds the compressor. Bounded:
    at most HASH_QUEUE pieces wait."""

    def __init__(self):
        self._queue = queue.Queue(maxsize=HASH_QUEUE)
        self._error = None
        self._thread = threading.Thread(target=self._work, name="sar-sha256", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                sha, data, after = task
                if self._error is None:
                    if data is not None:
                        sha.update(data)
                    if after is not None:
                        after()
                elif after is not None and data is not None:
                    after()  # keep handing buffers back: the feeding thread must never wait forever
            except BaseException as exc:  # pylint: disable=broad-except  # raised on the writer's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def update(self, sha, data, after=None) -> None:
        """sha.update(data), then after(), on the hashing thread; `data` must not change until then."""
        if self._error is not None:
            raise self._error
        self._queue.put((sha, data, after))

    def drain(self) -> None:
        """Wait until everything handed over is hashed."""
        self._queue.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the thread (after what is queued); never raises."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class _EarlySync:
    """fdatasync(fd) on a thread of its own after poke() (requests made meanwhile make one sync): the
    kernel writes the file back while the writer goes on. A request is never dropped, not even by
    stop(). An error is kept for close() to raise (the kernel reports a write-back error to one fsync only)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.error = None
        self._cond = threading.Condition()
        self._pending = False
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="sar-sync", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not (self._pending or self._stopping):
                    self._cond.wait()
                if not self._pending:
                    return
                self._pending = False
            try:
                _fdatasync(self.fd)
            except OSError as exc:
                self.error = exc
                return

    def poke(self) -> None:
        with self._cond:
            self._pending = True
            self._cond.notify()

    def stop(self) -> None:
        """Do what was asked, then end the thread; never raises."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()


class _CountingWriter:
    """Bottom layer: counts and hashes exactly the bytes that reach the .sar file (the hash on the
    writer's hashing thread: `sha` is final after _Hasher.drain()); pokes `syncer` every EARLY_SYNC bytes."""

    def __init__(self, raw, hasher=None, syncer=None):
        self.raw = raw
        self.size = 0
        self.sha = hashlib.sha256()
        self.hasher = hasher
        self.syncer = syncer
        self._next_sync = EARLY_SYNC

    def _counted(self, size: int) -> None:
        self.size += size
        if self.syncer is not None and self.size >= self._next_sync:
            self._next_sync = self.size + EARLY_SYNC
            self.syncer.poke()

    def write(self, data) -> int:
        if self.hasher is not None:
            if not isinstance(data, bytes):
                data = bytes(data)  # the caller may reuse its buffer before the hash is done
            self.hasher.update(self.sha, data)
        else:
            self.sha.update(data)
        self.raw.write(data)
        size = len(memoryview(data).cast("B"))
        self._counted(size)
        return size

    def write_lent(self, view, give_back) -> None:
        """write(view) without a copy: the hashing thread calls give_back() when it is done with it."""
        self.hasher.update(self.sha, view, give_back)
        self.raw.write(view)
        self._counted(len(view))

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True


def _settle_symlinks(floor: str, candidates: list) -> set:
    """The names among a tree's symlinks [(name, target)] that may stay tar members: each resolves
    inside the tree `floor` both against the symlinks kept before it (what a streaming reader
    checks) and against all kept (the final check), exactly as the readers judge them. The others
    leave the tree (or only stay inside through a link that leaves it) and go to the links member."""
    keep = list(candidates)
    while True:
        final = dict(keep)
        before: dict = {}
        kept = []
        for name, target in keep:
            start = name.rpartition("/")[0]
            if _resolves_inside(start, target, before, floor) and _resolves_inside(start, target, final, floor):
                before[name] = target
                kept.append((name, target))
        if len(kept) == len(keep):
            return set(final)
        keep = kept


class _SpoolSink:
    """The compressed bytes of a spooled tree: files `<prefix>.<n>` (0600) of at most SPOOL_PART bytes."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.parts: list = []
        self._file = None
        self._left = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        size, pos = len(view), 0
        while pos < size:
            if self._file is None or not self._left:
                self._next_part()
            step = min(self._left, size - pos)
            self._file.write(view[pos:pos + step])
            pos += step
            self._left -= step
        return size

    def _next_part(self) -> None:
        self.close()
        path = "%s.%d" % (self.prefix, len(self.parts))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        self.parts.append(path)
        self._file = os.fdopen(fd, "wb", buffering=COPY_CHUNK)
        self._left = SPOOL_PART

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if self._file is not None:
            handle, self._file = self._file, None
            handle.close()

    def remove(self) -> None:
        """Close and delete every part; never raises."""
        try:
            self.close()
        except OSError:
            pass
        for path in self.parts:
            _unlink(path)
        self.parts = []


class _ParallelGzip:
    """A gzip member written to `sink` with the blocks deflated on several threads (zlib releases the
    GIL): the same format as GzipFile's (RFC 1952; mtime 0, no name), a stream gzip(1), Python and
    every other reader decompress as one. Each block is a raw deflate stream primed with the 32 KiB
    of data before it (zdict) and ended with a sync flush, so the blocks join into one deflate stream
    with the ratio of a serial one; the last block ends it. CRC-32 and length follow in order."""

    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    WINDOW = 32 * 1024

    def __init__(self, sink, level: int = GZIP_LEVEL, threads: int = 0):
        self.sink = sink
        self.level = level
        self.threads = threads or max(1, min(os.cpu_count() or 1, GZIP_MAX_THREADS))
        self.pool = None
        self.pending = collections.deque()  # futures of compressed blocks, in order
        self.block = bytearray()
        self.tail = b""  # the last WINDOW bytes before the current block
        self.crc = 0
        self.size = 0
        self.closed = False
        self.sink.write(self.HEADER)

    def _deflate(self, data: bytes, primer: bytes, last: bool) -> bytes:
        comp = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY,
                                **({"zdict": primer} if primer else {}))
        return comp.compress(data) + comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    def _submit(self, last: bool) -> None:
        data = bytes(self.block)
        self.block = bytearray()
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        primer = self.tail
        self.tail = (primer + data)[-self.WINDOW:] if len(data) < self.WINDOW else data[-self.WINDOW:]
        if self.threads == 1:
            self.sink.write(self._deflate(data, primer, last))
            return
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="sar-gzip")
        self.pending.append(self.pool.submit(self._deflate, data, primer, last))
        while len(self.pending) > 2 * self.threads or (last and self.pending):
            self.sink.write(self.pending.popleft().result())

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a closed gzip stream")
        view = memoryview(data).cast("B")
        size, pos = len(view), 0
        while pos < size:
            take = min(GZIP_BLOCK - len(self.block), size - pos)
            self.block += view[pos:pos + take]
            pos += take
            if len(self.block) == GZIP_BLOCK:
                self._submit(last=False)
        return size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """End the member (last block, CRC-32, length); the sink stays open. Never writes twice."""
        if self.closed:
            return
        self.closed = True
        try:
            self._submit(last=True)
            self.sink.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop the threads without writing anything more (abort)."""
        self.closed = True
        if self.pool is not None:
            for future in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True)
            self.pool = None
        self.pending.clear()


class _Switch:
    """The compressor's sink, switchable: the archive's layers, or a tree's spool. One compressor
    (one zstd context and its worker threads, their memory) serves the whole archive."""

    def __init__(self, target):
        self.target = target

    def write(self, data) -> int:
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()

    def writable(self) -> bool:
        return True


class _Spooled:
    """A tree compressed ahead of its turn: its parts, tar stream length, checksum slots, add_tree() result."""

    def __init__(self, sink: _SpoolSink, tar_len: int, sums: list, result: dict):
        self.sink, self.tar_len, self.sums, self.result = sink, tar_len, sums, result


class _Cancelled(Exception):
    """ArchiveWriter.cancel() was called while a tree was being spooled."""


class ArchiveWriter:
    """Builds a .sar file at `path` (created 0600), streaming.

    encryption: None or {"passphrase": str|None, "recipients": list|None}.
    signer: None or a signing.Signer; the archive then ends with its signature member.

    The writer enforces the rules readers check (manifest first and valid, every member belonging
    to one of its sources, the limits): what it builds, verify accepts.

    Trees can be compressed before the manifest exists (while the database dumps run, whose sizes
    the manifest needs): plan(manifest without the dumps' sizes), spool_tree() for each tree - on
    another thread if wanted, one call at a time, cancel() stops it -, then add_manifest(the final
    manifest) and, in the sources' order, add_file() for the dumps and add_spooled() for the trees.
    A spooled tree goes into the archive as the compressed bytes it already is: the archive is then a
    series of zstd frames (gzip members), which every zstd/gzip reader reads as one stream."""

    def __init__(self, path: str, compression: str = "zstd", encryption: dict | None = None, signer=None):
        if compression not in COMPRESSIONS:
            raise ValidationError("compression", "must be one of %s, got %r" % (", ".join(COMPRESSIONS), compression))
        if compression == "zstd":
            _zstd()
        self.path = path
        self.compression = compression
        self.signer = signer
        self._members = 0
        self._names_total = 0
        self._tar_pos = 0
        self._sums: list = []
        self._names: set = set()
        self._result = None
        self._age = None
        self._comp = None
        self._layout = None
        self._source_bytes: list = []
        self._links_bytes = 0
        self._trees: dict = {}  # tree member -> "open" | "closed" (its links member written)
        self._added: set = set()  # the sources' own members written
        self._hasher = None
        self._manifest_added = False
        self._broken = False
        self._spooling = False
        self._planned = None  # the manifest given to plan(): its trees may be spooled before add_manifest()
        self._spooled: dict = {}  # tree member -> _Spooled
        self._cancel = threading.Event()
        self._frame_bytes = 0  # tar bytes written since the last frame (gzip member) began
        self._buffers = queue.Queue()
        for _index in range(HASH_BUFFERS):
            self._buffers.put(bytearray(COPY_CHUNK))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=COPY_CHUNK)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        self._syncer = None
        try:
            self._hasher = _Hasher()
            self._syncer = _EarlySync(self._file.fileno())
            self._counter = _CountingWriter(self._file, self._hasher, self._syncer)
            sink = self._counter
            if encryption and (encryption.get("passphrase") or encryption.get("recipients")):
                self._age = agecrypt.AgeWriter(sink, recipients=encryption.get("recipients") or None,
                                               passphrase=encryption.get("passphrase") or None)
                sink = self._age
            self._sink = sink
            self._switch = _Switch(sink)
            # gzip writes a member's header when it is made: made with the member's first data
            self._comp = self._compressor(self._switch) if compression == "zstd" else None
        except BaseException:
            self.abort()
            raise

    # context manager: an exception inside `with` discards the partial file
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._result is None:
            self.close()

    def _compressor(self, sink):
        """A compressing stream writer into `sink` (closing it does not close the sink)."""
        if self.compression == "zstd":
            threads = min(os.cpu_count() or 1, ZSTD_MAX_THREADS)
            extra = {"threads": threads, "job_size": ZSTD_JOB_SIZE} if threads > 1 else {}
            params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, write_checksum=1, **extra)
            return zstandard.ZstdCompressor(compression_params=params).stream_writer(sink, closefd=False)
        return _ParallelGzip(sink)

    # low level tar stream
    def _write(self, data) -> None:
        if self._comp is None:  # a gzip member ended: the next one (its header) starts with its data
            self._comp = self._compressor(self._switch)
        self._comp.write(data)
        size = len(data)
        self._tar_pos += size
        self._frame_bytes += size

    def _end_frame(self) -> None:
        """End the current zstd frame (gzip member), so compressed bytes can follow it as they are."""
        if not self._frame_bytes:
            return
        if self.compression == "zstd":
            self._comp.flush(zstandard.FLUSH_FRAME)
        else:
            self._comp.close()  # the member's trailer; the sink stays open
            self._comp = None
        self._frame_bytes = 0

    def _pad(self, size: int) -> None:
        rest = -size % _BLOCK
        if rest:
            self._write(b"\0" * rest)

    def _header(self, info: tarfile.TarInfo, internal: bool = False) -> None:
        if self._result is not None:
            raise ValueError("archive already closed")
        if self._broken:
            raise ValueError("a tree failed while it was spooled: the archive cannot be completed")
        if not internal:
            if not (self._manifest_added or self._spooling):
                raise ValueError("add_manifest() must come first")
            if info.name in _RESERVED:
                raise ValueError("%s is reserved for the archive itself" % info.name)
            self._place(info)
        if self._members >= MAX_MEMBERS:
            raise SourceError("the archive would hold more than %d members (files, directories, links), the most "
                              "the .sar format allows; split the data into several jobs" % MAX_MEMBERS)
        self._names_total += _weight(info.name) + _weight(info.linkname)
        if self._names_total > MAX_NAMES_TOTAL:
            raise SourceError("the names of the archived files add up to more than %d bytes, the most the .sar "
                              "format allows; split the data into several jobs" % MAX_NAMES_TOTAL)
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._members += 1

    def _place(self, info: tarfile.TarInfo) -> None:
        """Refuse a member the readers would refuse: not belonging to a source, in the wrong place or
        beyond a limit (sources that grew too much since they were measured: SourceError)."""
        name = info.name
        why = _member_problem(info)
        if why is not None:
            raise SourceError("cannot archive %r: %s" % (name, why))
        role, index = self._layout.role(name)
        if role is None:
            raise ValueError("member %r belongs to no source of the manifest" % name)
        source = self._layout.sources[index]
        if role in ("dump", "tree"):
            if name in self._added:
                raise ValueError("member %s added twice" % name)
            if (role == "dump") != info.isreg() or (role == "tree") != info.isdir():
                raise ValueError("member %s must be a %s" % (name, "regular file" if role == "dump" else "directory"))
            self._added.add(name)
            if role == "tree":
                self._trees[name] = "open"
        else:
            if self._trees.get(source["member"]) != "open":
                raise ValueError("member %s must come after its tree %s and before its links member"
                                 % (name, source["member"]))
            if role == "links":
                if not info.isreg():
                    raise ValueError("member %s must be a regular file" % name)
                self._trees[source["member"]] = "closed"
                self._links_bytes += info.size
                if self._links_bytes > MAX_LINKS:
                    raise SourceError("%s: too many symlinks point out of the archived trees (their lists exceed %d bytes, "
                                      "the most the .sar format allows)" % (source["origin"], MAX_LINKS))
                return
        if info.isreg():
            self._source_bytes[index] += info.size
            if self._source_bytes[index] > self._layout.caps[index]:
                raise SourceError("%s: %s grew to more than %d bytes since it was measured (%s bytes); run the backup "
                                  "again when it changes less" % (source["category"], source["origin"],
                                                                  self._layout.caps[index], source.get("size")))

    @staticmethod
    def _info(name: str, st, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname, info.gname = _uname(st.st_uid), _gname(st.st_gid)
        return info

    def _add_data(self, name: str, data: bytes, mode: int, internal: bool = False, listed: bool = True) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        info.uid, info.gid = os.getuid(), os.getgid()
        info.uname, info.gname = _uname(info.uid), _gname(info.gid)
        self._header(info, internal)
        self._write(data)
        self._pad(len(data))
        if listed:
            self._note(name, hashlib.sha256(data).hexdigest())

    def _note(self, name: str, digest) -> list:
        """Record a member's digest for checksums.sha256; None: filled in by the hashing thread."""
        if name in self._names:
            raise ValueError("member %s added twice" % name)
        self._names.add(name)
        slot = [name, digest]
        self._sums.append(slot)
        return slot

    # public API
    @staticmethod
    def _checked(manifest: dict) -> bytes:
        try:
            validate_manifest(manifest)
        except ArchiveError as exc:
            raise ValueError(str(exc)) from None
        data = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        if len(data) > MAX_MANIFEST:
            raise ValueError("manifest.json would have %d bytes, more than the %d readers accept" % (len(data), MAX_MANIFEST))
        return data

    def plan(self, manifest: dict) -> None:
        """The manifest as known before the dumps ran (their sizes null): trees may be spooled."""
        if self._manifest_added or self._planned is not None:
            raise ValueError("plan() must come first, once")
        self._checked(manifest)
        self._planned = copy.deepcopy(manifest["sources"])
        self._layout = _Layout(manifest)
        self._source_bytes = [0] * len(self._layout.sources)

    def add_manifest(self, manifest: dict) -> None:
        """The first member. The manifest must pass validate_manifest() (ValueError naming the field);
        after plan(), its sources must be the planned ones (the dumps' size, files and rows may differ)."""
        if self._manifest_added:
            raise ValueError("manifest.json must be the first member")
        data = self._checked(manifest)
        if self._planned is not None:
            final = manifest["sources"]
            if len(final) != len(self._planned) or any(
                    _plan_key(planned) != _plan_key(src) for planned, src in zip(self._planned, final)):
                raise ValueError("the manifest's sources differ from the planned ones")
        else:
            self._source_bytes = [0] * len(manifest["sources"])
        self._layout = _Layout(manifest)
        self._manifest_added = True
        self._add_data(MANIFEST, data, 0o644, internal=True)

    def add_bytes(self, arcname: str, data: bytes, mode: int = 0o600) -> None:
        self._add_data(_check_arcname(arcname), bytes(data), mode)

    def add_file(self, arcname: str, path: str, progress=None) -> int:
        """Stream the regular file `path` as `arcname`; returns the bytes archived."""
        arcname = _check_arcname(arcname)
        try:
            handle = open(path, "rb", buffering=0)  # pylint: disable=consider-using-with
        except OSError as exc:
            raise SourceError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
        with handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SourceError("%s is not a regular file" % path)
            return self._add_open(arcname, path, handle, st, progress)

    def _add_open(self, arcname: str, path: str, handle, st, progress) -> int:
        info = self._info(arcname, st, tarfile.REGTYPE)
        # A file growing meanwhile is archived up to its size at stat time (the header is already written).
        info.size = size = st.st_size
        self._header(info)
        sha = hashlib.sha256()
        remaining = size
        free = self._buffers
        while remaining:
            if self._cancel.is_set():
                raise _Cancelled()
            # A buffer goes back to `free` once hashed; the compressor has consumed it when _write returns.
            buf = free.get()
            view = memoryview(buf)[:min(COPY_CHUNK, remaining)]
            try:
                got = handle.readinto(view)
            except OSError as exc:
                free.put(buf)
                raise SourceError("reading %s failed: %s" % (path, exc.strerror or exc)) from None
            if not got:
                free.put(buf)
                raise SourceError("%s shrank while being archived (%d of %d bytes read); "
                                  "retry when nothing writes to it" % (path, size - remaining, size))
            piece = view[:got]
            self._hasher.update(sha, piece, lambda b=buf: free.put(b))
            self._write(piece)
            remaining -= got
            if progress is not None:
                progress(got)
        self._pad(size)
        slot = self._note(arcname, None)
        self._hasher.update(sha, None, lambda: slot.__setitem__(1, sha.hexdigest()))
        return size

    def add_tree(self, arcprefix: str, root: str, progress=None) -> dict:
        """Archive the directory `root` under `arcprefix` (sorted, symlinks kept as symlinks).

        Sockets, fifos and devices are skipped and listed in "skipped"; entries that vanish
        while the tree is walked are listed in "vanished". Symlinks come after the tree's other
        members; those that lead out of the tree go to its links member (`external_links`)."""
        arcprefix = _check_arcname(arcprefix)
        result = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0, "skipped": [], "vanished": [], "external_links": []}
        symlinks = []  # (name, target, st): judged once the whole tree is known
        try:
            st = os.stat(root)
        except OSError as exc:
            raise SourceError("cannot read %s: %s" % (root, exc.strerror or exc)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError("%s is not a directory" % root)
        stack = [(root, arcprefix, st)]
        while stack:
            path, name, st = stack.pop()
            if st is None:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    result["vanished"].append(path)
                    continue
                except OSError as exc:
                    raise SourceError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
            if stat.S_ISDIR(st.st_mode):
                try:
                    children = sorted(os.listdir(path))
                except FileNotFoundError:
                    result["vanished"].append(path)
                    continue
                except OSError as exc:
                    raise SourceError("cannot list %s: %s" % (path, exc.strerror or exc)) from None
                self._header(self._info(name, st, tarfile.DIRTYPE))
                result["dirs"] += 1
                stack.extend((os.path.join(path, c), name + "/" + c, None) for c in reversed(children))
            elif stat.S_ISREG(st.st_mode):
                try:
                    handle = open(path, "rb", buffering=0)  # pylint: disable=consider-using-with
                except FileNotFoundError:
                    result["vanished"].append(path)
                    continue
                except OSError as exc:
                    raise SourceError("cannot read %s: %s" % (path, exc.strerror or exc)) from None
                with handle:
                    fst = os.fstat(handle.fileno())
                    if not stat.S_ISREG(fst.st_mode):  # replaced between lstat and open
                        result["skipped"].append(path)
                        continue
                    result["bytes"] += self._add_open(name, path, handle, fst, progress)
                result["files"] += 1
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(path)
                except FileNotFoundError:
                    result["vanished"].append(path)
                    continue
                symlinks.append((name, target, st))
            else:
                result["skipped"].append(path)
        # A link out of its tree (/usr/share/asterisk/moh, ../../x) would make the archive unsafe to
        # extract: it goes in the tree's links member and restore recreates it.
        inside = _settle_symlinks(arcprefix, [(name, target) for name, target, _st in symlinks])
        for name, target, st in symlinks:
            if name in inside:
                info = self._info(name, st, tarfile.SYMTYPE)
                info.linkname = target
                self._header(info)
                result["symlinks"] += 1
            else:
                result["external_links"].append({"path": name[len(arcprefix) + 1:], "target": target,
                                                 "mtime": int(st.st_mtime), "owner": _uname(st.st_uid),
                                                 "group": _gname(st.st_gid), "uid": st.st_uid, "gid": st.st_gid})
        if result["external_links"]:
            data = json.dumps(result["external_links"], indent=1, sort_keys=True, ensure_ascii=False,
                              ).encode("utf-8", "surrogateescape")
            self._add_data(arcprefix + LINKS_SUFFIX, data, 0o644)
        return result

    def spool_tree(self, arcprefix: str, root: str, progress=None) -> dict:
        """add_tree() ahead of its turn, into spool files next to the archive (after plan(), before
        add_manifest()); add_spooled() puts it in its place. Returns add_tree()'s result."""
        if self._planned is None or self._manifest_added:
            raise ValueError("spool_tree() comes after plan() and before add_manifest()")
        if arcprefix in self._spooled:
            raise ValueError("member %s added twice" % arcprefix)
        if self._layout.role(arcprefix)[0] != "tree":
            raise ValueError("member %r belongs to no source of the manifest" % arcprefix)
        sink = _SpoolSink("%s.spool-%d" % (self.path, len(self._spooled)))
        saved = self._tar_pos, self._sums
        self._tar_pos, self._sums = 0, []
        self._switch.target = sink
        self._spooling = True
        try:
            try:
                result = self.add_tree(arcprefix, root, progress=progress)
                self._end_frame()
                sink.close()
            except _Cancelled:
                raise SourceError("archiving %s was stopped" % root) from None
            self._spooled[arcprefix] = _Spooled(sink, self._tar_pos, self._sums, result)
        except BaseException:
            sink.remove()
            self._broken = True  # the compressor may hold part of the tree: nothing more can be written
            raise
        finally:
            self._spooling = False
            self._switch.target = self._sink
            self._tar_pos, self._sums = saved
        return result

    def cancel(self) -> None:
        """Make a spool_tree() running on another thread stop soon (SourceError there)."""
        self._cancel.set()

    def add_spooled(self, arcprefix: str) -> dict:
        """Put the tree spooled as `arcprefix` here, in its compressed form; returns add_tree()'s result."""
        spooled = self._spooled.get(arcprefix)
        if spooled is None or not self._manifest_added or self._result is not None:
            raise ValueError("%s was not spooled, or add_manifest() has not come yet" % arcprefix)
        self._end_frame()
        free = self._buffers
        for part in list(spooled.sink.parts):
            with open(part, "rb", buffering=0) as handle:
                while True:
                    buf = free.get()
                    view = memoryview(buf)
                    try:
                        got = handle.readinto(view)
                    except BaseException:
                        free.put(buf)
                        raise
                    if not got:
                        free.put(buf)
                        break
                    if self._age is None:
                        # Straight to the file: the buffer comes back once the hashing thread is done with it.
                        self._counter.write_lent(view[:got], lambda b=buf: free.put(b))
                    else:
                        self._age.write(view[:got])  # copied into age's own chunk buffer: buf is free again
                        free.put(buf)
            _unlink(part)
        spooled.sink.parts = []
        self._tar_pos += spooled.tar_len
        self._sums.extend(spooled.sums)
        del self._spooled[arcprefix]
        return spooled.result

    def close(self) -> dict:
        """Write checksums.sha256 (and the signature), finish every layer, fsync; returns {path, size, sha256}."""
        if self._result is not None:
            return self._result
        try:
            if not self._manifest_added:
                raise ValueError("add_manifest() must come first")
            if self._spooled:
                raise ValueError("spooled tree %s was never added" % sorted(self._spooled)[0])
            missing = [m for m in self._layout.index if m not in self._added]
            if missing:
                raise ValueError("the manifest lists source member %s, which was never added" % missing[0])
            self._hasher.drain()  # every member's digest is known
            sums = "".join(checksum_line(d, n) for n, d in self._sums).encode("utf-8", "surrogateescape")
            self._add_data(CHECKSUMS, sums, 0o644, internal=True)
            if self.signer is not None:
                self._add_data(SIGNATURE, self.signer.signature_member(sums), 0o644, internal=True, listed=False)
            # End of archive: two zero blocks, padded to a full record as tar(1) does.
            end = 2 * _BLOCK
            end += -(self._tar_pos + end) % _RECORD
            self._write(b"\0" * end)
            self._comp.close()
            if self._age is not None:
                self._age.close()
            self._file.flush()
            self._hasher.drain()  # the file's own hash is complete
            self._hasher.stop()
            self._syncer.stop()
            if self._syncer.error is not None:
                raise self._syncer.error
            os.fsync(self._file.fileno())
            self._file.close()
        except BaseException:
            self.abort()
            raise
        self._result = {"path": self.path, "size": self._counter.size, "sha256": self._counter.sha.hexdigest()}
        return self._result

    def abort(self) -> None:
        """Close everything and remove the partial file; never raises."""
        if self._result is not None:
            return  # already aborted, or closed complete: nothing partial left to remove
        if isinstance(self._comp, _ParallelGzip):
            self._comp.abandon()  # its threads stop; no last block is written into what is removed anyway
        if getattr(self, "_syncer", None) is not None:
            self._syncer.stop()  # before the file (its descriptor) is closed
        for closer in (self._comp, self._age, getattr(self, "_file", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # pylint: disable=broad-except
                    pass
        if self._hasher is not None:
            self._hasher.stop()
        for spooled in self._spooled.values():
            spooled.sink.remove()
        self._spooled = {}
        _unlink(self.path)
        self._result = {"aborted": True}


def _plan_key(source: dict) -> dict:
    """What plan() fixes of a source: all of a tree; a dump's place, not its size (known after it)."""
    if source.get("kind") == KIND_DB:
        return {k: v for k, v in source.items() if k not in ("size", "files", "rows")}
    return source


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------- reading

class _HashingReader:
    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True


class _PrefixReader:
    """Gives back bytes already read (for format detection) before the rest of `src`."""

    def __init__(self, prefix: bytes, src):
        self.prefix = prefix
        self.src = src

    def read(self, size: int = -1) -> bytes:
        if self.prefix:
            if size is None or size < 0:
                data, self.prefix = self.prefix + self.src.read(), b""
                return data
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            return data
        return self.src.read(size)

    def readable(self) -> bool:
        return True


class _ZstdFrames:
    """Follows the frame structure of zstd data (frame header, block headers, checksum).

    zstandard's stream reader reports a truncated stream as a normal end; this tells them apart."""

    _FCS = ((0, 2, 4, 8), (1, 2, 4, 8))

    def __init__(self):
        self.frames = 0
        self.bad = False
        self._state = "magic"
        self._need = 4
        self._hdr = bytearray()
        self._skip = 0
        self._checksum = False

    def complete(self) -> bool:
        return not self.bad and self.frames > 0 and self._state == "magic" and not self._hdr and not self._skip

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size and not self.bad:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._hdr), size - pos)
            self._hdr += data[pos:pos + take]
            pos += take
            if len(self._hdr) == self._need:
                hdr, self._hdr = bytes(self._hdr), bytearray()
                self._parse(hdr)

    def _go(self, state: str, need: int, skip: int = 0) -> None:
        self._state, self._need, self._skip = state, need, skip

    def _parse(self, hdr: bytes) -> None:
        state = self._state
        if state == "magic":
            if hdr == ZSTD_MAGIC:
                self._go("descriptor", 1)
            elif hdr[1:] == b"\x2a\x4d\x18" and hdr[0] & 0xF0 == 0x50:  # skippable frame
                self._go("skippable", 4)
            else:
                self.bad = True
        elif state == "skippable":
            self.frames += 1
            self._go("magic", 4, int.from_bytes(hdr, "little"))
        elif state == "descriptor":
            desc = hdr[0]
            single = (desc >> 5) & 1
            if desc & 0x08:
                self.bad = True
                return
            self._checksum = bool(desc & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[desc & 3] + self._FCS[single][desc >> 6]
            self._go("block", 3, rest)
        elif state == "block":
            value = int.from_bytes(hdr, "little")
            kind, size = (value >> 1) & 3, value >> 3
            if kind == 3:
                self.bad = True
                return
            content = 1 if kind == 1 else size
            if value & 1:
                self.frames += 1
                self._go("magic", 4, content + (4 if self._checksum else 0))
            else:
                self._go("block", 3, content)


class _TrackedReader:
    def __init__(self, src, frames: _ZstdFrames):
        self.src = src
        self.frames = frames

    def read(self, size: int = -1) -> bytes:
        data = self.src.read(size)
        self.frames.feed(data)
        return data

    def readable(self) -> bool:
        return True


def _read_exact(src, size: int) -> bytes:
    out = b""
    while len(out) < size:
        data = src.read(size - len(out))
        if not data:
            break
        out += data
    return out


def _drain(src) -> None:
    """Read `src` to its end (every layer below checks its own integrity as it goes)."""
    while src.read(COPY_CHUNK):
        pass


class _Refused(ArchiveError):
    """A refusal from inside tarfile's header parsing; _translated() names the archive."""


def _extended(tarfile, size: int, limit: int, what: str) -> None:
    """Account for one extended header of `size` bytes before tarfile reads it."""
    if size > limit:
        raise _Refused("malformed: a %s of %d bytes (the limit is %d)" % (what, size, limit))
    total = getattr(tarfile, "_sar_extended", 0) + size
    if total > MAX_EXTENDED_TOTAL:
        raise _Refused("malformed: its extended tar headers add up to more than %d bytes" % MAX_EXTENDED_TOTAL)
    setattr(tarfile, "_sar_extended", total)


def _chained(method, tarfile):
    """Run tarfile's own processing of an extended header, which reads the headers after it."""
    depth = getattr(tarfile, "_sar_chain", 0)
    if depth >= MAX_EXTENDED_CHAIN:
        raise _Refused("malformed: more than %d extended tar headers in front of one member" % MAX_EXTENDED_CHAIN)
    setattr(tarfile, "_sar_chain", depth + 1)
    try:
        return method(tarfile)
    except _TarHeaderError as exc:  # tarfile would take a bad extended header for the end of the archive
        raise _Refused("corrupted: bad extended tar header (%s)" % exc) from None
    finally:
        setattr(tarfile, "_sar_chain", depth)


def _sparse(info) -> _Refused:
    return _Refused("malformed: member %s is a sparse file (not used by .sar archives)" % _show(getattr(info, "name", "?")))


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's member parser, refusing what would make it read unbounded data into memory:
    pax and GNU long-name headers above their limits (checked BEFORE they are read), chains of
    extended headers, global pax headers, sparse members; and any damaged header."""

    @classmethod
    def frombuf(cls, buf, encoding, errors):
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.EOFHeaderError:
            raise  # a zero block: the end-of-archive marker
        except tarfile.EmptyHeaderError:
            raise _Refused("truncated: the tar stream ends without its end-of-archive marker") from None
        except tarfile.TruncatedHeaderError:
            raise _Refused("truncated: the tar stream ends inside a header") from None
        except tarfile.HeaderError as exc:
            raise _Refused("corrupted: bad tar header (%s)" % exc) from None

    def _proc_pax(self, tarfile):
        if self.type != _XHDTYPE:
            raise _Refused("malformed: global or Solaris pax headers (type %r) are not used by .sar archives" % self.type)
        _extended(tarfile, self.size, MAX_PAX_HEADER, "pax extended header")
        return _chained(super()._proc_pax, tarfile)

    def _proc_gnulong(self, tarfile):
        _extended(tarfile, self.size, MAX_GNU_LONG, "GNU long name header")
        return _chained(super()._proc_gnulong, tarfile)

    def _proc_sparse(self, tarfile):
        raise _sparse(self)

    # GNU sparse members described in pax headers; args[0]: the member (signatures differ between versions)
    def _proc_gnusparse_00(self, *args):  # pylint: disable=arguments-differ
        raise _sparse(args[0])

    def _proc_gnusparse_01(self, *args):  # pylint: disable=arguments-differ
        raise _sparse(args[0])

    def _proc_gnusparse_10(self, *args):  # pylint: disable=arguments-differ
        raise _sparse(args[0])


_XHDTYPE = tarfile.XHDTYPE
_TarHeaderError = tarfile.HeaderError


class _Opened:
    """The layers of an archive opened for reading; `stream` is the tar stream."""

    def __init__(self, path: str, passphrase=None, identities=None):
        self.path = path
        self.frames = None
        try:
            self.raw = open(path, "rb")  # pylint: disable=consider-using-with
        except OSError as exc:
            raise ArchiveError("cannot open %s: %s" % (path, exc.strerror or exc)) from None
        try:
            with _translated(path):
                self.hashing = _HashingReader(self.raw)
                head = _read_exact(self.hashing, len(agecrypt.INTRO) + 1)
                src = self.compressed = _PrefixReader(head, self.hashing)
                self.encrypted = agecrypt.is_age(head)
                if self.encrypted:
                    if not passphrase and not identities:
                        raise DecryptKeyError("%s is encrypted: give its passphrase or an age identity" % os.path.basename(path))
                    src = self.compressed = agecrypt.AgeReader(src, identities=identities or None,
                                                               passphrase=passphrase or None)
                magic = _read_exact(src, 4)
                src = self.compressed = _PrefixReader(magic, src)
                if magic == ZSTD_MAGIC:
                    self.compression = "zstd"
                    self.frames = _ZstdFrames()
                    src = self.compressed = _TrackedReader(src, self.frames)
                    # A frame may not make the decompressor allocate more than MAX_ZSTD_WINDOW.
                    self.stream = _zstd().ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).stream_reader(
                        src, read_across_frames=True)
                elif magic[:2] == GZIP_MAGIC:
                    self.compression = "gzip"
                    self.stream = gzip.GzipFile(fileobj=src, mode="rb")
                else:
                    raise ArchiveError("%s is not a .sar archive (not age-encrypted, not zstd or gzip compressed)"
                                       % os.path.basename(path))
        except BaseException:
            self.raw.close()
            raise

    def finish(self, pending: bytes) -> None:
        """After the tar end-of-archive block (`pending`: what tarfile read beyond it): only zero
        padding may follow, at most MAX_TAIL bytes; then read every layer to its end, so checksums,
        the age last chunk and the file hash are all checked."""
        name = os.path.basename(self.path)
        left = MAX_TAIL - len(pending)
        data = pending
        while True:
            if data.count(0) != len(data):
                raise ArchiveError("%s is corrupted: unexpected data after the end of the tar stream" % name)
            if left < 0:
                raise ArchiveError("%s is corrupted: more than %d bytes after the end of the tar stream" % (name, MAX_TAIL))
            data = self.stream.read(min(COPY_CHUNK, left + 1))
            if not data:
                break
            left -= len(data)
        _drain(self.compressed)
        if self.frames is not None:
            if self.frames.bad:
                raise ArchiveError("the zstd stream is corrupted or followed by unexpected data")
            if not self.frames.complete():
                raise ArchiveError("the archive is truncated (zstd stream incomplete)")
        _drain(self.hashing)

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # pylint: disable=broad-except
            pass
        self.raw.close()


_ZSTD_ERRORS: tuple = (zstandard.ZstdError,) if zstandard is not None else ()


@contextlib.contextmanager
def _translated(path: str):
    """Turn what the layers raise on damaged input into ArchiveError."""
    name = os.path.basename(path)
    try:
        yield
    except _Refused as exc:
        raise ArchiveError("%s is %s" % (name, exc)) from None
    except ArchiveError:
        raise
    except EOFError:
        raise ArchiveError("%s is truncated" % name) from None
    except tarfile.ReadError as exc:
        if "unexpected end" in str(exc):
            raise ArchiveError("%s is truncated (%s)" % (name, exc)) from None
        raise ArchiveError("%s is corrupted: bad tar stream (%s)" % (name, exc)) from None
    except tarfile.TarError as exc:
        raise ArchiveError("%s is corrupted: bad tar stream (%s)" % (name, exc)) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise ArchiveError("%s is corrupted (gzip: %s)" % (name, exc)) from None
    except _ZSTD_ERRORS as exc:
        raise ArchiveError("%s is corrupted (%s)" % (name, exc)) from None
    except UnicodeError as exc:
        raise ArchiveError("%s is corrupted: bad member name or manifest (%s)" % (name, exc)) from None
    except OSError as exc:
        raise ArchiveError("reading %s failed: %s" % (name, exc.strerror or exc)) from None
    except (ValueError, OverflowError) as exc:
        # e.g. tarfile parsing hostile numbers (a pax record length of 5000 digits)
        raise ArchiveError("%s is corrupted (%s)" % (name, exc)) from None


def _member_type(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    return "other"


def _table_value(info: tarfile.TarInfo, digest: bytes | None = None):
    """What a scan's member table keeps of a member: a regular file's digest, _DIR, or (type, link target)."""
    if info.isreg():
        return digest
    if info.isdir():
        return _DIR
    return (_member_type(info), info.linkname)


def _kind_of(value) -> str:
    if isinstance(value, bytes):
        return "file"
    if value == _DIR:
        return "dir"
    return value[0]


def _resolves_inside(start: str, target: str, links: dict, floor: str = "", budget: list | None = None) -> bool:
    """Whether `target`, taken relative to archive directory `start` and following the archive's
    own symlinks (`links`: member name -> link target), stays inside the extraction root
    (or inside the directory `floor`, when given).

    Bounded: at most MAX_RESOLVE_STEPS components and MAX_LINK_HOPS links (more: not inside);
    `budget` ([steps left]) is shared by all resolutions of one archive."""
    if not target or target.startswith("/"):
        return False
    stack = [p for p in start.split("/") if p not in ("", ".")]
    keys = []
    for part in stack:
        keys.append(keys[-1] + "/" + part if keys else part)
    base = len([p for p in floor.split("/") if p])
    todo = [p for p in reversed(target.split("/")) if p not in ("", ".")]
    steps = hops = 0
    while todo:
        steps += 1
        if steps > MAX_RESOLVE_STEPS:
            return False
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise ArchiveError("the archive's symlinks take more than %d steps to check; refusing it"
                                   % MAX_RESOLVE_TOTAL)
        part = todo.pop()
        if part == "..":
            if len(stack) <= base:
                return False
            stack.pop()
            keys.pop()
            continue
        key = keys[-1] + "/" + part if keys else part
        link = links.get(key)
        if link is not None:
            hops += 1
            if hops > MAX_LINK_HOPS or link.startswith("/"):
                return False
            todo.extend(p for p in reversed(link.split("/")) if p not in ("", "."))
            continue
        if len(key) > MAX_NAME:
            return False
        stack.append(part)
        keys.append(key)
    return True


class _Safety:
    """Refuses members that could write outside the destination (SPEC section 5), member by member:
    for readers that stream an archive without a full scan first (open_members)."""

    def __init__(self):
        self.links: dict = {}
        self.regular: set = set()
        self.budget = [MAX_RESOLVE_TOTAL]

    def check(self, info: tarfile.TarInfo) -> None:
        name = info.name
        parts = name.split("/")
        why = _member_problem(info)
        if why is None:
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in self.links:
                    why = "its path goes through the symlink %s" % "/".join(parts[:i])
                    break
        if why is None and info.issym():
            if not _resolves_inside("/".join(parts[:-1]), info.linkname, self.links, budget=self.budget):
                why = "symlink to %r leaves the destination" % info.linkname
        if why is None and info.islnk():
            if info.linkname not in self.regular:
                why = "hardlink to %r, which is not an earlier file of the archive" % info.linkname
        if why is not None:
            raise ArchiveError("unsafe archive member %r: %s" % (name, why))
        self.links.pop(name, None)
        self.regular.discard(name)
        if info.issym():
            self.links[name] = info.linkname
        elif info.isreg():
            self.regular.add(name)


class _Data:
    """A regular member's data, read straight from tarfile's stream (what extractfile() gives,
    without its layers); a member cut short raises tarfile.ReadError."""

    __slots__ = ("_src", "_left")

    def __init__(self, tar, info: tarfile.TarInfo):
        self._src = tar.fileobj
        self._left = info.size

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._left:
            size = self._left
        if not size:
            return b""
        data = self._src.read(size)
        if len(data) < size:
            raise tarfile.ReadError("unexpected end of data")
        self._left -= size
        return data


def _read_whole(handle, size: int) -> bytearray:
    """A member's data of `size` bytes (its limit checked before) in one buffer: no transient copies."""
    buf = bytearray(size)
    with memoryview(buf) as view:
        pos = 0
        while pos < size:
            chunk = handle.read(min(COPY_CHUNK, size - pos))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            view[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
    return buf


def _hash_member(handle, sink=None) -> bytes:
    return sha256_stream(handle, COPY_CHUNK, (sink,) if sink is not None else ())[0].digest()


def _open_tar(stream):
    return tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape", tarinfo=_BoundedTarInfo)


def _next(tar):
    info = tar.next()
    tar.members = []  # stream mode would otherwise keep every TarInfo: memory grows with the member count
    return info


def _pending(tar) -> bytes:
    """What tarfile has read from the stream beyond its position (its read-ahead buffer)."""
    return bytes(getattr(tar.fileobj, "buf", b"") or b"")


def read_manifest(path: str, passphrase: str | None = None, identities: list | None = None) -> dict:
    """The manifest (first member) only, validated; cheap."""
    opened = _Opened(path, passphrase, identities)
    try:
        with _translated(path):
            tar = _open_tar(opened.stream)
            info = _next(tar)
            if info is None or info.name != MANIFEST or not info.isreg():
                raise ArchiveError("%s is not a .sar archive: the first member is not manifest.json" % os.path.basename(path))
            if info.size > MAX_MANIFEST:
                raise ArchiveError("%s: manifest.json is larger than %d bytes: not a .sar archive"
                                   % (os.path.basename(path), MAX_MANIFEST))
            return _parse_manifest(_read_whole(_Data(tar, info), info.size))
    finally:
        opened.close()


class _Tree:
    """A tree source during a scan: its symlinks (for resolving) and whether its links member came."""

    def __init__(self, member: str):
        self.member = member
        self.links: dict = {}
        self.closed = False


class _Scan:
    """One archive's members checked one by one against the format's rules and limits."""

    def __init__(self, name: str):
        self.name = name
        self.count = 0
        self.names_total = 0
        self.table: dict = {}  # member name -> _table_value()
        self.members: list = []
        self.manifest = None
        self.layout = None
        self.source_bytes: list = []
        self.trees: dict = {}  # tree member -> _Tree
        self.links: dict = {}  # tree member -> parsed links entries
        self.links_bytes = 0
        self.checksums_size = 0  # what checksums.sha256 needs for the regular members so far
        self.checksums = None
        self.signature = None
        self.budget = [MAX_RESOLVE_TOTAL]

    def fail(self, problem: str, unsafe: str | None = None) -> ArchiveError:
        if unsafe is not None:
            return ArchiveError("%s: unsafe archive member %r: %s" % (self.name, unsafe, problem))
        return ArchiveError("%s is malformed: %s" % (self.name, problem))

    def member(self, info: tarfile.TarInfo, tar) -> None:
        name = info.name
        self.count += 1
        if self.count > MAX_MEMBERS:
            raise self.fail("more than %d members" % MAX_MEMBERS)
        if self.count == 1:
            if name != MANIFEST or not info.isreg():
                raise ArchiveError("%s is not a .sar archive: the first member is %s, not manifest.json"
                                   % (self.name, _show(name)))
        elif self.signature is not None:
            raise self.fail("member %s follows %s, which must be the last member" % (_show(name), SIGNATURE))
        elif self.checksums is not None and name != SIGNATURE:
            raise self.fail("member %s follows checksums.sha256, which must be last (only %s may follow it)"
                            % (_show(name), SIGNATURE))
        why = _member_problem(info)
        if why is not None:
            raise self.fail(why, unsafe=name)
        self.names_total += _weight(name) + _weight(info.linkname)
        if self.names_total > MAX_NAMES_TOTAL:
            raise self.fail("its member names add up to more than %d bytes" % MAX_NAMES_TOTAL)
        if name in self.table:
            raise self.fail("member %r appears twice" % name)
        if name in _RESERVED:
            digest = self.reserved(info, tar)
        else:
            digest = self.placed(info, tar)
        self.table[name] = _table_value(info, digest)
        self.members.append(_member_row(name, _member_type(info), info.size if info.isreg() else 0))
        if info.isreg() and self.checksums is None:
            self.checksums_size += _line_size(name)

    def reserved(self, info: tarfile.TarInfo, tar) -> bytes:
        """manifest.json (first), checksums.sha256 (after the sources), the signature (after the checksums)."""
        name = info.name
        if not info.isreg():
            raise self.fail("member %s must be a regular file" % name)
        if name == MANIFEST:
            if self.count != 1:
                raise self.fail("member %r appears twice" % name)
            if info.size > MAX_MANIFEST:
                raise ArchiveError("%s: manifest.json is larger than %d bytes: not a .sar archive" % (self.name, MAX_MANIFEST))
            data = _read_whole(_Data(tar, info), info.size)
            try:
                self.manifest = _parse_manifest(data)
            except ArchiveError as exc:
                raise ArchiveError("%s: %s" % (self.name, exc)) from None
            self.layout = _Layout(self.manifest)
            self.source_bytes = [0] * len(self.layout.sources)
            return hashlib.sha256(data).digest()
        if name == CHECKSUMS:
            if info.size > self.checksums_size + CHECKSUMS_SLACK:
                raise self.fail("checksums.sha256 has %d bytes, far more than the %d its members need"
                                % (info.size, self.checksums_size))
            self.checksums = _read_whole(_Data(tar, info), info.size)
            return hashlib.sha256(self.checksums).digest()
        if self.checksums is None:
            raise self.fail("member %s must come right after checksums.sha256" % SIGNATURE)
        if info.size > signing.MAX_SIGNATURE_MEMBER:
            raise self.fail("member %s is larger than %d bytes" % (SIGNATURE, signing.MAX_SIGNATURE_MEMBER))
        data = bytes(_read_whole(_Data(tar, info), info.size))
        self.signature = signing.check_signature(signing.parse_signature_member(data), self.checksums)
        return hashlib.sha256(data).digest()

    def placed(self, info: tarfile.TarInfo, tar) -> bytes | None:
        """A member of a source: where it may be, what it may be, how large it may be."""
        name = info.name
        role, index = self.layout.role(name)
        if role is None:
            raise self.fail("member %r belongs to no source listed in manifest.json's sources" % name)
        source = self.layout.sources[index]
        if role == "dump":
            if not info.isreg():
                raise self.fail("member %r must be a regular file (manifest.json sources[%d] is a postgresql dump)"
                                % (name, index))
        elif role == "tree":
            if not info.isdir():
                raise self.fail("member %r must be a directory (manifest.json sources[%d] is a file tree)" % (name, index))
            self.trees[name] = _Tree(name)
            self.links[name] = []
            return None
        else:
            tree = self.trees.get(source["member"])
            if tree is None:
                raise self.fail("member %r comes before its tree's directory member %r" % (name, source["member"]))
            if tree.closed:
                raise self.fail("member %r follows %s%s, which must come after every member of its tree"
                                % (name, tree.member, LINKS_SUFFIX))
            if role == "links":
                return self.links_member(info, tar, tree)
            self.entry(info, tree)
        if not info.isreg():
            return None
        self.source_bytes[index] += info.size
        if self.source_bytes[index] > self.layout.caps[index]:
            raise self.fail("the members of manifest.json sources[%d] (%s) hold more than %d bytes, far more than its "
                            "declared size %s" % (index, source["member"], self.layout.caps[index], source.get("size")))
        return _hash_member(_Data(tar, info))

    def entry(self, info: tarfile.TarInfo, tree: _Tree) -> None:
        """A member inside a tree: in a directory of the tree; a symlink resolving inside the same
        tree (trees are extracted to different places); a hardlink to an earlier file of the tree."""
        name = info.name
        parent = name.rpartition("/")[0]
        above = self.table.get(parent, _MISSING)
        if above != _DIR:
            if above is _MISSING:
                why = "its directory %r is not an earlier member of the archive" % parent
            elif isinstance(above, tuple) and above[0] == "symlink":
                why = "its path goes through the symlink %s" % parent
            else:
                why = "%r is not a directory" % parent
            raise self.fail(why, unsafe=name)
        if info.issym():
            if not _resolves_inside(parent, info.linkname, tree.links, tree.member, self.budget):
                raise self.fail("symlink to %r leaves its tree %s" % (info.linkname, tree.member), unsafe=name)
            tree.links[name] = info.linkname
        elif info.islnk():
            if not isinstance(self.table.get(info.linkname), bytes) or not info.linkname.startswith(tree.member + "/"):
                raise self.fail("hardlink to %r, which is not an earlier regular file of the same tree %s"
                                % (info.linkname, tree.member), unsafe=name)

    def links_member(self, info: tarfile.TarInfo, tar, tree: _Tree) -> bytes:
        if not info.isreg():
            raise self.fail("member %r must be a regular file" % info.name)
        self.links_bytes += info.size
        if self.links_bytes > MAX_LINKS:
            raise self.fail("links member %r: the links members hold more than %d bytes together" % (info.name, MAX_LINKS))
        data = _read_whole(_Data(tar, info), info.size)
        try:
            self.links[tree.member] = parse_links(data, info.name, _EntryTypes(self.table))
        except ArchiveError as exc:
            raise ArchiveError("%s: %s" % (self.name, exc)) from None
        tree.closed = True
        return hashlib.sha256(data).digest()

    def finish(self) -> None:
        """Once every member is read: what only the whole archive can tell."""
        if not self.members:
            raise ArchiveError("%s is not a .sar archive: empty tar stream" % self.name)
        if self.checksums is None:
            raise ArchiveError("%s is truncated or corrupted: the tar stream ends before checksums.sha256" % self.name)
        # A later symlink can change where an earlier one resolves: check all against the final set.
        for tree in self.trees.values():
            for link, target in tree.links.items():
                if not _resolves_inside(link.rpartition("/")[0], target, tree.links, tree.member, self.budget):
                    raise self.fail("symlink to %r leaves its tree %s" % (target, tree.member), unsafe=link)
        for i, src in enumerate(self.layout.sources):
            if src["member"] not in self.table:
                raise ArchiveError("%s: manifest.json: field sources[%d].member names %r, which is not in the archive"
                                   % (self.name, i, src["member"]))
        self.check_sums()

    def check_sums(self) -> None:
        """checksums.sha256 lists every regular member before it, in archive order, with its SHA-256."""
        listed = (m["name"] for m in self.members if m["type"] == "file" and m["name"] not in (CHECKSUMS, SIGNATURE))
        for number, member, digest in _iter_checksums(self.checksums):
            expected = next(listed, None)
            if member != expected:
                if not isinstance(self.table.get(member), bytes):
                    raise ArchiveError("%s is truncated or corrupted: %r is listed in checksums.sha256 but not in the archive"
                                       % (self.name, member))
                if expected is None:
                    raise self.fail("%r is listed twice in checksums.sha256" % member)
                raise ArchiveError("%s is malformed: member %r is missing from checksums.sha256 (line %d lists %r: "
                                   "listed twice or out of archive order)" % (self.name, expected, number, member))
            if self.table[member].hex() != digest:
                raise ArchiveError("%s is corrupted: SHA-256 of member %r does not match checksums.sha256" % (self.name, member))
        missing = next(listed, None)
        if missing is not None:
            raise ArchiveError("%s is malformed: member %r is missing from checksums.sha256" % (self.name, missing))


def _scan(path: str, passphrase, identities) -> dict:
    """One full streaming pass: structure, safety, every member's SHA-256, every layer's integrity."""
    scan = _Scan(os.path.basename(path))
    opened = _Opened(path, passphrase, identities)
    try:
        with _translated(path):
            tar = _open_tar(opened.stream)
            while True:
                info = _next(tar)
                if info is None:
                    break
                scan.member(info, tar)
            if scan.members:
                opened.finish(_pending(tar))
            scan.finish()
            return {"manifest": scan.manifest, "members": scan.members, "checksums_ok": True, "size": opened.hashing.size,
                    "sha256": opened.hashing.sha.hexdigest(), "compression": opened.compression,
                    "encrypted": opened.encrypted, "signature": scan.signature, "links": scan.links,
                    "_digests": scan.table}
    finally:
        opened.close()


def verify(path: str, passphrase: str | None = None, identities: list | None = None) -> dict:
    """Full verification; ArchiveError, or {manifest, members [{name, type, size}], checksums_ok, size, sha256,
    compression, encrypted, signature (None or {public_key, fingerprint}), links ({tree member: [entries]})}.

    A signature that does not match is refused; whether its key is trusted is signing.check_trust()'s call."""
    info = _scan(path, passphrase, identities)
    del info["_digests"]
    return info


def scan(path: str, passphrase: str | None = None, identities: list | None = None) -> dict:
    """verify(), keeping the per-member table extract_routed() needs (key `_digests`)."""
    return _scan(path, passphrase, identities)


@contextlib.contextmanager
def open_members(path: str, passphrase: str | None = None, identities: list | None = None):
    """Context manager yielding an iterator of (TarInfo, fileobj or None) in archive order.

    Unsafe members raise ArchiveError before they are yielded; run verify() first to be
    sure the whole archive is intact before acting on any member."""
    opened = _Opened(path, passphrase, identities)
    try:
        yield _iter_members(path, opened)
    finally:
        opened.close()


class _MemberFile:
    """A member's data; damage found while reading it raises ArchiveError."""

    def __init__(self, path: str, handle):
        self._path = path
        self._handle = handle

    def read(self, size: int = -1) -> bytes:
        with _translated(self._path):
            return self._handle.read(size)

    def readable(self) -> bool:
        return True


def _iter_members(path: str, opened: _Opened, scanned: dict | None = None):
    """The members, each checked before it is yielded: against the earlier full scan `scanned` when
    given (the archive must not have changed since), else with the member-by-member safety rules."""
    safety = _Safety() if scanned is None else None
    expected = scanned["members"] if scanned is not None else None
    table = scanned["_digests"] if scanned is not None else None
    changed = "the archive %s changed since it was verified" % os.path.basename(path)
    count = 0
    with _translated(path):
        tar = _open_tar(opened.stream)
    while True:
        with _translated(path):
            info = _next(tar)
        if info is None:
            if expected is not None and count != len(expected):
                raise ArchiveError(changed)
            return
        count += 1
        if count > MAX_MEMBERS:
            raise ArchiveError("%s is malformed: more than %d members" % (os.path.basename(path), MAX_MEMBERS))
        if safety is not None:
            safety.check(info)
        else:
            seen = expected[count - 1] if count <= len(expected) else None
            value = table.get(info.name, _MISSING)
            if seen is None or seen["name"] != info.name or seen["type"] != _member_type(info) \
                    or seen["size"] != (info.size if info.isreg() else 0) \
                    or (not info.isreg() and value != _table_value(info)):
                raise ArchiveError(changed)
        handle = _MemberFile(path, _Data(tar, info)) if info.isreg() else None
        yield info, handle
        if handle is not None:
            _drain(handle)  # what the consumer left: read here, where a short member is an ArchiveError


# ---------------------------------------------------------------- extraction

def _selected(name: str, select) -> bool:
    if select is None:
        return name not in _RESERVED
    for prefix in select:
        prefix = prefix.strip("/")
        if prefix and (name == prefix or name.startswith(prefix + "/")):
            return True
    return False


def _owner(info: tarfile.TarInfo) -> tuple:
    uid, gid = info.uid, info.gid
    if info.uname:
        try:
            uid = pwd.getpwnam(info.uname).pw_uid
        except KeyError:
            pass
    if info.gname:
        try:
            gid = grp.getgrnam(info.gname).gr_gid
        except KeyError:
            pass
    return uid, gid


def _clear(path: str, name: str) -> None:
    """Remove what stands where a member goes (never following a symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        try:
            os.rmdir(path)
        except OSError:
            raise ArchiveError("cannot extract %r: a non-empty directory is in the way" % name) from None
    else:
        os.unlink(path)


class _Extractor:
    def __init__(self, dest: str, digests: dict):
        self.root = os.path.realpath(dest)
        self.digests = digests
        self.as_root = os.geteuid() == 0
        self.dirs: list = []

    def _parent(self, name: str) -> str:
        """Create the member's parent directories, refusing any symlink on the way."""
        path = self.root
        for part in name.split("/")[:-1]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError("cannot extract %r: %s is not a directory (symlinks are not followed)" % (name, path))
        return os.path.join(self.root, *name.split("/"))

    def _mode(self, info: tarfile.TarInfo) -> int:
        return info.mode & (0o7777 if self.as_root else 0o777)

    def extract(self, info: tarfile.TarInfo, handle, key: str | None = None) -> None:
        """Extract `info` at its name below the root; `key`: its name in checksums.sha256 (default: the same)."""
        try:
            self._extract(info, handle, key)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise ArchiveError("cannot extract %r into %s: the path gets too long there" % (info.name, self.root)) from None

    def _extract(self, info: tarfile.TarInfo, handle, key: str | None) -> None:
        key = info.name if key is None else key
        target = self._parent(info.name)
        if info.isdir():
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                os.unlink(target)
                st = None
            if st is None:
                os.mkdir(target, 0o700)
            self.dirs.append((target, info))
            return
        _clear(target, info.name)
        if info.issym():
            os.symlink(info.linkname, target)
            if self.as_root:
                os.lchown(target, *_owner(info))
            if os.utime in os.supports_follow_symlinks:
                os.utime(target, (info.mtime, info.mtime), follow_symlinks=False)
            return
        if info.islnk():
            os.link(os.path.join(self.root, *info.linkname.split("/")), target, follow_symlinks=False)
            return
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as out:
            digest = _hash_member(handle, out.write)
            if digest != self.digests.get(key):
                raise ArchiveError("the archive changed while being extracted: %r does not match its verified SHA-256"
                                   % key)
            if self.as_root:
                os.fchown(out.fileno(), *_owner(info))
            os.fchmod(out.fileno(), self._mode(info))
        os.utime(target, (info.mtime, info.mtime))

    def finish(self) -> None:
        # Directories last, deepest first: their mode may forbid writing and children changed their mtime.
        for target, info in reversed(self.dirs):
            if self.as_root:
                os.chown(target, *_owner(info))
            os.chmod(target, self._mode(info))
            os.utime(target, (info.mtime, info.mtime))


def extract(path: str, dest: str, select=None, passphrase: str | None = None, identities: list | None = None) -> list:
    """Verify the whole archive, then extract the selected members into the existing directory `dest`.

    `select`: member name prefixes (whole path components); None = every member except
    manifest.json, checksums.sha256 and the signature. Returns the extracted member names."""
    if not os.path.isdir(dest):
        raise ArchiveError("extraction destination %s is not an existing directory" % dest)
    scanned = _scan(path, passphrase, identities)
    extractor = _Extractor(dest, scanned["_digests"])
    done = []
    with _members_as_scanned(path, passphrase, identities, scanned) as members:
        for info, handle in members:
            if _selected(info.name, select):
                extractor.extract(info, handle)
                done.append(info.name)
    extractor.finish()
    return done


@contextlib.contextmanager
def _members_as_scanned(path: str, passphrase, identities, scanned: dict):
    """The second pass of an extraction: the members, refused unless exactly those `scanned` saw."""
    opened = _Opened(path, passphrase, identities)
    try:
        yield _iter_members(path, opened, scanned)
    finally:
        opened.close()


def _route_of(name: str, routes: dict):
    for prefix in routes:
        if name == prefix or name.startswith(prefix + "/"):
            return prefix
    return None


def extract_routed(path: str, routes: dict, passphrase: str | None = None, identities: list | None = None,
                   scanned: dict | None = None) -> dict:
    """Verify the whole archive (unless `scanned`, the result of an earlier full scan, is given), then
    extract in one pass: `routes` maps a member name to a destination. A regular-file member goes to
    the file path given (created, must not exist); a directory member and everything below it go into
    the existing directory given, which also takes the member directory's own mode, owner and time.
    Members no route names are skipped. Returns {member: {"files": n, "bytes": b}}."""
    if scanned is None:
        scanned = _scan(path, passphrase, identities)
    digests = scanned["_digests"]
    extractors: dict = {}
    stats = {prefix: {"files": 0, "bytes": 0} for prefix in routes}
    roots = []
    with _members_as_scanned(path, passphrase, identities, scanned) as members:
        for info, handle in members:
            prefix = _route_of(info.name, routes)
            if prefix is None:
                continue
            dest = routes[prefix]
            if info.name == prefix and info.isreg():
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
                with os.fdopen(fd, "wb") as out:
                    if _hash_member(handle, out.write) != digests.get(info.name):
                        raise ArchiveError("the archive changed while being extracted: %r does not match its "
                                           "verified SHA-256" % info.name)
                stats[prefix]["files"] += 1
                stats[prefix]["bytes"] += info.size
                continue
            if not os.path.isdir(dest):
                raise ArchiveError("extraction destination %s is not an existing directory" % dest)
            extractor = extractors.setdefault(prefix, _Extractor(dest, digests))
            if info.name == prefix:
                if not info.isdir():
                    raise ArchiveError("member %r should be a directory" % info.name)
                roots.append((extractor, info))
                continue
            inner = copy.copy(info)
            inner.name = info.name[len(prefix) + 1:]
            if info.islnk():
                if not info.linkname.startswith(prefix + "/"):
                    raise ArchiveError("hardlink %r points out of its tree (%r)" % (info.name, info.linkname))
                inner.linkname = info.linkname[len(prefix) + 1:]
            extractor.extract(inner, handle, key=info.name)
            if info.isreg():
                stats[prefix]["files"] += 1
                stats[prefix]["bytes"] += info.size
    for extractor in extractors.values():
        extractor.finish()
    for extractor, info in roots:
        if extractor.as_root:
            os.chown(extractor.root, *_owner(info))
        os.chmod(extractor.root, extractor._mode(info))  # pylint: disable=protected-access
        os.utime(extractor.root, (info.mtime, info.mtime))
    return stats


__all__ = ["ArchiveWriter", "read_manifest", "verify", "scan", "extract", "extract_routed", "open_members",
           "validate_manifest", "parse_links", "parse_checksums", "checksum_line", "path_problem", "size_cap",
           "MANIFEST", "CHECKSUMS", "SIGNATURE", "ARCHIVE_NAME_RE", "archive_name", "archive_pattern", "partial_name",
           "partial_pattern", "new_manifest", "COMPRESSIONS", "LINKS_SUFFIX", "FORMAT_VERSION", "FORMATS"]
