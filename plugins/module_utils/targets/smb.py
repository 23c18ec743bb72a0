# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`smb`: a Windows/Samba share reached with smbprotocol (seed: "Netzwerkfreigabe").

What this adds to the common delivery of _transfer.TransferTarget (partial
upload with a window of write requests, resume after a dropped connection,
flush, size check and rename, pipelined reads):
- one SMB connection per target instance, in a private connection cache of
  smbclient (never the process-wide pool), closed in `close()`; `port` is
  passed to every smbclient call (the pool is keyed by server *and* port);
- `encrypt: true` (the default) requires SMB 3 encryption for the whole
  session: a server that cannot encrypt is refused (mountfail) instead of
  silently sending the appliance's data in clear; messages are signed in any
  case and a guest fallback is refused by smbprotocol;
- write requests of 1 MiB with up to 8 MiB in flight (smbclient's file
  objects wait for every reply before sending the next request: about half
  the speed on loopback, far less over a WAN), credits (the server's flow
  control) asked for as the window grows; the data is flushed (SMB2 FLUSH)
  before the partial is renamed (replace semantics) to its `.sar` name.

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
ones smbclient's own SMBRawIO is built on. Uploads build their WRITE
requests themselves (_WriteFrames: smbprotocol's own Python packing,
signing and copying of each request cost more CPU than the rest of
the upload), with smbprotocol's session keys, negotiated algorithms,
credit window, socket and receiver thread; anything unexpected there
falls back to `Open.write(send=False)`.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import socket
import struct
import uuid

from .. import errors
from ..errors import MissingLibrary, TargetError
from ._transfer import PipelinedReader, RequestWindow, TransferTarget, read_chunk, read_source
from .base import ROOT_DIR, RemoteFile

try:
    import smbclient
    from smbprotocol import exceptions as smb_exc
    from smbprotocol.connection import Request
    from smbprotocol.file_info import FileRenameInformation
    from smbprotocol.header import NtStatus, SMB2HeaderRequest
    from smbprotocol.open import FilePipePrinterAccessMask, SMB2ReadResponse, SMB2SetInfoRequest, SMB2WriteRequest
except ImportError:  # pragma: no cover
    smbclient = None

try:  # comes with smbprotocol (its signing and encryption use it)
    from cryptography.hazmat.primitives import cmac
    from cryptography.hazmat.primitives.ciphers import algorithms
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
except ImportError:  # pragma: no cover
    AESGCM = None

try:
    from spnego.exceptions import SpnegoError
except ImportError:  # pragma: no cover
    class SpnegoError(Exception):  # type: ignore[no-redef]
        """Stand-in: pyspnego comes with smbprotocol; without it nothing here runs."""

