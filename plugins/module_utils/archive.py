# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The .sar archive (SPEC section 5; docs/sar-format.md): write (streaming), read, verify, safe extract.

Layers, outermost last: tar (pax) -> zstd or gzip -> optional age encryption -> file.
Members: `manifest.json` first, `checksums.sha256` (sha256sum -c format) last.
Everything streams: memory stays bounded whatever the size of the data."""

from __future__ import annotations

import contextlib
import copy
import grp
import gzip
import hashlib
import json
import os
import pwd
import stat
import tarfile
import time
import zlib

from . import agecrypt
from .errors import ArchiveError, MissingLibrary, SourceError, ValidationError

try:
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

MANIFEST = "manifest.json"
CHECKSUMS = "checksums.sha256"
COMPRESSIONS = ("zstd", "gzip")
# Next to tree member `files/<category>/<index>`: the tree's symlinks that point out of it (JSON list).
LINKS_SUFFIX = ".links.json"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
COPY_CHUNK = 1024 * 1024
ZSTD_LEVEL = 3
GZIP_LEVEL = 6
# zstd worker threads: a few overlap compression with reading; more would only cost memory.
# Workers buffer several jobs each: 2 MiB jobs keep that near 10-15 MiB a thread (zstd's default
# jobs for level 3 cost ~45 MiB a thread) at the same ratio and speed (measured).
ZSTD_MAX_THREADS = 4
ZSTD_JOB_SIZE = 2 * 1024 * 1024
# Members read into memory whole: refuse absurd sizes instead of exhausting memory.
MAX_MANIFEST = 16 * 1024 * 1024
MAX_CHECKSUMS = 512 * 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


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


def parse_checksums(data: bytes) -> list:
    """[(name, hexdigest)] from a checksums.sha256 member; ArchiveError when malformed."""
    out = []
    text = data.decode("utf-8", "surrogateescape")
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        escaped = line.startswith("\\")
        if escaped:
            line = line[1:]
        digest, sep, name = line[:64], line[64:66], line[66:]
        if len(digest) != 64 or sep not in ("  ", " *") or not name or any(c not in "0123456789abcdef" for c in digest):
            raise ArchiveError("checksums.sha256 is malformed (line %d)" % number)
        if escaped:
            name = _unescape(name)
        out.append((name, digest))
    return out


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


def _check_arcname(name: str) -> str:
    if not isinstance(name, str) or not name.strip("/"):
        raise ValueError("archive member name must be a non-empty string")
    name = name.rstrip("/")
    if name.startswith("/") or ".." in name.split("/") or "\0" in name:
        raise ValueError("archive member name %r must be relative without '..'" % name)
    return name


# ---------------------------------------------------------------- writing

class _CountingWriter:
    """Bottom layer: counts and hashes exactly the bytes that reach the .sar file."""

    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        self.raw.write(data)
        size = len(memoryview(data).cast("B"))
        self.size += size
        return size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True


class ArchiveWriter:
    """Builds a .sar file at `path` (created 0600), streaming.

    encryption: None or {"passphrase": str|None, "recipients": list|None}."""

    def __init__(self, path: str, compression: str = "zstd", encryption: dict | None = None):
        if compression not in COMPRESSIONS:
            raise ValidationError("compression", "must be one of %s, got %r" % (", ".join(COMPRESSIONS), compression))
        if compression == "zstd":
            _zstd()
        self.path = path
        self.compression = compression
        self._members = 0
        self._tar_pos = 0
        self._sums: list = []
        self._names: set = set()
        self._result = None
        self._age = None
        self._comp = None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.fchmod(fd, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=COPY_CHUNK)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        try:
            self._counter = _CountingWriter(self._file)
            sink = self._counter
            if encryption and (encryption.get("passphrase") or encryption.get("recipients")):
                self._age = agecrypt.AgeWriter(sink, recipients=encryption.get("recipients") or None,
                                               passphrase=encryption.get("passphrase") or None)
                sink = self._age
            if compression == "zstd":
                threads = min(os.cpu_count() or 1, ZSTD_MAX_THREADS)
                extra = {"threads": threads, "job_size": ZSTD_JOB_SIZE} if threads > 1 else {}
                params = zstandard.ZstdCompressionParameters.from_level(ZSTD_LEVEL, write_checksum=1, **extra)
                self._comp = zstandard.ZstdCompressor(compression_params=params).stream_writer(sink, closefd=False)
            else:
                self._comp = gzip.GzipFile(filename="", fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
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

    # low level tar stream
    def _write(self, data) -> None:
        self._comp.write(data)
        self._tar_pos += len(data)

    def _pad(self, size: int) -> None:
        rest = -size % _BLOCK
        if rest:
            self._write(b"\0" * rest)

    def _header(self, info: tarfile.TarInfo, internal: bool = False) -> None:
        if self._result is not None:
            raise ValueError("archive already closed")
        if not internal:
            if not self._members:
                raise ValueError("add_manifest() must come first")
            if info.name in (MANIFEST, CHECKSUMS):
                raise ValueError("%s is reserved for the archive itself" % info.name)
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._members += 1

    @staticmethod
    def _info(name: str, st, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = int(st.st_mtime)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname, info.gname = _uname(st.st_uid), _gname(st.st_gid)
        return info

    def _add_data(self, name: str, data: bytes, mode: int, internal: bool = False) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        info.uid, info.gid = os.getuid(), os.getgid()
        info.uname, info.gname = _uname(info.uid), _gname(info.gid)
        self._header(info, internal)
        self._write(data)
        self._pad(len(data))
        self._note(name, hashlib.sha256(data).hexdigest())

    def _note(self, name: str, digest: str) -> None:
        if name in self._names:
            raise ValueError("member %s added twice" % name)
        self._names.add(name)
        self._sums.append((name, digest))

    # public API
    def add_manifest(self, manifest: dict) -> None:
        if self._members:
            raise ValueError("manifest.json must be the first member")
        data = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
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
        buf = bytearray(COPY_CHUNK)
        view = memoryview(buf)
        while remaining:
            try:
                got = handle.readinto(view[:min(COPY_CHUNK, remaining)])
            except OSError as exc:
                raise SourceError("reading %s failed: %s" % (path, exc.strerror or exc)) from None
            if not got:
                raise SourceError("%s shrank while being archived (%d of %d bytes read); "
                                  "retry when nothing writes to it" % (path, size - remaining, size))
            sha.update(view[:got])
            self._write(view[:got])
            remaining -= got
            if progress is not None:
                progress(got)
        self._pad(size)
        self._note(arcname, sha.hexdigest())
        return size

    def add_tree(self, arcprefix: str, root: str, progress=None) -> dict:
        """Archive the directory `root` under `arcprefix` (sorted, symlinks kept as symlinks).

        Sockets, fifos and devices are skipped and listed in "skipped"; entries that vanish
        while the tree is walked are listed in "vanished"."""
        arcprefix = _check_arcname(arcprefix)
        result = {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0, "skipped": [], "vanished": [], "external_links": []}
        links: dict = {}  # symlinks of this tree in the archive, for resolving later ones
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
                if not _resolves_inside(name.rpartition("/")[0], target, links, floor=arcprefix):
                    # A link out of its tree (/usr/share/asterisk/moh, ../../x) would make the archive
                    # unsafe to extract: it goes in the tree's links member and restore recreates it.
                    result["external_links"].append({"path": name[len(arcprefix) + 1:], "target": target,
                                                     "mtime": int(st.st_mtime), "owner": _uname(st.st_uid),
                                                     "group": _gname(st.st_gid), "uid": st.st_uid, "gid": st.st_gid})
                    continue
                info = self._info(name, st, tarfile.SYMTYPE)
                info.linkname = target
                self._header(info)
                links[name] = target
                result["symlinks"] += 1
            else:
                result["skipped"].append(path)
        if result["external_links"]:
            data = json.dumps(result["external_links"], indent=1, sort_keys=True, ensure_ascii=False,
                              ).encode("utf-8", "surrogateescape")
            self._add_data(arcprefix + LINKS_SUFFIX, data, 0o644)
        return result

    def close(self) -> dict:
        """Write checksums.sha256, finish every layer, fsync; returns {path, size, sha256}."""
        if self._result is not None:
            return self._result
        try:
            if not self._members:
                raise ValueError("add_manifest() must come first")
            sums = "".join(checksum_line(d, n) for n, d in self._sums).encode("utf-8", "surrogateescape")
            self._add_data(CHECKSUMS, sums, 0o644, internal=True)
            # End of archive: two zero blocks, padded to a full record as tar(1) does.
            end = 2 * _BLOCK
            end += -(self._tar_pos + end) % _RECORD
            self._write(b"\0" * end)
            self._comp.close()
            if self._age is not None:
                self._age.close()
            self._file.flush()
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
        for closer in (self._comp, self._age, getattr(self, "_file", None)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # pylint: disable=broad-except
                    pass
        _unlink(self.path)
        self._result = {"aborted": True}


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


def _drain(src) -> bool:
    """Read `src` to its end; True if everything read was zero bytes."""
    zeros = True
    while True:
        data = src.read(COPY_CHUNK)
        if not data:
            return zeros
        if zeros and data.count(0) != len(data):
            zeros = False


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
            self.hashing = _HashingReader(self.raw)
            head = _read_exact(self.hashing, len(agecrypt.INTRO) + 1)
            src = self.compressed = _PrefixReader(head, self.hashing)
            self.encrypted = agecrypt.is_age(head)
            if self.encrypted:
                if not passphrase and not identities:
                    raise ArchiveError("%s is encrypted: give its passphrase or an age identity" % os.path.basename(path))
                src = self.compressed = agecrypt.AgeReader(src, identities=identities or None, passphrase=passphrase or None)
            magic = _read_exact(src, 4)
            src = self.compressed = _PrefixReader(magic, src)
            if magic == ZSTD_MAGIC:
                self.compression = "zstd"
                self.frames = _ZstdFrames()
                src = self.compressed = _TrackedReader(src, self.frames)
                self.stream = _zstd().ZstdDecompressor().stream_reader(src, read_across_frames=True)
            elif magic[:2] == GZIP_MAGIC:
                self.compression = "gzip"
                self.stream = gzip.GzipFile(fileobj=src, mode="rb")
            else:
                raise ArchiveError("%s is not a .sar archive (not age-encrypted, not zstd or gzip compressed)"
                                   % os.path.basename(path))
        except BaseException:
            self.raw.close()
            raise

    def finish(self) -> bool:
        """Read every layer to its end, so checksums, the age last chunk and the file hash are all checked.

        Returns whether the tar stream's remainder was all zeros (end-of-archive padding)."""
        zeros = _drain(self.stream)
        _drain(self.compressed)
        if self.frames is not None:
            if self.frames.bad:
                raise ArchiveError("the zstd stream is corrupted or followed by unexpected data")
            if not self.frames.complete():
                raise ArchiveError("the archive is truncated (zstd stream incomplete)")
        _drain(self.hashing)
        return zeros

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


