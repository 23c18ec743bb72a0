# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`smb`: a Windows/Samba share reached with smbprotocol (seed: "Netzwerkfreigabe").

What this adds to the common delivery of base.Target:
- one SMB connection per target instance, in a private connection cache of
  smbclient (never the process-wide pool), closed in `close()`; `port` is
  passed to every smbclient call (the pool is keyed by server *and* port);
- `encrypt: true` (the default) requires SMB 3 encryption for the whole
  session: a server that cannot encrypt is refused (mountfail) instead of
  silently sending the appliance's data in clear; messages are signed in any
  case and a guest fallback is refused by smbprotocol;
- uploads with several 1 MiB write requests in flight (smbclient's file
  objects wait for every reply before sending the next request: about half
  the speed on loopback, far less over a WAN), every reply checked in file
  order, so `confirmed` is always a prefix the server acknowledged;
- a connection that drops mid-upload is reconnected and the upload resumed
  from min(confirmed prefix, size of the remote partial), a finite number of
  times (base.retrying); the data is flushed (SMB2 FLUSH) and its size checked
  before the partial is renamed (replace semantics) to its `.sar` name;
- reads for `verify: full` and restores are pipelined the same way.

Result codes (SPEC section 7):
- `authFailed`: the server refused the credentials (logon failure, wrong
  password, locked/disabled/expired account, Kerberos failure) -- and also
  "access denied" on the share or in its folders. Deliberate choice: the
  credentials were accepted for login but refused *for this share*; the
  remedy is the same (fix the account or its rights on the server), and it
  mirrors the SFTP target, whose one code `sftpRightProblem` covers both a
  refused login and missing write permission. `mountfail` stays what the
  appliance means by it: server or share not reachable/usable at all. The
  message says which of the two happened.
- `mountfail`: server unreachable, connection lost for good, share missing,
  or encryption required but not offered by the server;
- `diskFull`: STATUS_DISK_FULL / STATUS_QUOTA_EXCEEDED, or a volume that
  reports less free space than the archive before the upload starts.

