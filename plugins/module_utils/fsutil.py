# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Small shared helpers: atomic private files, sizes (parsed and shown), durations, host name, SHA-256 of a
stream or file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile

from .errors import ValidationError

_SIZE_UNITS = {
    "": 1, "B": 1,
    "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4,
    "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4,
}
_DURATION_UNITS = {"": 1, "S": 1, "M": 60, "H": 3600, "D": 86400}
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value, field: str) -> int:
    """Bytes from an int or '20 MB' / '1GiB' (KB/MB/GB powers of 1000, KiB/MiB/GiB of 1024)."""
    if isinstance(value, bool):
        raise ValidationError(field, "expected a size (bytes or e.g. '20MB'), got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValidationError(field, "must not be negative, got %d" % value)
        return value
    match = _NUMBER_UNIT.match(str(value))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValidationError(
            field, "%r is not a size: use bytes or a number with KB, MB, GB, KiB, MiB or GiB" % (value,))
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


_SHOWN_UNITS = ("B", "KB", "MB", "GB", "TB")


def format_size(num, unit: str = "") -> str:
    """How every message, report and progress line shows a size: powers of 1000 like parse_size's KB/MB,
    one decimal below 100 and none from 100 on ('950 B', '8.0 GB', '31.2 MB', '200 KB', '2.4 TB'); None is
    '-'. `unit` ('MB') fixes the unit (a progress line that must not jump between units)."""
    if num is None:
        return "-"
    if unit:
        value = num / _SIZE_UNITS[unit.upper()]
    else:
        value, unit = float(num), _SHOWN_UNITS[0]
        for unit in _SHOWN_UNITS:
            if abs(value) < 1000 or unit == _SHOWN_UNITS[-1]:
                break
            value /= 1000
        if unit == "B":
            return "%d B" % value
    return ("%.0f %s" if abs(round(value, 1)) >= 100 else "%.1f %s") % (value, unit)


HASH_CHUNK = 1024 * 1024


def read_pieces(handle, chunk: int = HASH_CHUNK):
    """What is left to read in the binary file object `handle`, `chunk` bytes at a time, as views of one
    reused buffer (readinto): a fresh bytes object per piece is fresh memory for the kernel to hand out
    and zero each time (bench_local). A view is valid until the next piece is asked for. Where `handle`
    has no readinto, or io.RawIOBase's stub, the pieces are read() bytes."""
    readinto = getattr(handle, "readinto", None)
    if readinto is not None:
        buffer = memoryview(bytearray(chunk))
        while True:
            try:
                got = readinto(buffer)
            except NotImplementedError:  # io.RawIOBase's stub: the file object has read() only
                break
            if not got:
                return
            yield buffer[:got]
    yield from iter(lambda: handle.read(chunk), b"")


def sha256_stream(handle, chunk: int = HASH_CHUNK, sinks=()) -> tuple:
    """(SHA-256 hash object, byte count) of what is left to read in the binary file object `handle`, read
    `chunk` bytes at a time; every piece is also handed to each callable of `sinks` (another hash's
    update, a writer), so one pass serves several consumers. The one streaming SHA-256 of the engine.

    Without sinks it reads through read_pieces (one reused buffer); sinks get pieces of their own,
    which they may keep."""
    digest = hashlib.sha256()
    total = 0
    for data in read_pieces(handle, chunk) if not sinks else iter(lambda: handle.read(chunk), b""):
        digest.update(data)
        total += len(data)
        for sink in sinks:
            sink(data)
    return digest, total


def sha256_file(path: str, chunk: int = HASH_CHUNK, sinks=()) -> tuple:
    """sha256_stream() of the file at `path` (OSError when it cannot be read)."""
    with open(path, "rb") as handle:
        return sha256_stream(handle, chunk, sinks)


def parse_duration(value, field: str) -> int:
    """Seconds from an int or '30s' / '5m' / '1h' / '1d'."""
    if isinstance(value, bool):
        raise ValidationError(field, "expected a duration (seconds or e.g. '1h'), got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValidationError(field, "must not be negative, got %d" % value)
        return value
    match = _NUMBER_UNIT.match(str(value))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _DURATION_UNITS:
        raise ValidationError(field, "%r is not a duration: use seconds or e.g. 30s, 5m, 1h, 1d" % (value,))
    return int(float(match.group(1)) * _DURATION_UNITS[unit])


def short_hostname() -> str:
    """SPEC section 9: the short host name, up to the first dot."""
    return socket.gethostname().split(".", 1)[0]


def ensure_private_dir(path: str) -> None:
    """Create a directory (and parents) with mode 0700 if missing."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write a file atomically (temp file in the same dir, fsync, rename) with `mode`."""
    directory = os.path.dirname(os.path.abspath(path))
    ensure_private_dir(directory)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str, obj, mode: int = 0o600) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode)


def read_json(path: str):
    with open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


# Work folders in staging: `.<job>-XXXXXXXX` (runs), `.restore-XXXXXXXX`, `.drill-XXXXXXXX` (mkdtemp's suffix).
_STAGING_WORKDIR = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]*-[a-z0-9_]{8}$")


def clean_staging(root: str, log=None, kept_copy=None, keep=()) -> list:
    """Remove the work folders killed runs, restores and drills left in the staging directory `root`
    (and files matching `kept_copy`, a run's kept archive); never the names in `keep`. Only the holder of
    the maintenance lock may call this: it alone works in staging. Returns what was removed."""
    import shutil  # local: only the lock holder cleans
    removed = []
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return removed
    for entry in entries:
        path = os.path.join(root, entry)
        if path in keep or entry in keep:
            continue
        stale_dir = bool(_STAGING_WORKDIR.match(entry)) and os.path.isdir(path) and not os.path.islink(path)
        stale_copy = kept_copy is not None and bool(kept_copy.match(entry)) and os.path.isfile(path)
        if stale_dir or stale_copy:
            if log:
                log("removing leftover %s from an interrupted run, restore or drill" % path)
            if stale_dir and entry.startswith(".drill-"):
                # local: only a killed drill leaves a server running, and staging's group and mode changed
                from .pgcluster import give_back_staging, stop_leftover
                if stop_leftover(path) and log:
                    log("stopped the private PostgreSQL cluster an interrupted drill left running in %s" % path)
                said = give_back_staging(path)
                if said and log:
                    log(said)
            if stale_dir:
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
            removed.append(path)
    return removed