def _resolves_inside(start: str, target: str, links: dict, floor: str = "") -> bool:
    """Whether `target`, taken relative to archive directory `start` and following the archive's
    own symlinks (`links`: member name -> link target), stays inside the extraction root
    (or inside the directory `floor`, when given)."""
    if target.startswith("/"):
        return False
    stack = [p for p in start.split("/") if p not in ("", ".")]
    base = len([p for p in floor.split("/") if p])
    todo = [p for p in target.split("/") if p not in ("", ".")]
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if len(stack) <= base:
                return False
            stack.pop()
            continue
        stack.append(part)
        key = "/".join(stack)
        if key in links:
            hops += 1
            if hops > 64 or links[key].startswith("/"):
                return False
            stack.pop()
            todo = [p for p in links[key].split("/") if p not in ("", ".")] + todo
    return True


class _Safety:
    """Refuses members that could write outside the destination (SPEC section 5)."""

    def __init__(self):
        self.links: dict = {}
        self.regular: set = set()

    def check(self, info: tarfile.TarInfo) -> None:
        name = info.name
        parts = name.split("/")
        why = None
        if not name or name.startswith("/"):
            why = "absolute path"
        elif ".." in parts:
            why = "'..' in its path"
        elif "\0" in name:
            why = "NUL in its name"
        elif info.ischr() or info.isblk():
            why = "device file"
        elif info.isfifo():
            why = "fifo"
        elif not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
            why = "unsupported member type %r" % info.type
        else:
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in self.links:
                    why = "its path goes through the symlink %s" % "/".join(parts[:i])
                    break
        if why is None and info.issym():
            if not info.linkname or not _resolves_inside("/".join(parts[:-1]), info.linkname, self.links):
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

    def check_final(self) -> None:
        # A later symlink can change where an earlier one resolves: check all against the final set.
        for name, target in self.links.items():
            if not _resolves_inside(name.rpartition("/")[0], target, self.links):
                raise ArchiveError("unsafe archive member %r: symlink to %r leaves the destination" % (name, target))