The request/reply calls used for pipelining (`Open.write/read(send=False)`,
`Connection.send/receive`, the write/read response structures) are the
ones smbclient's own SMBRawIO is built on.
"""

from __future__ import annotations

import collections
import io
import socket
import uuid

from .. import errors
from ..errors import MissingLibrary, TargetError
from .base import ROOT_DIR, RemoteFile, Target, partial_name

try:
    import smbclient
    from smbprotocol import exceptions as smb_exc
    from smbprotocol.file_info import FileRenameInformation
    from smbprotocol.header import NtStatus
    from smbprotocol.open import FilePipePrinterAccessMask, SMB2ReadResponse, SMB2SetInfoRequest, SMB2WriteResponse
except ImportError:  # pragma: no cover
    smbclient = None

try:
    from spnego.exceptions import SpnegoError
except ImportError:  # pragma: no cover
    class SpnegoError(Exception):  # type: ignore[no-redef]
        """Stand-in: pyspnego comes with smbprotocol; without it nothing here runs."""

MAX_PAYLOAD = 64 * 1024  # one SMB2 credit pays for this much
ALLOCATOR_WARMUP = 8 * 1024 * 1024  # see _warm_allocator
REQUEST = 1024 * 1024  # bytes per read/write request
IN_FLIGHT = 8 * 1024 * 1024  # bytes of requests awaiting their reply
FILE_ATTRIBUTE_DIRECTORY = 0x10

# NTSTATUS values (numeric, so an older smbprotocol without a name still maps).
STATUS_ACCESS_DENIED = 0xC0000022
STATUS_PRIVILEGE_NOT_HELD = 0xC0000061
STATUS_DISK_FULL = 0xC000007F
STATUS_QUOTA_EXCEEDED = 0xC0000044
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_OBJECT_PATH_NOT_FOUND = 0xC000003A
STATUS_OBJECT_NAME_COLLISION = 0xC0000035
STATUS_NOT_FOUND = 0xC0000225
STATUS_BAD_NETWORK_NAME = 0xC00000CC
STATUS_SHARING_VIOLATION = 0xC0000043
STATUS_END_OF_FILE = 0xC0000011
LOGON_STATUSES = {
    0xC000006D: "wrong user or password",  # STATUS_LOGON_FAILURE
    0xC000006A: "wrong user or password",  # STATUS_WRONG_PASSWORD
    0xC0000064: "wrong user or password",  # STATUS_NO_SUCH_USER
    0xC000006E: "the account may not log in (account restriction)",
    0xC000006F: "the account may not log in at this time",
    0xC0000070: "the account may not log in from this workstation",
    0xC0000071: "the password has expired",
    0xC0000072: "the account is disabled",
    0xC0000193: "the account has expired",
    0xC0000224: "the password must be changed",
    0xC0000234: "the account is locked out",
    0xC000015B: "the account may not log in over the network (logon type not granted)",
}
NOT_FOUND_STATUSES = (STATUS_OBJECT_NAME_NOT_FOUND, STATUS_OBJECT_PATH_NOT_FOUND, STATUS_NOT_FOUND)
# The session or connection is gone on the server's side: reconnect.
SESSION_GONE_STATUSES = (
    0xC0000203,  # STATUS_USER_SESSION_DELETED
    0xC000035C,  # STATUS_NETWORK_SESSION_EXPIRED
    0xC000020C,  # STATUS_CONNECTION_DISCONNECTED
    0xC000020D,  # STATUS_CONNECTION_RESET
    0xC00000C9,  # STATUS_NETWORK_NAME_DELETED
    0xC0000128,  # STATUS_FILE_CLOSED
    0xC0000008,  # STATUS_INVALID_HANDLE
)


def _status_of(exc: BaseException):
    """The NTSTATUS carried by an smbprotocol exception, or None."""
    status = getattr(exc, "ntstatus", None)
    if status is None and smbclient is not None and isinstance(exc, smb_exc.SMBResponseException):
        try:
            status = exc.status
        except Exception:  # pylint: disable=broad-except
            status = None
    return status


def _status_name(status) -> str:
    if status is None:
        return ""
    if smbclient is not None:
        for key, value in vars(NtStatus).items():
            if key.startswith("STATUS_") and value == status:
                return key
    return "NTSTATUS 0x%08X" % status


def _warm_allocator() -> None:
    """Let glibc's malloc keep the ~1 MiB blocks a transfer churns through.

    smbprotocol copies every request or reply several times (packing,
    signing, encrypting, framing), each copy a fresh ~1 MiB bytes object.
    With glibc's start values (blocks over 128 KiB mapped by mmap, free
    memory over 128 KiB at the heap top given back) most of those copies get
    brand-new pages from the kernel, and the page faults cost about three
    times the CPU of the copying itself (measured: 1.3 vs 0.4 CPU-s per
    300 MB). glibc raises both limits by itself once a mapped block is freed
    (mallopt(3), "dynamic mmap threshold"): freeing one 8 MiB block sets them
    to 8 and 16 MiB, so the blocks are reused. The block is calloc'ed and
    never touched, so this costs one mmap/munmap; other C libraries just
    see a short-lived allocation. Memory stays bounded: at most 16 MiB of
    freed memory is kept for reuse."""
    bytes(ALLOCATOR_WARMUP)


class _Upload:
    """Progress of one upload across reconnects."""

    def __init__(self):
        self.started = False
        self.confirmed = 0  # bytes from offset 0 the server acknowledged


class _Pipe:
    """Requests on one open file with several replies outstanding; credits
    (the server's flow control) are asked for as the window grows."""

    def __init__(self, target: "SmbTarget", raw):
        self.target = target
        self.fd = raw.fd
        self.conn = raw.fd.connection
        self.sid = raw.fd.tree_connect.session.session_id
        self.tid = raw.fd.tree_connect.tree_connect_id
        self.inflight = collections.deque()  # (request, offset, length)
        self.inflight_bytes = 0

    def credits(self) -> int:
        window = self.conn.sequence_window
        return window["high"] - window["low"]

    def chunk(self, want: int, limit: int) -> int:
        """How much the next request may carry (0: wait for a reply first)."""
        want = min(want, REQUEST, limit)
        if not self.conn.supports_multi_credit:
            return min(want, MAX_PAYLOAD) if not self.inflight else 0
        have = self.credits()
        need = (want - 1) // MAX_PAYLOAD + 1
        if have >= need:
            return want
        if self.inflight:
            return 0  # replies give credits back
        return have * MAX_PAYLOAD  # 0 credits: nothing can be sent

    def send(self, message, length: int, offset: int):
        """Send a read/write message asking for enough credits to keep the window full."""
        charge = (max(length, 1) - 1) // MAX_PAYLOAD + 1 if self.conn.supports_multi_credit else 1
        target_credits = IN_FLIGHT // MAX_PAYLOAD + 2 * (REQUEST // MAX_PAYLOAD)
        extra = max(0, target_credits - self.credits() - self.inflight_credits())
        request = self.conn.send(message, sid=self.sid, tid=self.tid, credit_request=charge + min(extra, 64))
        self.inflight.append((request, offset, length))
        self.inflight_bytes += length
        return request

    def inflight_credits(self) -> int:
        return sum((length - 1) // MAX_PAYLOAD + 1 for _r, _o, length in self.inflight)

    def collect(self):
        """Wait for the oldest reply: (header, offset, length)."""
        request, offset, length = self.inflight.popleft()
        self.inflight_bytes -= length
        # receive() raises the reply's error status; the timeout catches a
        # server that stopped answering without closing the connection.
        header = self.conn.receive(request, wait=True, timeout=self.target.IO_TIMEOUT)
        return header, offset, length


class SmbReader(io.RawIOBase):
    """A remote file read with several large read requests in flight."""

    def __init__(self, target: "SmbTarget", path: str):
        super().__init__()
        self.target = target
        self.path = path
        _warm_allocator()
        self.raw = smbclient.open_file(path, mode="rb", buffering=0, share_access="r", **target.kwargs())
        try:
            self.size = self.raw.fd.end_of_file
            self.pipe = _Pipe(target, self.raw)
        except BaseException:
            self.raw.close()
            raise
        self.next_offset = 0
        self.buffer = b""
        self.eof = False
        self.released = False  # own flag: pylint takes IOBase.closed for a constant

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        pipe = self.pipe
        while self.next_offset < self.size and pipe.inflight_bytes < IN_FLIGHT:
            length = pipe.chunk(self.size - self.next_offset, self.pipe.conn.max_read_size)
            if not length:
                break
            message, _recv = self.raw.fd.read(self.next_offset, length, send=False)
            pipe.send(message, length, self.next_offset)
            self.next_offset += length

    def _next_chunk(self) -> bytes:
        self._fill()
        if not self.pipe.inflight:
            if self.next_offset < self.size:
                raise TargetError("%s: the server grants no SMB credits for reading %s" % (self.target.location(), self.path),
                                  errors.FAILED)
            return b""
        try:
            header, offset, length = self.pipe.collect()
        except smb_exc.SMBResponseException as exc:
            if _status_of(exc) == STATUS_END_OF_FILE:  # the file shrank under us
                return b""
            raise
        response = SMB2ReadResponse()
        response.unpack(header["data"].get_value())
        data = response["buffer"].get_value()
        if not data:
            return b""
        if len(data) < length:
            # A short read is legal: ask for the rest before anything later.
            rest = offset + len(data)
            message, _recv = self.raw.fd.read(rest, length - len(data), send=False)
            self.pipe.send(message, length - len(data), rest)
            self.pipe.inflight.rotate(1)  # the re-request goes first
        return data

    def readinto(self, buf) -> int:
        if self.released:
            raise ValueError("I/O operation on closed file")
        while not self.buffer and not self.eof:
            try:
                chunk = self._next_chunk()
            except TargetError:
                raise
            except self.target.SMB_ERRORS as exc:
                raise self.target.smb_error(exc, "reading %s" % self.target.display(self.path)) from None
            if not chunk:
                self.eof = True
                break
            self.buffer = chunk
        count = min(len(buf), len(self.buffer))
        buf[:count] = self.buffer[:count]
        self.buffer = self.buffer[count:]
        return count

    def close(self) -> None:
        if self.released:
            return
        self.released = True
        try:
            # Collect what is still on its way before the handle goes.
            while self.pipe.inflight and self.target.alive():
                try:
                    self.pipe.collect()
                except Exception:  # pylint: disable=broad-except
                    pass
            if self.target.alive():
                self.raw.close()
        except Exception:  # pylint: disable=broad-except
            pass  # a dead connection: nothing left to release
        finally:
            super().close()


class SmbTarget(Target):
    TYPE = "smb"

    CONNECT_TIMEOUT = 30  # TCP connect and negotiate
    IO_TIMEOUT = 120  # no reply for this long = the connection is dead
    if smbclient is not None:
        SMB_ERRORS = (smb_exc.SMBException, OSError, ValueError, EOFError, SpnegoError)
    else:  # pragma: no cover
        SMB_ERRORS = (OSError, ValueError, EOFError)

    def __init__(self, options: dict, ctx):
        super().__init__(options, ctx)
        self.server = options["server"]
        self.port = int(options.get("port") or 445)
        self.username = options["username"]
        parts = [p for p in options["share"].replace("\\", "/").split("/") if p]
        self.share = parts[0]
        self.subdirs = parts[1:]
        self.encrypt = bool(options.get("encrypt", True))
        self.auth_protocol = options.get("security") or "negotiate"
        self._cache = {}  # smbclient connection cache of this instance only

    # -- naming ------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.server if self.port == 445 else "%s:%d" % (self.server, self.port)

    def location(self) -> str:
        return "%s:/%s" % (self.server, "/".join([self.share] + self.subdirs))

    def unc(self, *parts: str) -> str:
        return "\\\\" + "\\".join([self.server, self.share] + [p for p in parts if p])

    def folder(self) -> str:
        return self.unc(*(self.subdirs + [ROOT_DIR, self.ctx.job]))

    def display(self, unc_path: str) -> str:
        """A UNC path the way location() shows places: server:/share/dir/file."""
        parts = [p for p in unc_path.split("\\") if p]
        return "%s:/%s" % (parts[0], "/".join(parts[1:])) if parts else unc_path

    def kwargs(self) -> dict:
        """What every smbclient call gets: port (the pool is keyed by
        server:port), our own cache, the credentials for a reconnect.
        encrypt=None after a session exists would be ignored; True is kept so
        a pooled session can never be reused without encryption."""
        return {
            "username": self.username,
            "password": self.options.get("password"),
            "port": self.port,
            "encrypt": True if self.encrypt else None,
            "connection_timeout": self.CONNECT_TIMEOUT,
            "connection_cache": self._cache,
            "auth_protocol": self.auth_protocol,
        }

    # -- connection -----------------------------------------------------------------
    def alive(self) -> bool:
        conn = self._cache.get("%s:%d" % (self.server.lower(), self.port))
        return conn is not None and bool(conn.transport.connected) and getattr(conn, "_t_exc", None) is None

    def connect(self) -> None:
        if smbclient is None:
            raise MissingLibrary("smbprotocol", "smb target")
        self.retrying("connection to SMB server %s" % self.endpoint, self._connect_once)

    def _connect_once(self) -> None:
        self.close()
        kwargs = self.kwargs()
        try:
            session = smbclient.register_session(
                self.server, username=kwargs["username"], password=kwargs["password"], port=self.port,
                encrypt=kwargs["encrypt"], connection_timeout=self.CONNECT_TIMEOUT,
                connection_cache=self._cache, auth_protocol=self.auth_protocol)
        except self.SMB_ERRORS as exc:
            self.close()
            raise self._login_error(exc) from None
        if self.encrypt and not session.encrypt_data:  # smbprotocol refuses this already; never rely on one check
            self.close()
            raise self._no_encryption()
        self._tune_socket(session.connection)
        try:
            # The tree connect: a missing share, or one this user may not use,
            # is reported here rather than in the middle of an upload.
            root = smbclient.stat(self.unc(), **kwargs)
        except self.SMB_ERRORS as exc:
            status = _status_of(exc)
            self.close()
            if status in NOT_FOUND_STATUSES or status == STATUS_BAD_NETWORK_NAME:
                raise TargetError("SMB share '%s' not found on server %s (check the share name; the first part of "
                                  "'share' is the share, the rest are folders in it)" % (self.share, self.endpoint),
                                  errors.MOUNTFAIL) from None
            if status == STATUS_ACCESS_DENIED:
                hint = "" if self.encrypt else "; if the share requires encryption, set encrypt: true"
                raise TargetError("SMB server %s refuses user '%s' access to share '%s' (access denied%s)"
                                  % (self.endpoint, self.username, self.share, hint), errors.AUTH_FAILED) from None
            raise self.smb_error(exc, "connecting to share '%s'" % self.share) from None
        if not root.st_file_attributes & FILE_ATTRIBUTE_DIRECTORY:  # pragma: no cover (a share root is a folder)
            self.close()
            raise TargetError("%s: the share root is not a folder" % self.location(), errors.MOUNTFAIL)
        self.log("connected to %s as %s (SMB dialect 0x%04x, %s)"
                 % (self.endpoint, self.username, session.connection.dialect,
                    "encrypted" if session.encrypt_data else "signed, not encrypted"))

    def _tune_socket(self, conn) -> None:
        """A peer that vanishes without a FIN (power loss, a cut link) must
        fail sends and receives in bounded time, not after the kernel's
        default ~15 minutes of retransmissions."""
        sock = getattr(conn.transport, "_sock", None)
        if sock is None:
            return
        options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6),
                            ("TCP_USER_TIMEOUT", self.IO_TIMEOUT * 1000)):
            if hasattr(socket, name):
                options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
        for level, option, value in options:
            try:
                sock.setsockopt(level, option, value)
            except OSError:
                pass

    def _no_encryption(self) -> TargetError:
        return TargetError("SMB server %s cannot encrypt the connection (no SMB 3 encryption offered) and encrypt is "
                           "true: enable encryption on the server, or set encrypt: false to send the backup unencrypted"
                           % self.endpoint, errors.MOUNTFAIL)

    def _login_error(self, exc: BaseException) -> TargetError:
        """Map a failure of register_session (connect, negotiate, login)."""
        status = _status_of(exc)
        if status in LOGON_STATUSES:
            return TargetError("SMB login to %s as '%s' failed: %s" % (self.endpoint, self.username, LOGON_STATUSES[status]),
                               errors.AUTH_FAILED)
        if isinstance(exc, smb_exc.SMBAuthenticationError) or isinstance(exc, SpnegoError):
            # pyspnego's messages describe the mechanism problem (no Kerberos
            # ticket, unknown realm, missing gssapi); they never hold the password.
            return TargetError("SMB login to %s as '%s' failed (%s authentication): %s"
                               % (self.endpoint, self.username, self.auth_protocol, self._short(exc)), errors.AUTH_FAILED)
        text = str(exc)
        if isinstance(exc, smb_exc.SMBException) and "encryption" in text.lower() and "not support" in text.lower():
            return self._no_encryption()
        if "guest" in text.lower():
            return TargetError("SMB login to %s as '%s' failed: the server only granted guest access"
                               % (self.endpoint, self.username), errors.AUTH_FAILED)
        if isinstance(exc, ValueError) and text.startswith("Failed to connect"):
            reason = text.split("': ", 1)[-1]
            return TargetError("cannot connect to SMB server %s: %s" % (self.endpoint, reason), errors.MOUNTFAIL, transient=True)
        return self.smb_error(exc, "connecting to SMB server %s" % self.endpoint)

    @staticmethod
    def _short(exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text[:300]

    def close(self) -> None:
        cache = self._cache
        if not cache:
            return
        # A connection whose peer stopped answering would block the polite
        # logoff: cut the socket of every connection that is not healthy.
        for conn in list(cache.values()):
            try:
                if getattr(conn, "_t_exc", None) is not None or not conn.transport.connected:
                    conn.transport.close()
            except Exception:  # pylint: disable=broad-except
                pass
        try:
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=cache)
        except Exception:  # pylint: disable=broad-except
            pass
        cache.clear()

    def _drop(self) -> None:
        """Forget a connection that failed mid-operation, without waiting on it."""
        for conn in list(self._cache.values()):
            try:
                conn.transport.close()
            except Exception:  # pylint: disable=broad-except
                pass
        self.close()

    def _ensure_connected(self) -> None:
        """Reconnect a dropped connection; a server still unreachable is
        transient (the caller retries), refused credentials are not."""
        if self.alive():
            return
        self._connect_once()

    # -- errors -----------------------------------------------------------------------
    def smb_error(self, exc: BaseException, what: str) -> TargetError:
        """Map a failure during `what` to a result code. A lost connection is
        transient (the caller reconnects and retries)."""
        if isinstance(exc, TargetError):
            return exc
        status = _status_of(exc)
        if status in (STATUS_DISK_FULL, STATUS_QUOTA_EXCEEDED):
            return TargetError("%s: %s: no space left on the share (%s)" % (self.location(), what, _status_name(status)),
                               errors.DISK_FULL)
        if status in (STATUS_ACCESS_DENIED, STATUS_PRIVILEGE_NOT_HELD):
            return TargetError("%s: %s: access denied for user '%s' (the share or folder is not writable for this "
                               "account)" % (self.location(), what, self.username), errors.AUTH_FAILED)
        if status in LOGON_STATUSES:
            return TargetError("SMB login to %s as '%s' failed: %s" % (self.endpoint, self.username, LOGON_STATUSES[status]),
                               errors.AUTH_FAILED)
        if status in SESSION_GONE_STATUSES:
            self._drop()
            return TargetError("%s: %s: the server closed the session (%s)" % (self.location(), what, _status_name(status)),
                               errors.MOUNTFAIL, transient=True)
        if status == STATUS_SHARING_VIOLATION:
            return TargetError("%s: %s: the file is in use by another client" % (self.location(), what),
                               errors.FAILED, transient=True)
        if status in NOT_FOUND_STATUSES:
            return TargetError("%s: %s: no such file or folder" % (self.location(), what), errors.FAILED)
        if status is not None:
            return TargetError("%s: %s failed: %s" % (self.location(), what, _status_name(status)), errors.FAILED)
        if isinstance(exc, ValueError) and str(exc).startswith("Failed to connect"):
            return self._login_error(exc)
        # No status: the connection itself failed (closed by the peer, reset,
        # no reply within IO_TIMEOUT, the receiver thread died).
        self._drop()
        return TargetError("%s: %s: connection to SMB server %s lost (%s)"
                           % (self.location(), what, self.endpoint, self._short(exc)), errors.MOUNTFAIL, transient=True)

    def _op(self, what: str, func, *args):
        """An idempotent operation, reconnecting on a dropped connection."""
        def once():
            self._ensure_connected()
            try:
                return func(*args)
            except self.SMB_ERRORS as exc:
                raise self.smb_error(exc, what) from None
        return self.retrying(what, once)

    # -- folders ----------------------------------------------------------------------
    def ensure_dir(self) -> None:
        kwargs = self.kwargs()

        def make():
            path = self.unc()
            for part in self.subdirs + [ROOT_DIR, self.ctx.job]:
                path = path + "\\" + part
                try:
                    smbclient.mkdir(path, **kwargs)
                except OSError as exc:
                    status = _status_of(exc)
                    if status == STATUS_OBJECT_NAME_COLLISION or status is None and getattr(exc, "errno", 0) == 17:
                        if not smbclient.stat(path, **kwargs).st_file_attributes & FILE_ATTRIBUTE_DIRECTORY:
                            raise TargetError("%s: %s exists but is not a folder" % (self.location(), self.display(path)),
                                              errors.FAILED) from None
                        continue
                    raise
        self._op("creating folder %s" % self.display(self.folder()), make)

    # -- upload ----------------------------------------------------------------------------
    def put(self, src_path: str, name: str, size: int) -> None:
        folder = self.folder()
        partial = folder + "\\" + partial_name(name)
        final = folder + "\\" + name
        state = _Upload()
        try:
            try:
                src = open(src_path, "rb")  # pylint: disable=consider-using-with
            except OSError as exc:
                raise TargetError("cannot read the archive %s: %s" % (src_path, exc.strerror or exc), errors.FAILED) from None
            with src:
                self.retrying("upload of %s" % name, self._upload_once, src, partial, name, size, state)
            self.retrying("rename of %s" % name, self._commit_once, partial, final, name, size)
        except BaseException:
            self._discard(partial)
            raise

    def _upload_once(self, src, partial: str, name: str, size: int, state: _Upload) -> None:
        self._ensure_connected()
        raw = None
        try:
            offset = 0
            if state.started:
                raw, offset = self._resume(partial, state)
            if raw is None:
                if not state.started:
                    self._check_space(size)
                # Sharing read/write/delete: a handle of a dead connection the
                # server has not noticed yet must not block a resume or the rename.
                raw = smbclient.open_file(partial, mode="wb", buffering=0, share_access="rwd", **self.kwargs())
                state.confirmed = 0
            state.started = True
            self._write_pipelined(raw, src, offset, size, state)
            raw.fd.flush()  # SMB2 FLUSH: on the server's disk before it gets the .sar name
            handle, raw = raw, None
            handle.close()
        except TargetError:
            raise
        except self.SMB_ERRORS as exc:
            raise self.smb_error(exc, "upload of %s" % name) from None
        finally:
            if raw is not None and self.alive():
                try:
                    raw.close()
                except Exception:  # pylint: disable=broad-except
                    pass

    def _resume(self, partial: str, state: _Upload):
        """Reopen the partial after a reconnect at the prefix both sides agree
        on. Returns (raw or None to start over, offset)."""
        kwargs = self.kwargs()
        try:
            remote_size = smbclient.stat(partial, **kwargs).st_size
        except OSError as exc:
            if _status_of(exc) in NOT_FOUND_STATUSES:
                self.log("partial upload vanished on the server, starting over")
                return None, 0
            raise
        # Writes in flight at the cut may have landed out of order: only the
        # acknowledged prefix is known to be complete.
        state.confirmed = min(state.confirmed, remote_size)
        raw = smbclient.open_file(partial, mode="r+b", buffering=0, share_access="rwd", **kwargs)
        self.log("resuming upload at byte %d (%d on the server)" % (state.confirmed, remote_size))
        return raw, state.confirmed

    def _check_space(self, size: int) -> None:
        """Refuse early when the share says the archive cannot fit at all."""
        try:
            volume = smbclient.stat_volume(self.folder(), **self.kwargs())
        except smb_exc.SMBResponseException:
            return  # not every server answers FileFsFullSizeInformation
        except OSError as exc:
            if _status_of(exc) is not None:
                return
            raise
        if volume.total_size and volume.caller_available_size < size:
            raise TargetError("%s: not enough space on the share: %d bytes free, the archive has %d"
                              % (self.location(), volume.caller_available_size, size), errors.DISK_FULL)

    def _write_pipelined(self, raw, src, offset: int, size: int, state: _Upload) -> None:
        """Write src[offset:size] with up to IN_FLIGHT bytes of requests
        awaiting replies; replies are checked in file order, so
        `state.confirmed` is always a prefix the server acknowledged."""
        _warm_allocator()
        pipe = _Pipe(self, raw)
        max_write = raw.fd.connection.max_write_size
        src.seek(offset)
        pos = offset
        while pos < size or pipe.inflight:
            while pos < size and pipe.inflight_bytes < IN_FLIGHT:
                length = pipe.chunk(size - pos, max_write)
                if not length:
                    break
                try:
                    data = src.read(length)
                except OSError as exc:
                    raise TargetError("cannot read the archive: %s" % (exc.strerror or exc), errors.FAILED) from None
                if not data:
                    raise TargetError("%s: the archive shrank while uploading (%d of %d bytes)"
                                      % (self.location(), pos, size), errors.FAILED)
                message, _recv = raw.fd.write(data, offset=pos, send=False)
                pipe.send(message, len(data), pos)
                pos += len(data)
            if not pipe.inflight:
                raise TargetError("%s: the server grants no SMB credits for writing" % self.location(), errors.FAILED)
            header, at, length = pipe.collect()
            response = SMB2WriteResponse()
            response.unpack(header["data"].get_value())
            written = response["count"].get_value()
            if written != length:
                raise TargetError("%s: the server wrote %d of %d bytes at offset %d (share full?)"
                                  % (self.location(), written, length, at), errors.DISK_FULL)
            state.confirmed = at + length

    def _commit_once(self, partial: str, final: str, name: str, size: int) -> None:
        self._ensure_connected()
        kwargs = self.kwargs()
        try:
            try:
                have = smbclient.stat(partial, **kwargs).st_size
            except OSError as exc:
                if _status_of(exc) not in NOT_FOUND_STATUSES:
                    raise
                # An earlier attempt may have renamed it before the cut.
                try:
                    if smbclient.stat(final, **kwargs).st_size == size:
                        return
                except OSError:
                    pass
                raise TargetError("%s: the partial upload of %s disappeared before the rename" % (self.location(), name),
                                  errors.FAILED) from None
            if have != size:
                raise TargetError("%s: the upload of %s has %d bytes on the server, expected %d; not renamed"
                                  % (self.location(), name, have, size), errors.VERIFY_FAILED)
            self._rename_replace(partial, name)
        except TargetError:
            raise
        except self.SMB_ERRORS as exc:
            raise self.smb_error(exc, "rename of %s" % name) from None

    def _rename_replace(self, partial: str, name: str) -> None:
        """Rename the partial to `name` in the same folder, replacing a file of
        that name in one step. (smbclient.replace first opens the destination
        asking for FILE_EXECUTE, which Samba refuses on a file without an x
        bit: it cannot replace an archive there.)"""
        raw = smbclient.open_file(partial, mode="rb", buffering=0, share_access="rwd",
                                  desired_access=FilePipePrinterAccessMask.DELETE | FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES,
                                  **self.kwargs())
        try:
            info = FileRenameInformation()
            info["replace_if_exists"] = True
            # SMB2 wants the new name relative to the share root.
            info["file_name"] = "\\".join(self.subdirs + [ROOT_DIR, self.ctx.job, name])
            request = SMB2SetInfoRequest()
            request["info_type"] = info.INFO_TYPE
            request["file_info_class"] = info.INFO_CLASS
            request["file_id"] = raw.fd.file_id
            request["buffer"] = info
            conn = raw.fd.connection
            sent = conn.send(request, sid=raw.fd.tree_connect.session.session_id, tid=raw.fd.tree_connect.tree_connect_id)
            conn.receive(sent, timeout=self.IO_TIMEOUT)
        finally:
            try:
                raw.close()
            except Exception:  # pylint: disable=broad-except
                pass  # the rename happened or raised already; a dead handle goes with the connection

    def _discard(self, partial: str) -> None:
        """Best effort after a failure; a partial left on an unreachable
        server is removed by the next run's prune."""
        if not self.alive():
            return
        try:
            smbclient.remove(partial, **self.kwargs())
        except Exception:  # pylint: disable=broad-except
            pass

    # -- the rest of the primitives ---------------------------------------------------------
    def listdir(self) -> list:
        folder = self.folder()

        def scan():
            found = []
            try:
                with smbclient.scandir(folder, **self.kwargs()) as entries:
                    for entry in entries:
                        info = entry.smb_info
                        if info.file_attributes & FILE_ATTRIBUTE_DIRECTORY:
                            continue
                        found.append(RemoteFile(entry.name, int(info.end_of_file), info.last_write_time.timestamp()))
            except OSError as exc:
                if _status_of(exc) in NOT_FOUND_STATUSES:
                    return []
                raise
            return found
        return self._op("listing %s" % self.display(folder), scan)

    def remove(self, name: str) -> None:
        path = self.folder() + "\\" + name

        def unlink():
            try:
                smbclient.remove(path, **self.kwargs())
            except OSError as exc:
                if _status_of(exc) not in NOT_FOUND_STATUSES:
                    raise
        self._op("removing %s" % name, unlink)

    def open_read(self, name: str):
        path = self.folder() + "\\" + name
        return self._op("opening %s" % name, SmbReader, self, path)

    def probe_write(self) -> None:
        kwargs = self.kwargs()

        def probe():
            # The job folder may not exist yet and check mode creates nothing:
            # prove write access in the deepest folder that exists.
            where = self.unc()
            for part in self.subdirs + [ROOT_DIR, self.ctx.job]:
                candidate = where + "\\" + part
                try:
                    if not smbclient.stat(candidate, **kwargs).st_file_attributes & FILE_ATTRIBUTE_DIRECTORY:
                        break
                except OSError as exc:
                    if _status_of(exc) in NOT_FOUND_STATUSES:
                        break
                    raise
                where = candidate
            path = where + "\\.sar-backup-probe-%s" % uuid.uuid4().hex
            try:
                with smbclient.open_file(path, mode="wb", buffering=0, **kwargs) as handle:
                    handle.write(b"sar-backup write probe\n")
            finally:
                try:
                    smbclient.remove(path, **kwargs)
                except OSError:
                    pass
        self._op("writing a probe file below %s" % self.display(self.folder()), probe)


TARGET = SmbTarget