MAX_PAYLOAD = 64 * 1024  # one SMB2 credit pays for this much
ALLOCATOR_WARMUP = 8 * 1024 * 1024  # see _warm_allocator
REQUEST = 1024 * 1024  # bytes per read/write request
# bytes of requests awaiting their reply. 4 MiB write requests with 16 MiB in
# flight took a fifth less CPU in our process but made smbd's work grow by more
# (the machine's CPU seconds per GB 2.2 -> 3.9 without early FLUSHes, 2.5 with;
# 1 GB signed, 8 rounds in turn): the sizes stay.
IN_FLIGHT = 8 * 1024 * 1024
# Every this many bytes of an upload, an SMB2 FLUSH goes out behind the writes
# without waiting for it: the server writes the file to its disk while the rest
# arrives, and the FLUSH before the rename (the one durability rests on) is left
# with the tail. 1 GB signed: that FLUSH took 0.12 s instead of 0.6 s and the
# whole delivery 0.84x the time (medians of 8 rounds in turn; docs/benchmarks.md).
EARLY_FLUSH = 256 * 1024 * 1024
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

    smbprotocol copies every read reply several times (framing, decrypting,
    unpacking), and an encrypted upload gets a fresh ciphertext per write
    request: each a new ~1 MiB bytes object.
    With glibc's start values (blocks over 128 KiB mapped by mmap, free
    memory over 128 KiB at the heap top given back) most of those copies get
    brand-new pages from the kernel, and the page faults cost about three
    times the CPU of the copying itself (measured on uploads built by
    smbprotocol: 1.3 vs 0.4 CPU-s per 300 MB). glibc raises both limits by itself once a mapped block is freed
    (mallopt(3), "dynamic mmap threshold"): freeing one 8 MiB block sets them
    to 8 and 16 MiB, so the blocks are reused. The block is calloc'ed and
    never touched, so this costs one mmap/munmap; other C libraries just
    see a short-lived allocation. Memory stays bounded: at most 16 MiB of
    freed memory is kept for reuse."""
    bytes(ALLOCATOR_WARMUP)


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

    def credit_request(self, length: int) -> int:
        """What a request of `length` bytes asks for: its own charge and
        enough more to keep the window full."""
        charge = (max(length, 1) - 1) // MAX_PAYLOAD + 1 if self.conn.supports_multi_credit else 1
        target_credits = IN_FLIGHT // MAX_PAYLOAD + 2 * (REQUEST // MAX_PAYLOAD)
        extra = max(0, target_credits - self.credits() - self.inflight_credits())
        return charge + min(extra, 64)

    def send(self, message, length: int, offset: int):
        """Send a read/write message built by smbprotocol."""
        request = self.conn.send(message, sid=self.sid, tid=self.tid, credit_request=self.credit_request(length))
        self.added(request, offset, length)
        return request

    def added(self, request, offset: int, length: int) -> None:
        self.inflight.append((request, offset, length))
        self.inflight_bytes += length

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


class _WriteFrames:
    """SMB2 WRITE requests built in place, the way smbprotocol's Connection
    would send them, without its per-request copies.

    smbprotocol packs the request structure, then the header around it,
    copies the message twice to sign it, twice to put the signature in and
    once more for the TCP framing: seven copies of every 1 MiB request after
    the read, plus its Python structure code per field. Here the file is read
    straight into one reused buffer behind a pre-packed header (only credit
    charge, credit request, message id, length and offset change), the
    signature is computed over that buffer and written into it, and the
    frame goes to the socket as it is: one copy in (the read), one out (the
    kernel's). Encryption produces the ciphertext once and sends it behind
    the transform header without joining them.

    Everything else stays smbprotocol's: the message id and credit window
    (under its sequence lock), the Request registered in its outstanding
    table before the send (its receiver thread matches, verifies and
    delivers the reply as for any request), its socket lock, its keys and
    negotiated algorithms. `for_pipe` returns None whenever something is
    not the plain case (unknown signing or cipher algorithm, an smbprotocol
    whose internals differ): the caller then lets smbprotocol build each
    request."""

    # [MS-SMB2] 2.2.1.2 (SYNC header) + 2.2.21 (WRITE request, data at 0x70)
    HEADER = struct.Struct("<4sHHHHHHIIQIIQ16s")
    WRITE = struct.Struct("<HHIQ16sIIHHI")
    SIZE = 64 + 48
    FRAME = 4  # Direct TCP transport: 4-byte big-endian length
    TRANSFORM = struct.Struct("<4s16s16sIHHQ")  # 2.2.41, 52 bytes
    CMD_WRITE = 0x0009
    FLAG_SIGNED = 0x00000008
    FLAG_DFS = 0x10000000
    SIGN_HMAC_SHA256, SIGN_AES_CMAC, SIGN_AES_GMAC = 0, 1, 2
    CIPHER_NONCE = {0x0001: 11, 0x0002: 12, 0x0003: 11, 0x0004: 12}  # AES-128/256-CCM/GCM

    def __init__(self, pipe: _Pipe, session, file_id: bytes, flags: int, signer, sealer, nonce_size: int):
        self.pipe = pipe
        self.conn = pipe.conn
        self.session_id = session.session_id
        self.signer = signer
        self.sealer = sealer
        self.nonce_size = nonce_size
        self.flags = flags
        self.sock = self.conn.transport._sock  # pylint: disable=protected-access
        self.sock_lock = self.conn.transport._sock_lock  # pylint: disable=protected-access
        self.buffer = bytearray(self.FRAME + self.SIZE + REQUEST)
        self.view = memoryview(self.buffer)
        self.HEADER.pack_into(self.buffer, self.FRAME, b"\xfeSMB", 64, 0, 0, 0, self.CMD_WRITE, 0, flags, 0, 0, 0, pipe.tid,
                              session.session_id, bytes(16))
        self.WRITE.pack_into(self.buffer, self.FRAME + 64, 49, self.SIZE, 0, 0, file_id, 0, 0, 0, 0, 0)
        self.transform = bytearray(self.FRAME + self.TRANSFORM.size)

    @classmethod
    def for_pipe(cls, pipe: _Pipe, raw):
        """The frame builder for this open file, or None to leave it to smbprotocol."""
        if AESGCM is None:  # pragma: no cover
            return None
        conn = pipe.conn
        try:
            session = conn.session_table[pipe.sid]
            tree = session.tree_connect_table[pipe.tid]
            file_id = bytes(raw.fd.file_id)
            transport = conn.transport
            if transport._sock is None or transport._sock_lock is None:  # pylint: disable=protected-access
                return None
            flags = cls.FLAG_DFS if tree.is_dfs_share else 0
            signer = sealer = None
            nonce_size = 0
            # The same choices as smbprotocol's Connection._send/_generate_signature/_encrypt.
            if session.signing_required and session.signing_key:
                flags |= cls.FLAG_SIGNED
                if conn.dialect >= 0x0311 and conn.signing_algorithm_id is not None:
                    algorithm = conn.signing_algorithm_id
                elif conn.dialect >= 0x0300:
                    algorithm = cls.SIGN_AES_CMAC
                else:
                    algorithm = cls.SIGN_HMAC_SHA256
                signer = cls._signer(algorithm, session.signing_key)
                if signer is None:
                    return None
            if session.encrypt_data or tree.encrypt_data:
                cipher = conn.cipher_id if conn.dialect >= 0x0311 else 0x0001
                nonce_size = cls.CIPHER_NONCE.get(cipher, 0)
                if not nonce_size:
                    return None
                sealer = (AESGCM if nonce_size == 12 else AESCCM)(session.encryption_key)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None  # not the smbprotocol this was written against
        if len(file_id) != 16:
            return None
        return cls(pipe, session, file_id, flags, signer, sealer, nonce_size)

    @classmethod
    def _signer(cls, algorithm: int, key: bytes):
        """signer(view, message_id) -> the 16-byte signature of a request."""
        if algorithm == cls.SIGN_AES_GMAC:
            gmac = AESGCM(key)
            # nonce: message id, then 0 (a request, not a cancel)
            return lambda view, message_id: gmac.encrypt(struct.pack("<QI", message_id, 0), b"", view)
        if algorithm == cls.SIGN_AES_CMAC:
            base = cmac.CMAC(algorithms.AES(key))

            def sign_cmac(view, _message_id):
                mac = base.copy()
                mac.update(view)
                return mac.finalize()
            return sign_cmac
        if algorithm == cls.SIGN_HMAC_SHA256:
            base = hmac.new(key, digestmod=hashlib.sha256)

            def sign_hmac(view, _message_id):
                mac = base.copy()
                mac.update(view)
                return mac.digest()[:16]
            return sign_hmac
        return None

    def read(self, src, length: int) -> int:
        """Read up to `length` bytes of src into the payload: how many came (0 at the end)."""
        start = self.FRAME + self.SIZE
        return read_source(src, self.view[start:start + length])

    def send(self, offset: int, length: int):
        """Send the payload read() left in the buffer as a write at `offset`."""
        pipe, conn = self.pipe, self.conn
        credit_request = pipe.credit_request(length)
        with conn.sequence_lock:
            window = conn.sequence_window
            charge = (length - 1) // MAX_PAYLOAD + 1 if conn.supports_multi_credit else 0
            if charge > window["high"] - window["low"]:
                raise smb_exc.SMBException("Request requires %d credits but only %d credits are available"
                                           % (charge, window["high"] - window["low"]))
            message_id = window["low"]
            window["low"] += charge or 1
        buffer, view, frame = self.buffer, self.view, self.FRAME
        end = frame + self.SIZE + length
        struct.pack_into("<H", buffer, frame + 6, charge)
        struct.pack_into("<H", buffer, frame + 14, credit_request)
        struct.pack_into("<Q", buffer, frame + 24, message_id)
        struct.pack_into("<IQ", buffer, frame + 68, length, offset)
        signature = bytes(16)
        buffer[frame + 48:frame + 64] = signature
        if self.signer is not None:
            signature = self.signer(view[frame:end], message_id)
            buffer[frame + 48:frame + 64] = signature

        # What smbprotocol's receiver thread and receive() read of a request.
        header = SMB2HeaderRequest()
        header["credit_charge"] = charge
        header["command"] = self.CMD_WRITE
        header["credit_request"] = credit_request
        header["flags"] = self.flags
        header["message_id"] = message_id
        header["tree_id"] = pipe.tid
        header["session_id"] = self.session_id
        header["signature"] = signature
        request = Request(header, SMB2WriteRequest, conn, session_id=self.session_id)
        conn.outstanding_requests[message_id] = request

        conn._check_worker_running()  # pylint: disable=protected-access
        if self.sealer is None:
            struct.pack_into(">I", buffer, 0, end - frame)
            with self.sock_lock:
                self.sock.sendall(view[:end])
        else:
            self._send_sealed(view[frame:end])
        pipe.added(request, offset, length)
        return request

    def _send_sealed(self, plain) -> None:
        """SMB 3 encryption of one message: transform header, then the ciphertext."""
        nonce = os.urandom(self.nonce_size)
        transform, frame = self.transform, self.FRAME
        self.TRANSFORM.pack_into(transform, frame, b"\xfdSMB", bytes(16), nonce.ljust(16, b"\0"), len(plain), 0, 1,
                                 self.session_id)
        sealed = self.sealer.encrypt(nonce, plain, memoryview(transform)[frame + 20:])
        cipher_text = memoryview(sealed)[:-16]
        transform[frame + 4:frame + 20] = sealed[-16:]  # the tag is the transform header's signature
        struct.pack_into(">I", transform, 0, self.TRANSFORM.size + len(cipher_text))
        with self.sock_lock:
            _send_all(self.sock, [transform, cipher_text])


def _send_all(sock, parts: list) -> None:
    """sendall() for several buffers, without joining them."""
    views = [memoryview(part) for part in parts]
    while views:
        sent = sock.sendmsg(views)
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0] = views[0][sent:]
                sent = 0


class _SmbWrites(RequestWindow):
    """WRITE requests of one upload: up to IN_FLIGHT bytes awaiting their
    reply, each as large as the credits granted allow (REQUEST at most)."""

    STALLED = "the server grants no SMB credits for writing"

    def __init__(self, target: "SmbTarget", raw):
        _warm_allocator()
        self.target = target
        self.raw = raw
        self.pipe = _Pipe(target, raw)
        self.frames = _WriteFrames.for_pipe(self.pipe, raw)
        self.max_write = raw.fd.connection.max_write_size
        self.next_flush = self.last_flush = 0
        self.flushes = []  # early FLUSH requests awaiting their reply

    def span(self, offset: int, size: int) -> None:
        self.next_flush = offset + EARLY_FLUSH
        self.last_flush = size - EARLY_FLUSH // 4  # a shorter tail is the last FLUSH's

    def _flush_early(self, end: int) -> None:
        """A FLUSH once the writes sent reach the next mark, credits allowing
        (it waits for the next write otherwise)."""
        if end < self.next_flush or end > self.last_flush or self.pipe.credits() < 2:
            return
        pipe = self.pipe
        message, _recv = self.raw.fd.flush(send=False)
        self.flushes.append(pipe.conn.send(message, sid=pipe.sid, tid=pipe.tid, credit_request=pipe.credit_request(1)))
        self.next_flush = end + EARLY_FLUSH

    def drain(self) -> None:
        # Each reply is checked: a server that cannot write the file says so here already.
        while self.flushes:
            self.pipe.conn.receive(self.flushes.pop(0))

    def room(self, left: int) -> int:
        if self.pipe.inflight_bytes >= IN_FLIGHT:
            return 0
        return self.pipe.chunk(left, self.max_write)

    def send(self, src, pos: int, length: int) -> int:
        if self.frames is not None:
            count = self.frames.read(src, length)
            if count:
                self.frames.send(pos, count)
        else:
            data = read_chunk(src, length)
            count = len(data)
            if data:
                message, _recv = self.raw.fd.write(data, offset=pos, send=False)
                self.pipe.send(message, count, pos)
        if count:
            self._flush_early(pos + count)
        return count

    def pending(self) -> bool:
        return bool(self.pipe.inflight)

    def collect(self) -> int:
        header, at, length = self.pipe.collect()
        # SMB2 WRITE response ([MS-SMB2] 2.2.22): Count at byte 4
        written = struct.unpack_from("<I", header["data"].get_value(), 4)[0]
        if written != length:
            raise TargetError("%s: the server wrote %d of %d bytes at offset %d (share full?)"
                              % (self.target.location(), written, length, at), errors.DISK_FULL)
        return at + length


class SmbReader(PipelinedReader):
    """A remote file read with several large read requests in flight."""

    def __init__(self, target: "SmbTarget", path: str):
        super().__init__(target, "reading %s" % target.display(path))
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

    def _release(self) -> None:
        # Collect what is still on its way before the handle goes.
        while self.pipe.inflight and self.target.alive():
            try:
                self.pipe.collect()
            except Exception:  # pylint: disable=broad-except
                pass
        if self.target.alive():
            self.raw.close()


class SmbTarget(TransferTarget):
    TYPE = "smb"

    CONNECT_TIMEOUT = 30  # TCP connect and negotiate
    IO_TIMEOUT = 120  # no reply for this long = the connection is dead
    if smbclient is not None:
        SMB_ERRORS = (smb_exc.SMBException, OSError, ValueError, EOFError, SpnegoError)
    else:  # pragma: no cover
        SMB_ERRORS = (OSError, ValueError, EOFError)
    TRANSFER_ERRORS = SMB_ERRORS
    READER = SmbReader

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

    # -- errors -----------------------------------------------------------------------
    def transfer_error(self, exc: BaseException, what: str, need: int = 0) -> TargetError:
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

    smb_error = transfer_error  # its name before _transfer.py

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

    # -- the primitives of _transfer.TransferTarget ---------------------------------------------
    def _path(self, name: str) -> str:
        return self.folder() + "\\" + name

    def _remote_size(self, path: str):
        try:
            return smbclient.stat(path, **self.kwargs()).st_size
        except OSError as exc:
            if _status_of(exc) in NOT_FOUND_STATUSES:
                return None
            raise

    def _open_partial(self, path: str, new: bool):
        # Sharing read/write/delete: a handle of a dead connection the
        # server has not noticed yet must not block a resume or the rename.
        return smbclient.open_file(path, mode="wb" if new else "r+b", buffering=0, share_access="rwd", **self.kwargs())

    def _truncate(self, handle, size: int) -> None:
        handle.truncate(size)

    def _write_window(self, handle, src=None) -> RequestWindow:
        return _SmbWrites(self, handle)

    def _flush(self, handle) -> None:
        handle.fd.flush()  # SMB2 FLUSH: on the server's disk before it gets the .sar name

    def _close_handle(self, handle) -> None:
        handle.close()

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

    def _rename_over(self, partial: str, final: str, name: str) -> None:
        self._rename_replace(partial, name)

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

    def _remove_path(self, path: str) -> None:
        try:
            smbclient.remove(path, **self.kwargs())
        except OSError as exc:
            if _status_of(exc) not in NOT_FOUND_STATUSES:
                raise

    # -- the rest of the primitives ---------------------------------------------------------
    def listdir(self) -> list:
        folder = self.folder()

        def scan():
            found = []
            try:
                # A generator before smbprotocol 1.17, a context manager since: close() is on both.
                entries = smbclient.scandir(folder, **self.kwargs())
                try:
                    for entry in entries:
                        info = entry.smb_info
                        if info.file_attributes & FILE_ATTRIBUTE_DIRECTORY:
                            continue
                        found.append(RemoteFile(entry.name, int(info.end_of_file), info.last_write_time.timestamp()))
                finally:
                    entries.close()
            except OSError as exc:
                if _status_of(exc) in NOT_FOUND_STATUSES:
                    return []
                raise
            return found
        return self._op("listing %s" % self.display(folder), scan)

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