def _read_member(handle, limit: int, what: str) -> bytes:
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise ArchiveError("%s is larger than %d bytes: not a .sar archive" % (what, limit))
    return data


def _hash_member(handle, sink=None) -> str:
    sha = hashlib.sha256()
    while True:
        data = handle.read(COPY_CHUNK)
        if not data:
            return sha.hexdigest()
        sha.update(data)
        if sink is not None:
            sink(data)


def _open_tar(stream):
    return tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape")


def _next(tar):
    info = tar.next()
    tar.members = []  # stream mode would otherwise keep every TarInfo: memory grows with the member count
    return info


def _parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise ArchiveError("manifest.json is not a JSON object: not a .sar archive")
    return manifest


def read_manifest(path: str, passphrase: str | None = None, identities: list | None = None) -> dict:
    """The manifest (first member) only; cheap."""
    opened = _Opened(path, passphrase, identities)
    try:
        with _translated(path):
            tar = _open_tar(opened.stream)
            info = _next(tar)
            if info is None or info.name != MANIFEST or not info.isreg():
                raise ArchiveError("%s is not a .sar archive: the first member is not manifest.json" % os.path.basename(path))
            return _parse_manifest(_read_member(tar.extractfile(info), MAX_MANIFEST, MANIFEST))
    finally:
        opened.close()


