# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Resumable transfers of the network targets (`sftp`, `smb`): one home.

What a network target adds to base.Target is the same whatever the protocol:

- an upload under the partial name with many write requests in flight, every
  reply checked in file order, so `Upload.confirmed` is always a prefix the
  server acknowledged (a failed write, e.g. a full disk, is never missed);
- a connection that drops mid-upload is reconnected and the upload resumed
  from min(confirmed prefix, size of the remote partial), a finite number of
  times (base.Target.retrying); a partial that vanished is started over;
- the partial gets the `.sar` name only after the data was flushed to the
  server's disk and its size checked, with a rename that replaces;
- a failed upload removes its partial where the server is still reachable
  (else the next run's prune does), and an upload that could not be resumed
  says so, with the number of attempts;
- the archive (the local source) that cannot be opened or read is reported
  as such, never as a server failure;
- reads (`verify: full`, restores) with several requests in flight, the
  session left usable when a reader is closed half way;
- idempotent operations (listing, removal, folders) reconnect a dropped
  session and retry.

A protocol module implements the primitives of `TransferTarget` (paths,
size, open, write window, flush, rename, remove, error mapping) and a
`RequestWindow` for its write requests; this module owns the order in which
they are used, the state kept across reconnects, and the wording.
"""

from __future__ import annotations

import io

from .. import errors
from ..errors import TargetError
from ..archive import partial_name
from .base import Target


class Upload:
    """Progress of one upload across reconnects."""

    def __init__(self):
        self.started = False
        self.confirmed = 0  # bytes from offset 0 the server acknowledged


def open_source(path: str):
    """The archive to upload, opened for reading (builtin open: a test may wrap it)."""
    try:
        return open(path, "rb")  # pylint: disable=consider-using-with
    except OSError as exc:
        raise TargetError("cannot read the archive %s: %s" % (path, exc.strerror or exc), errors.FAILED) from None


def read_source(src, buf) -> int:
    """src.readinto(buf); a local read error is the archive's, not the server's."""
    try:
        return src.readinto(buf) or 0
    except OSError as exc:
        raise TargetError("cannot read the archive %s: %s" % (getattr(src, "name", ""), exc.strerror or exc),
                          errors.FAILED) from None


def read_chunk(src, length: int) -> bytes:
    """src.read(length), with read_source's error."""
    try:
        return src.read(length)
    except OSError as exc:
        raise TargetError("cannot read the archive %s: %s" % (getattr(src, "name", ""), exc.strerror or exc),
                          errors.FAILED) from None


class RequestWindow:
    """Write requests of one upload on one open remote file (a protocol implements it)."""

    # Said when nothing is in flight and nothing may be sent (the server's flow control).
    STALLED = "the server accepts no write requests"

    def room(self, left: int) -> int:
        """How many bytes the next request may carry (at most `left`); 0: collect a reply first."""
        raise NotImplementedError

    def send(self, src, pos: int, length: int) -> int:
        """Read up to `length` bytes of src (at `pos`) and send them as one write
        request at offset `pos`; returns how many (0: src ended early)."""
        raise NotImplementedError

    def pending(self) -> bool:
        """Requests await their reply."""
        raise NotImplementedError

    def collect(self) -> int:
        """Wait for the oldest reply, check it (raise on failure) and return the
        end offset it confirms."""
        raise NotImplementedError

    def span(self, offset: int, size: int) -> None:
        """This upload writes bytes offset..size (before the first send)."""

    def drain(self) -> None:
        """Every write confirmed: wait for anything else the window sent (raise on failure)."""


class PipelinedReader(io.RawIOBase):
    """A remote file read with several requests in flight. A protocol
    implements `_next_chunk()` (the next bytes in file order, b"" at the end)
    and `_release()` (collect the replies still on their way and close the
    remote handle, so the session stays usable)."""

    def __init__(self, target: "TransferTarget", what: str):
        super().__init__()
        self.target = target
        self.what = what  # "reading <path>", for error messages
        self.buffer = memoryview(b"")
        self.eof = False
        self.released = False  # own flag: pylint takes IOBase.closed for a constant

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def readinto(self, buf) -> int:
        if self.released:
            raise ValueError("I/O operation on closed file")
        while not self.buffer and not self.eof:
            try:
                chunk = self._next_chunk()
            except TargetError:
                raise
            except self.target.TRANSFER_ERRORS as exc:
                raise self.target.transfer_error(exc, self.what) from None
            if not chunk:
                self.eof = True
                break
            self.buffer = memoryview(chunk)
        count = min(len(buf), len(self.buffer))
        buf[:count] = self.buffer[:count]
        self.buffer = self.buffer[count:]
        return count

    def close(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            self._release()
        except Exception:  # pylint: disable=broad-except
            pass  # a dead session: nothing left to release
        finally:
            super().close()


class TransferTarget(Target):
    """A target reached over a network session that can drop (see the module docstring)."""

    # Exceptions of the protocol library that transfer_error() maps.
    TRANSFER_ERRORS = (OSError, EOFError)
    # Codes of a failed (re)connect that mean "not reachable now": retried.
    UNREACHABLE_CODES = ()
    READER = None  # the PipelinedReader class of the protocol

    # -- what a protocol implements ------------------------------------------------
    def alive(self) -> bool:
        raise NotImplementedError

    def _connect_once(self) -> None:
        raise NotImplementedError

    def transfer_error(self, exc: BaseException, what: str, need: int = 0) -> TargetError:
        """Map a library failure during `what` to a result code; a lost
        connection is transient (the caller reconnects). `need` = bytes still
        to write, to recognise a full disk behind a generic failure."""
        raise NotImplementedError

    def _path(self, name: str) -> str:
        """The remote path of `name` in the job folder."""
        raise NotImplementedError

    def _remote_size(self, path: str):
        """Size of a remote file, None when it does not exist."""
        raise NotImplementedError

    def _open_partial(self, path: str, new: bool):
        """A handle to write the partial: created empty (new) or opened as it is."""
        raise NotImplementedError

    def _truncate(self, handle, size: int) -> None:
        """Cut the partial back to `size` (best effort: overwriting from there is enough)."""

    def _write_window(self, handle, src=None) -> RequestWindow:
        """The write requests of one upload to `handle` (from `src`, the archive)."""
        raise NotImplementedError

    def _flush(self, handle) -> None:
        """The data on the server's disk before the rename makes it an archive."""
        raise NotImplementedError

    def _close_handle(self, handle) -> None:
        raise NotImplementedError

    def _check_space(self, size: int) -> None:
        """Refuse early (diskFull) when the server says the archive cannot fit."""

    def _rename_over(self, partial: str, final: str, name: str) -> None:
        """Rename partial to final, replacing a file of that name."""
        raise NotImplementedError

    def _remove_path(self, path: str) -> None:
        """Remove a remote file; one that does not exist is not an error."""
        raise NotImplementedError

    # -- sessions ---------------------------------------------------------------------
    def _ensure_connected(self) -> None:
        """Reconnect a dropped session; a server still unreachable is transient
        (the caller retries), refused credentials or keys are not."""
        if self.alive():
            return
        try:
            self._connect_once()
        except TargetError as exc:
            if exc.code in self.UNREACHABLE_CODES:
                exc.transient = True
            raise

    def _op(self, what: str, func, *args):
        """An idempotent operation, reconnecting on a dropped session."""
        def once():
            self._ensure_connected()
            try:
                return func(*args)
            except TargetError:
                raise
            except self.TRANSFER_ERRORS as exc:
                raise self.transfer_error(exc, what) from None
        return self.retrying(what, once)

    # -- upload ------------------------------------------------------------------------
    def put(self, src_path: str, name: str, size: int) -> None:
        partial = self._path(partial_name(name))
        final = self._path(name)
        state = Upload()
        try:
            with open_source(src_path) as src:
                self.retrying("upload of %s" % name, self._upload_once, src, partial, name, size, state)
            self.retrying("rename of %s" % name, self._commit_once, partial, final, name, size)
        except TargetError as exc:
            self._discard(partial)
            if exc.transient:  # the connection kept failing: say that the retries are used up
                raise TargetError("%s: upload of %s interrupted and could not be resumed (%d attempts): %s"
                                  % (self.location(), name, self.RETRY_ATTEMPTS, exc), exc.code) from None
            raise
        except BaseException:
            self._discard(partial)
            raise

    def _upload_once(self, src, partial: str, name: str, size: int, state: Upload) -> None:
        self._ensure_connected()
        handle = None
        try:
            offset = 0
            if state.started:
                handle = self._resume(partial, state)
                offset = state.confirmed if handle is not None else 0
            if handle is None:
                if not state.started:
                    self._check_space(size)
                handle = self._open_partial(partial, new=True)
                state.confirmed = 0
            state.started = True
            self._write_pipelined(handle, src, offset, size, state)
            self._flush(handle)
            done, handle = handle, None
            self._close_handle(done)
        except TargetError:
            raise
        except self.TRANSFER_ERRORS as exc:
            raise self.transfer_error(exc, "upload of %s" % name, need=size - state.confirmed) from None
        finally:
            if handle is not None and self.alive():
                try:
                    self._close_handle(handle)
                except Exception:  # pylint: disable=broad-except
                    pass

    def _resume(self, partial: str, state: Upload):
        """Reopen the partial after a reconnect, cut back to the prefix the
        server confirmed (requests in flight at the cut may have landed out of
        order). None: start over."""
        remote_size = self._remote_size(partial)
        if remote_size is None:
            self.log("partial upload vanished on the server, starting over")
            return None
        state.confirmed = min(state.confirmed, remote_size)
        handle = self._open_partial(partial, new=False)
        if remote_size != state.confirmed:
            try:
                self._truncate(handle, state.confirmed)
            except self.TRANSFER_ERRORS:
                pass  # overwriting from the confirmed offset is enough
        self.log("resuming upload at byte %d (%d on the server)" % (state.confirmed, remote_size))
        return handle

    def _write_pipelined(self, handle, src, offset: int, size: int, state: Upload) -> None:
        """Write src[offset:size] with the protocol's window of requests
        awaiting replies; replies are checked in file order, so
        `state.confirmed` is always a prefix the server acknowledged."""
        window = self._write_window(handle, src)
        window.span(offset, size)
        src.seek(offset)
        pos = offset
        while pos < size or window.pending():
            while pos < size:
                length = window.room(size - pos)
                if not length:
                    break
                count = window.send(src, pos, length)
                if not count:
                    raise TargetError("%s: the archive shrank while uploading (%d of %d bytes)"
                                      % (self.location(), pos, size), errors.FAILED)
                pos += count
            if not window.pending():
                raise TargetError("%s: %s" % (self.location(), window.STALLED), errors.FAILED)
            state.confirmed = window.collect()
        window.drain()

    def _commit_once(self, partial: str, final: str, name: str, size: int) -> None:
        self._ensure_connected()
        try:
            have = self._remote_size(partial)
            if have is None:
                # An earlier attempt may have renamed it before the cut.
                try:
                    if self._remote_size(final) == size:
                        return
                except self.TRANSFER_ERRORS:
                    pass
                raise TargetError("%s: the partial upload of %s disappeared before the rename" % (self.location(), name),
                                  errors.FAILED)
            if have != size:
                raise TargetError("%s: the upload of %s has %d bytes on the server, expected %d; not renamed"
                                  % (self.location(), name, have, size), errors.VERIFY_FAILED)
            self._rename_over(partial, final, name)
        except TargetError:
            raise
        except self.TRANSFER_ERRORS as exc:
            raise self.transfer_error(exc, "rename of %s" % name) from None

    def _discard(self, partial: str) -> None:
        """Best effort after a failure; a partial left on an unreachable
        server is removed by the next run's prune."""
        if not self.alive():
            return
        try:
            self._remove_path(partial)
        except Exception:  # pylint: disable=broad-except
            pass

    # -- the rest of the primitives of base.Target ----------------------------------------
    def remove(self, name: str) -> None:
        self._op("removing %s" % name, self._remove_path, self._path(name))

    def open_read(self, name: str):
        return self._op("opening %s" % name, self.READER, self, self._path(name))