def _scan(path: str, passphrase, identities) -> dict:
    """One full streaming pass: structure, safety, every member's SHA-256, every layer's integrity."""
    name = os.path.basename(path)
    opened = _Opened(path, passphrase, identities)
    try:
        with _translated(path):
            tar = _open_tar(opened.stream)
            safety = _Safety()
            manifest = listed = own_digest = None
            computed: dict = {}
            members = []
            while True:
                info = _next(tar)
                if info is None:
                    break
                if not members and (info.name != MANIFEST or not info.isreg()):
                    raise ArchiveError("%s is not a .sar archive: the first member is %r, not manifest.json" % (name, info.name))
                if listed is not None:
                    raise ArchiveError("%s is malformed: member %r follows checksums.sha256, which must be last" % (name, info.name))
                safety.check(info)
                members.append({"name": info.name, "type": _member_type(info), "size": info.size if info.isreg() else 0})
                if not info.isreg():
                    continue
                if info.name in computed:
                    raise ArchiveError("%s is malformed: member %r appears twice" % (name, info.name))
                handle = tar.extractfile(info)
                if info.name == CHECKSUMS:
                    data = _read_member(handle, MAX_CHECKSUMS, CHECKSUMS)
                    listed = parse_checksums(data)
                    own_digest = hashlib.sha256(data).hexdigest()
                elif len(members) == 1:
                    data = _read_member(handle, MAX_MANIFEST, MANIFEST)
                    manifest = _parse_manifest(data)
                    computed[info.name] = hashlib.sha256(data).hexdigest()
                else:
                    computed[info.name] = _hash_member(handle)
            tail_zeros = opened.finish()
            if not members:
                raise ArchiveError("%s is not a .sar archive: empty tar stream" % name)
            if listed is None:
                raise ArchiveError("%s is truncated or corrupted: the tar stream ends before checksums.sha256" % name)
            if not tail_zeros:
                raise ArchiveError("%s is corrupted: unexpected data after the end of the tar stream" % name)
            safety.check_final()
            expected = {}
            for member, digest in listed:
                if member in expected:
                    raise ArchiveError("%s is malformed: %r is listed twice in checksums.sha256" % (name, member))
                expected[member] = digest
            for member, digest in computed.items():
                if member not in expected:
                    raise ArchiveError("%s is malformed: member %r is missing from checksums.sha256" % (name, member))
                if expected[member] != digest:
                    raise ArchiveError("%s is corrupted: SHA-256 of member %r does not match checksums.sha256" % (name, member))
            extra = sorted(set(expected) - set(computed))
            if extra:
                raise ArchiveError("%s is truncated or corrupted: %r is listed in checksums.sha256 but not in the archive"
                                   % (name, extra[0]))
            return {"manifest": manifest, "members": members, "checksums_ok": True, "size": opened.hashing.size,
                    "sha256": opened.hashing.sha.hexdigest(), "compression": opened.compression,
                    "encrypted": opened.encrypted, "_digests": dict(computed, **{CHECKSUMS: own_digest})}
    finally:
        opened.close()


def verify(path: str, passphrase: str | None = None, identities: list | None = None) -> dict:
    """Full verification; {manifest, members [{name, type, size}], checksums_ok, size, sha256} or ArchiveError."""
    info = _scan(path, passphrase, identities)
    del info["_digests"]
    return info


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


def _iter_members(path: str, opened: _Opened):
    safety = _Safety()
    with _translated(path):
        tar = _open_tar(opened.stream)
    while True:
        with _translated(path):
            info = _next(tar)
        if info is None:
            return
        safety.check(info)
        yield info, (_MemberFile(path, tar.extractfile(info)) if info.isreg() else None)


# ---------------------------------------------------------------- extraction

def _selected(name: str, select) -> bool:
    if select is None:
        return name not in (MANIFEST, CHECKSUMS)
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
    manifest.json and checksums.sha256. Returns the extracted member names."""
    if not os.path.isdir(dest):
        raise ArchiveError("extraction destination %s is not an existing directory" % dest)
    scanned = _scan(path, passphrase, identities)
    extractor = _Extractor(dest, scanned["_digests"])
    done = []
    with open_members(path, passphrase, identities) as members:
        for info, handle in members:
            if _selected(info.name, select):
                extractor.extract(info, handle)
                done.append(info.name)
    extractor.finish()
    return done


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
    with open_members(path, passphrase, identities) as members:
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


def scan(path: str, passphrase: str | None = None, identities: list | None = None) -> dict:
    """verify(), keeping the per-member digests extract_routed() needs (key `_digests`)."""
    return _scan(path, passphrase, identities)


__all__ = ["ArchiveWriter", "read_manifest", "verify", "scan", "extract", "extract_routed", "open_members",
           "parse_checksums", "checksum_line", "MANIFEST", "CHECKSUMS", "COMPRESSIONS", "LINKS_SUFFIX"]
