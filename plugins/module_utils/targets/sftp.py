# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`sftp`: an SSH server (seed: "Serveur SFTP").

Two SSH clients, one behaviour:
- where the system's OpenSSH client (`ssh`, 8.4 or later) exists, the target
  runs `ssh -F none ... -s sftp` on a socketpair (as OpenSSH's own sftp does,
  and as restic and borg drive ssh) and speaks SFTP over it: the SSH packets
  (cipher, MAC, window) are OpenSSH's C; our process builds one 255 KiB write
  request at a time and hands its data to ssh with sendfile(2), from the page
  cache, without copying it through Python;
- elsewhere, for a password askpass cannot hand over (one with a line break),
  or for a server the OpenSSH client refuses to talk to (algorithms it no
  longer enables), paramiko's own SSH transport.
The SFTP requests are paramiko's SFTPClient on either client (listing, stat,
removal, fsync@, posix-rename@, statvfs@, limits@openssh.com), with our
pipelined writes and reads: the same code for both.

What this adds to the common delivery of _transfer.TransferTarget:
- host keys checked before any credential is sent (_hostkeys.py, SPEC 9); for
  OpenSSH through a known_hosts file written for the run (0600, in a 0700
  directory of its own) holding only the pinned or remembered key, with
  StrictHostKeyChecking=yes; where the decision needs the key the server
  offers (a fingerprint pin, first contact with accept_new, or a key ssh
  refused, for the message), paramiko asks the server for it without
  sending credentials;
- credentials for OpenSSH: the private key (decrypted when it has a
  passphrase) in a 0600 file of that directory, the password through an
  SSH_ASKPASS helper (0700) that reads it from a FIFO there (never in argv or
  in an environment); key, FIFO and helper are removed as soon as ssh is
  logged in (or failed), the directory when the session closes;
- uploads with many write requests in flight (paramiko's one-request-at-a-time
  writes run at ~1 MB/s over real links), written to the channel without
  paramiko's copies (see _SftpWrites);
- fsync@openssh.com before the rename, posix-rename@openssh.com where offered,
  free space from statvfs@openssh.com.

paramiko's public file API hides the SFTP status codes and drops errors of
pipelined writes; the request/reply calls used here (`_async_request`,
`_read_response`, the reply hook `_async_response`) are the ones its own
SFTPFile is built on and have been stable since paramiko 1.x. Uploads take
request ids the way `_async_request` does (its `_lock`, `request_number`,
`_expecting`). SFTPClient accepts any object with send/recv/close as its
channel: `_SshChannel` is that over the ssh process's socketpair.
"""

from __future__ import annotations

import collections
import errno
import io
import os
import posixpath
import re
import select
import shlex
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import uuid
import weakref

from .. import errors
from ..errors import MissingLibrary, TargetError
from ._hostkeys import HostKeyTrust, ServerKey, write_known_hosts
from ._transfer import PipelinedReader, RequestWindow, TransferTarget, read_source
from .base import ROOT_DIR, RemoteFile

try:
    import paramiko
    from paramiko.sftp import (
        CMD_DATA, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_READ, CMD_STATUS, CMD_WRITE,
        SFTP_EOF, SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED,
        int64,
    )
except ImportError:  # pragma: no cover
    paramiko = None

GCM_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
DEFAULT_REQUEST = 32 * 1024  # every SFTP server must accept this much per request
MAX_REQUEST = 256 * 1024  # OpenSSH: 255 KiB (limits@openssh.com); more buys nothing
IN_FLIGHT = 4 * 1024 * 1024  # bytes of write/read requests awaiting their reply
NO_SPACE_WORDS = ("no space", "disk full", "quota", "insufficient", "not enough space")

# Which SSH client carries the SFTP session: "auto" (OpenSSH where usable,
# else paramiko), "openssh" (the same; tests use it to insist), "paramiko".
CLIENT = "auto"
SSH_PROGRAM = "ssh"
OPENSSH_MINIMUM = (8, 4)  # SSH_ASKPASS_REQUIRE
SSH_HOST_ALIAS = "sar-backup-sftp-target"  # the name in the run's known_hosts (HostKeyAlias)
SOCKET_BUFFER = 1024 * 1024  # socket buffers asked for between us and ssh (4 requests)
# Where the run's SSH files go: a memory filesystem first (a key or password
# never reaches a disk), then the temp dir. None: these, in this order.
TEMP_BASES = None
_OPENSSH_VERSIONS = {}  # path -> (major, minor) or None


def _why(exc: BaseException) -> str:
    """An exception as words (many socket/paramiko errors have an empty str)."""
    return str(exc) or type(exc).__name__


class _StatusError(Exception):
    """An SFTP status reply other than OK, with its code kept."""

    def __init__(self, code: int, text: str):
        super().__init__(text or "SFTP status %d" % code)
        self.code = code
        self.text = text


class _Replies:
    """paramiko hands replies to requests tagged with an object to its
    `_async_response`; this one keeps them until the caller collects them,
    whatever order the server answers in."""

    def __init__(self):
        self.replies = {}

    def _async_response(self, t, msg, num):
        self.replies[num] = (t, msg)


def _expect_ok(reply) -> None:
    t, msg = reply
    if t != CMD_STATUS:
        raise _StatusError(SFTP_FAILURE, "unexpected reply type %d" % t)
    code = msg.get_int()
    if code != SFTP_OK:
        raise _StatusError(code, msg.get_text())


# SSH_FXP_WRITE around its handle: uint32 length, byte type, uint32 request id,
# uint32 handle length | handle | uint64 offset, uint32 data length.
_WRITE_BEFORE_HANDLE = 13
_WRITE_AFTER_HANDLE = 12


def _register_request(sftp, fileobj) -> int:
    """Take the next request id and route its reply to `fileobj`, the way
    SFTPClient._async_request does (same lock, same table)."""
    with sftp._lock:  # pylint: disable=protected-access
        num = sftp.request_number
        sftp._expecting[num] = fileobj  # pylint: disable=protected-access
        sftp.request_number += 1
    return num


def _send_all(channel, view) -> None:
    """Send a whole SFTP packet; the channel takes at most one SSH packet
    (and what the peer's window allows) per call, from a memoryview slice
    without copying what is left."""
    sent = 0
    total = len(view)
    while sent < total:
        count = channel.send(view[sent:])
        if count <= 0:
            raise EOFError("the SFTP channel closed")
        sent += count


class _SftpWrites(RequestWindow):
    """SSH_FXP_WRITE requests of one upload, up to IN_FLIGHT bytes awaiting
    their reply.

    Not through SFTPClient._async_request: it copies a 255 KiB request
    about six times (Message, asbytes, header join, one slice per 32 KiB
    SSH packet sent), each copy a new block above glibc's 128 KiB mmap
    threshold, so each one page-faults fresh memory; that doubled the
    CPU time of an upload (measured 1.7 vs 0.8 CPU-s per 300 MB). Each
    request is instead read into one reused buffer behind its SFTP
    header and handed to the channel as memoryview slices; ids and reply
    routing are _async_request's own."""

    def __init__(self, target: "SftpTarget", handle: bytes, src=None):
        self.sftp = target.sftp
        self.channel = target.sftp.sock
        self.sendfile = _sendfile_source(self.channel, src)  # (fd, file size) or None
        self.replies = _Replies()
        self.request = target.request_size
        self.window = max(4, IN_FLIGHT // self.request)
        self.inflight = collections.deque()  # (request id, end offset)
        self.head = _WRITE_BEFORE_HANDLE + len(handle) + _WRITE_AFTER_HANDLE
        self.buf = bytearray(self.head + self.request)
        self.view = memoryview(self.buf)
        struct.pack_into(">I", self.buf, _WRITE_BEFORE_HANDLE - 4, len(handle))
        self.buf[_WRITE_BEFORE_HANDLE:_WRITE_BEFORE_HANDLE + len(handle)] = handle

    def room(self, left: int) -> int:
        return min(self.request, left) if len(self.inflight) < self.window else 0

    def send(self, src, pos: int, length: int) -> int:
        head = self.head
        if self.sendfile is not None and pos + length <= self.sendfile[1]:
            # The header from our buffer, the data from the page cache
            # straight to ssh (sendfile(2): not copied through us).
            num = _register_request(self.sftp, self.replies)
            struct.pack_into(">IBI", self.buf, 0, head - 4 + length, CMD_WRITE, num)
            struct.pack_into(">QI", self.buf, head - _WRITE_AFTER_HANDLE, pos, length)
            _send_all(self.channel, self.view[:head])
            self.channel.send_file(self.sendfile[0], pos, length)
            self.inflight.append((num, pos + length))
            return length
        count = read_source(src, self.view[head:head + length])
        if not count:
            return 0
        num = _register_request(self.sftp, self.replies)
        struct.pack_into(">IBI", self.buf, 0, head - 4 + count, CMD_WRITE, num)
        struct.pack_into(">QI", self.buf, head - _WRITE_AFTER_HANDLE, pos, count)
        # The channel has copied the packet when this returns: the buffer can be refilled.
        _send_all(self.channel, self.view[:head + count])
        self.inflight.append((num, pos + count))
        return count

    def pending(self) -> bool:
        return bool(self.inflight)

    def collect(self) -> int:
        num, end = self.inflight[0]
        while num not in self.replies.replies:
            self.sftp._read_response()  # pylint: disable=protected-access
        self.inflight.popleft()
        _expect_ok(self.replies.replies.pop(num))
        return end


def _sendfile_source(channel, src):
    """(fd, size) of the archive when its data can go to the ssh client by
    sendfile(2): an _SshChannel, and exactly a file open() made (a wrapper
    around one, e.g. a test pausing the upload, must see every byte pass
    through its read)."""
    if not isinstance(channel, _SshChannel) or src.__class__ is not io.BufferedReader:
        return None
    try:
        fd = src.fileno()
        info = os.fstat(fd)
    except (OSError, ValueError):
        return None
    return (fd, info.st_size) if stat.S_ISREG(info.st_mode) else None


class SftpReader(PipelinedReader):
    """A remote file read with several large read requests in flight."""

    def __init__(self, target: "SftpTarget", path: str):
        super().__init__(target, "reading %s" % path)
        self.sftp = target.sftp
        self.path = path
        self.replies = _Replies()
        self.size = self.sftp.stat(path).st_size
        self.handle = self.sftp.open(path, "rb")
        self.request = target.request_size
        self.window = max(4, IN_FLIGHT // self.request)
        self.inflight = collections.deque()  # (num, offset, length)
        self.next_offset = 0

    def _fill(self) -> None:
        while self.next_offset < self.size and len(self.inflight) < self.window:
            length = min(self.request, self.size - self.next_offset)
            num = self.sftp._async_request(self.replies, CMD_READ, self.handle.handle,  # pylint: disable=protected-access
                                           int64(self.next_offset), int(length))
            self.inflight.append((num, self.next_offset, length))
            self.next_offset += length

    def _next_chunk(self) -> bytes:
        self._fill()
        if not self.inflight:
            return b""
        num, offset, length = self.inflight[0]
        while num not in self.replies.replies:
            self.sftp._read_response()  # pylint: disable=protected-access
        t, msg = self.replies.replies.pop(num)
        self.inflight.popleft()
        if t == CMD_STATUS:
            code = msg.get_int()
            if code == SFTP_EOF:  # the file shrank under us
                return b""
            raise _StatusError(code, msg.get_text())
        if t != CMD_DATA:
            raise _StatusError(SFTP_FAILURE, "unexpected reply type %d" % t)
        data = msg.get_string()
        if len(data) < length:
            # A short read is legal: ask for the rest before anything later.
            num = self.sftp._async_request(self.replies, CMD_READ, self.handle.handle,  # pylint: disable=protected-access
                                           int64(offset + len(data)), int(length - len(data)))
            self.inflight.appendleft((num, offset + len(data), length - len(data)))
        return data

    def _release(self) -> None:
        # Collect what is still on its way, so those replies do not
        # arrive in the middle of the next request on this session.
        while self.inflight and self.target.alive():
            num = self.inflight.popleft()[0]
            while num not in self.replies.replies:
                self.sftp._read_response()  # pylint: disable=protected-access
            self.replies.replies.pop(num, None)
        self.handle.close()


# -- the OpenSSH client ----------------------------------------------------------------------------
def openssh_client():
    """Path of a usable OpenSSH `ssh` (OPENSSH_MINIMUM or later), or None."""
    if CLIENT == "paramiko":
        return None
    path = shutil.which(SSH_PROGRAM)
    if not path:
        return None
    if path not in _OPENSSH_VERSIONS:
        version = None
        try:
            proc = subprocess.run([path, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=10, check=False)
            match = re.search(rb"OpenSSH_(\d+)\.(\d+)", proc.stdout)
            if match:
                version = (int(match.group(1)), int(match.group(2)))
        except (OSError, subprocess.SubprocessError):
            pass
        _OPENSSH_VERSIONS[path] = version
    version = _OPENSSH_VERSIONS[path]
    return path if version is not None and version >= OPENSSH_MINIMUM else None


_PRIVATE_DIR = re.compile(r"^sar-ssh-(\d+)-")


def _private_dir(executable: bool):
    """A new 0700 directory for one session's SSH files, or None. On a
    memory filesystem where there is one; `executable`: where a helper may
    be run (not mounted noexec). Its name carries our pid: folders of ours
    left by a process that was killed are removed here."""
    bases = TEMP_BASES if TEMP_BASES is not None else ("/dev/shm", tempfile.gettempdir())
    for base in bases:
        try:
            if not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
                continue
            if executable and os.statvfs(base).f_flag & os.ST_NOEXEC:
                continue
            _sweep(base)
            return tempfile.mkdtemp(prefix="sar-ssh-%d-" % os.getpid(), dir=base)
        except OSError:
            continue
    return None


def _sweep(base: str) -> None:
    """Remove our uid's session folders whose process is gone (killed before
    it could clean up: a decrypted key may be in one)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = _PRIVATE_DIR.match(name)
        if not match or int(match.group(1)) == os.getpid():
            continue
        path = os.path.join(base, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive (or not ours to judge)


def _write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """A new file only we can read (never an existing file or a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _openssh_key(text: str, passphrase):
    """The private key as an unencrypted OpenSSH key file for ssh, or None
    when cryptography cannot read it (then paramiko carries the session)."""
    try:
        from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover (paramiko needs it)
        return None
    data = text.strip().encode("utf-8") + b"\n"
    load = serialization.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else serialization.load_pem_private_key
    for password in ([passphrase.encode("utf-8")] if passphrase else []) + [None]:
        try:
            key = load(data, password)
        except (ValueError, TypeError, IndexError, AssertionError):
            continue  # e.g. a passphrase given for a key without one
        except Exception:  # pylint: disable=broad-except  # unsupported key types and the like
            return None
        try:
            return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                     serialization.NoEncryption())
        except (ValueError, TypeError):
            return None
    return None


# Hands ssh the password: one line from the FIFO next to it (read byte by
# byte by the shell, so each prompt gets its own line), never argv or environ.
ASKPASS_SCRIPT = """#!/bin/sh
# sar-backup: answers ssh's password prompt from the FIFO next to this file
IFS= read -r answer < %s || exit 1
printf '%%s\\n' "$answer"
"""
PASSWORD_ANSWERS = 2  # the password prompt, and one keyboard-interactive prompt where the server asks so


class _SshChannel:
    """The channel paramiko's SFTPClient talks through (send/recv/close):
    our end of the socketpair that is the ssh process's stdin and stdout (the
    way OpenSSH's own sftp runs ssh). Every wait is bounded by `timeout`
    (socket.timeout when it passes: the session is dead)."""

    def __init__(self, sock, timeout: float):
        self.sock = sock
        self.fd = sock.fileno()
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass  # a smaller buffer only means more wake-ups
        sock.setblocking(False)
        self.timeout = timeout
        self.failed = False
        self.wpoll = select.poll()
        self.wpoll.register(self.fd, select.POLLOUT)
        self.rpoll = select.poll()
        self.rpoll.register(self.fd, select.POLLIN)

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    @staticmethod
    def get_name() -> str:
        return "ssh"  # paramiko's log lines name the channel

    def _wait(self, poller) -> None:
        if not poller.poll(max(1, int(self.timeout * 1000))):
            self.failed = True
            raise socket.timeout("no progress for %.0f s" % self.timeout)

    def _closed(self, exc: BaseException) -> EOFError:
        self.failed = True
        return EOFError("the ssh client closed the connection (%s)" % _why(exc))

    def send(self, data) -> int:
        while True:
            try:
                return os.write(self.fd, data)
            except BlockingIOError:
                self._wait(self.wpoll)
            except (ValueError, OSError) as exc:
                raise self._closed(exc) from None

    def send_file(self, fd: int, offset: int, count: int) -> None:
        """Send `count` bytes of file `fd` from `offset` without copying them
        through this process (sendfile(2): from the page cache to ssh)."""
        while count:
            try:
                sent = os.sendfile(self.fd, fd, offset, count)
            except BlockingIOError:
                self._wait(self.wpoll)
                continue
            except (BrokenPipeError, ConnectionError, ValueError) as exc:
                raise self._closed(exc) from None
            except OSError as exc:
                # The request's header is out: the stream cannot go on.
                self.failed = True
                raise TargetError("cannot read the archive: %s" % (exc.strerror or exc), errors.FAILED) from None
            if not sent:
                self.failed = True
                raise TargetError("the archive shrank while uploading (end of file at byte %d)" % offset, errors.FAILED)
            offset += sent
            count -= sent

    def recv(self, size: int) -> bytes:
        while True:
            try:
                data = os.read(self.fd, size)
            except BlockingIOError:
                self._wait(self.rpoll)
                continue
            except (ValueError, OSError) as exc:
                raise self._closed(exc) from None
            if not data:
                self.failed = True
            return data

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # ssh sees the end of its input and ends the session
        except OSError:
            pass
        self.sock.close()


class _SshSession:
    """One `ssh -s sftp` process and what it needs until it ends."""

    def __init__(self, proc, channel: _SshChannel, workdir: str, stderr):
        self.proc = proc
        self.channel = channel
        self.workdir = workdir
        self.stderr = stderr
        self.cipher = "?"
        # A target never closed (or an interpreter exiting): its files go anyway.
        self.remove_files = weakref.finalize(self, shutil.rmtree, workdir, True)

    def alive(self) -> bool:
        return not self.channel.failed and self.proc.poll() is None

    def log_text(self) -> str:
        """What ssh wrote to stderr so far (its -v lines included)."""
        try:
            # pread: the file offset is shared with ssh, which still writes.
            fd = self.stderr.fileno()
            size = os.fstat(fd).st_size
            start = max(0, size - 65536)
            data = os.pread(fd, size - start, start)
        except (OSError, ValueError):
            return ""
        return data.decode("utf-8", "replace")

    def wait(self, grace: float):
        """ssh's exit status within `grace` seconds, or None."""
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Close its stdin (ssh then ends the session), give it a moment,
        then kill it; remove the files of the session."""
        healthy = self.alive()
        self.channel.close()
        if self.wait(2.0 if healthy else 0.05) is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            self.wait(5.0)
        try:
            self.stderr.close()
        except OSError:
            pass
        self.remove_files()


class _UseParamiko(Exception):
    """OpenSSH cannot talk to this server (algorithms it no longer enables by
    default, e.g. ssh-rsa SHA-1 signatures only) where paramiko can."""


class SftpTarget(TransferTarget):
    TYPE = "sftp"

    CONNECT_TIMEOUT = 30.0  # TCP connect, SSH banner, key exchange
    AUTH_TIMEOUT = 30.0
    IO_TIMEOUT = 120.0  # no progress on the session for this long = dead
    KEEPALIVE = 30  # seconds between SSH keepalives
    WINDOW = 8 * 1024 * 1024  # SSH channel window we offer (reads, paramiko)
    UNREACHABLE_CODES = (errors.CONNECT_FAILED,)
    READER = SftpReader
    if paramiko is not None:
        TRANSFER_ERRORS = (_StatusError, OSError, EOFError, paramiko.SSHException)
    else:  # pragma: no cover
        TRANSFER_ERRORS = (_StatusError, OSError, EOFError)

    def __init__(self, options: dict, ctx):
        super().__init__(options, ctx)
        self.server = options["server"]
        self.port = int(options.get("port") or 22)
        self.username = options["username"]
        self.trust = HostKeyTrust(options, self.server, self.port, ctx.config_dir, self.log)
        self.transport = None  # paramiko's SSH transport
        self.ssh = None  # or an OpenSSH client process (_SshSession)
        self.sftp = None
        self.folder = None
        self.request_size = DEFAULT_REQUEST
        self.pkey = None
        self.ssh_key = None  # the private key as ssh reads it (OpenSSH client)
        self.pinned_key = None  # a fingerprint pin, resolved to the server's key
        self.paramiko_only = False  # OpenSSH could not talk to this server
        self.fsync_supported = True
        self.statvfs_supported = True

    # -- naming ---------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return "%s:%d" % (self.server, self.port)

    def location(self) -> str:
        return "%s:%s" % (self.server, self.options.get("path") or ".")

    @property
    def known_hosts_path(self) -> str:
        return self.trust.known_hosts_path

    # -- connection -------------------------------------------------------------
    def alive(self) -> bool:
        if self.sftp is None:
            return False
        if self.ssh is not None:
            return self.ssh.alive()
        return self.transport is not None and self.transport.is_active()

    def connect(self) -> None:
        if paramiko is None:
            raise MissingLibrary("paramiko", "sftp target")
        if self.pkey is None and self.options.get("private_key"):
            self.pkey = self._load_private_key()
        self.retrying("connection to %s" % self.endpoint, self._connect_once)

    def _connect_once(self) -> None:
        self.close()
        ssh = self._openssh_path()
        if ssh:
            try:
                self._connect_openssh(ssh)
            except _UseParamiko as why:
                self.log("the OpenSSH client cannot talk to %s (%s): using paramiko" % (self.endpoint, why))
                self.paramiko_only = True
                ssh = None
        if ssh:
            how = "OpenSSH client, cipher %s" % self.ssh.cipher
        else:
            self._connect_paramiko()
            how = "cipher %s" % self.transport.remote_cipher
        self.request_size = self._negotiate_request_size()
        self.log("connected to %s as %s (%s, %d KiB requests)"
                 % (self.endpoint, self.username, how, self.request_size // 1024))

    def _openssh_path(self):
        """The ssh to use for this target, or None for paramiko."""
        path = openssh_client()
        if not path or self.paramiko_only:
            return None
        password = self.options.get("password")
        if password is not None and re.search(r"[\r\n\0]", password):
            return None  # askpass answers one line
        if "%" in self.username:
            return None  # ssh would expand it as a token
        if self.options.get("private_key") and self.ssh_key is None:
            self.ssh_key = _openssh_key(self.options["private_key"], self.options.get("private_key_passphrase"))
            if self.ssh_key is None:
                return None
        return path

    def _connect_paramiko(self) -> None:
        transport = self._handshake(self.trust.preferred_algorithms())
        try:
            transport = self._check_host_key(transport)
            self._authenticate(transport)
            try:
                sftp = paramiko.SFTPClient.from_transport(transport, window_size=self.WINDOW)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise TargetError("%s: the server refused the SFTP subsystem (%s)" % (self.endpoint, _why(exc)),
                                  errors.FAILED) from None
            if sftp is None:
                raise TargetError("%s: the server refused the SFTP subsystem" % self.endpoint, errors.FAILED)
            sftp.get_channel().settimeout(self.IO_TIMEOUT)
        except BaseException:
            transport.close()
            raise
        self.transport, self.sftp = transport, sftp

    def _handshake(self, key_types: tuple, only: bool = False):
        """TCP + SSH key exchange (no credentials sent yet). `key_types`: host
        key algorithms to prefer (`only`: to accept)."""
        try:
            sock = socket.create_connection((self.server, self.port), timeout=self.CONNECT_TIMEOUT)
        except socket.gaierror as exc:
            raise TargetError("cannot resolve SFTP server %s: %s" % (self.server, exc.strerror or exc),
                              errors.CONNECT_FAILED, transient=True) from None
        except OSError as exc:
            why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
            raise TargetError("cannot connect to SFTP server %s: %s" % (self.endpoint, why),
                              errors.CONNECT_FAILED, transient=True) from None
        try:
            transport = paramiko.Transport(sock, default_window_size=self.WINDOW)
        except Exception:
            sock.close()
            raise
        transport.banner_timeout = self.CONNECT_TIMEOUT
        transport.handshake_timeout = self.CONNECT_TIMEOUT
        transport.auth_timeout = self.AUTH_TIMEOUT
        security = transport.get_security_options()
        # The client's order decides: AES-GCM first where the server has it
        # (authenticated encryption, and the fastest cipher in paramiko).
        security.ciphers = tuple(c for c in GCM_CIPHERS if c in security.ciphers) + tuple(
            c for c in security.ciphers if c not in GCM_CIPHERS)
        supported = tuple(security.key_types)
        preferred = tuple(k for k in key_types if k in supported)
        security.key_types = preferred if only else preferred + tuple(k for k in supported if k not in key_types)
        try:
            transport.start_client(timeout=self.CONNECT_TIMEOUT)
        except paramiko.IncompatiblePeer as exc:
            transport.close()
            raise TargetError("%s: no common SSH algorithms with the server (%s)" % (self.endpoint, exc),
                              errors.CONNECT_FAILED) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise TargetError("SSH handshake with %s failed: %s" % (self.endpoint, _why(exc)),
                              errors.CONNECT_FAILED, transient=True) from None
        # Idle stretches (a slow verify, a long rename) must not let a
        # firewall forget the connection.
        transport.set_keepalive(self.KEEPALIVE)
        return transport

    # -- host keys (the policy is _hostkeys.HostKeyTrust) -----------------------------
    def _check_host_key(self, transport):
        """Accept or refuse the server's key; returns the transport to use (a
        fingerprint pin may need a new key exchange asking for another type)."""
        accepted = self.trust.decide(self._server_key(transport), probe=self._probe_key, discard=self._drop_transport)
        return accepted.handle

    @staticmethod
    def _server_key(transport) -> ServerKey:
        key = transport.get_remote_server_key()
        return ServerKey(key.get_name(), key.get_base64(), transport)

    def _probe_key(self, algorithms: tuple):
        """The server's key for `algorithms` (a key exchange restricted to
        them), None if the server has no such key."""
        if not any(a in paramiko.Transport._preferred_keys for a in algorithms):  # pylint: disable=protected-access
            return None
        try:
            return self._server_key(self._handshake(algorithms, only=True))
        except TargetError:
            return None

    @staticmethod
    def _drop_transport(transport) -> None:
        if transport is not None:
            transport.close()

    def _accepted_key(self) -> tuple:
        """(type, blob) of the server's key as the policy accepts it, asked
        from the server with paramiko (no credentials sent); raises the
        policy's hostKeyUnknown/hostKeyMismatch."""
        transport = self._handshake(self.trust.preferred_algorithms())
        try:
            transport = self._check_host_key(transport)
            key = transport.get_remote_server_key()
            return key.get_name(), key.get_base64()
        finally:
            transport.close()

    def _ssh_known_keys(self) -> list:
        """The keys ssh is told to trust for this connection."""
        keys = self.trust.ssh_known_keys()
        if keys is not None:
            return keys
        if self.pinned_key is not None:
            return [self.pinned_key]
        accepted = self._accepted_key()  # first contact (accept_new remembers it now) or a fingerprint pin
        if self.trust.pin()[0] == "fingerprint":
            self.pinned_key = accepted
        return [accepted]

    # -- credentials ------------------------------------------------------------------
    def _load_private_key(self):
        """A paramiko key from the key text (OpenSSH or PEM; RSA, ECDSA, Ed25519)."""
        text = self.options["private_key"].strip() + "\n"
        passphrase = self.options.get("private_key_passphrase")
        encrypted = False
        for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            try:
                return cls.from_private_key(io.StringIO(text), password=passphrase)
            except paramiko.PasswordRequiredException:
                encrypted = True
            except (paramiko.SSHException, ValueError, TypeError, IndexError, AssertionError):
                continue  # another type, or a wrong passphrase
        # Never quote the key or the library's message (it may echo key data).
        if encrypted and not passphrase:
            raise TargetError("%s: private_key is encrypted: set private_key_passphrase" % self.location(), errors.INVALID)
        raise TargetError("%s: private_key could not be loaded: not an RSA, ECDSA or Ed25519 key, or a wrong "
                          "private_key_passphrase" % self.location(), errors.INVALID)

    def _login_refused(self) -> TargetError:
        return TargetError("SFTP login to %s as '%s' failed: wrong user, password or key" % (self.endpoint, self.username),
                           errors.SFTP_RIGHT_PROBLEM)

    def _method_refused(self, allowed) -> TargetError:
        return TargetError("SFTP login to %s as '%s' failed: the server does not accept %s authentication (it allows: %s)"
                           % (self.endpoint, self.username, "key" if self.options.get("private_key") else "password",
                              ", ".join(allowed) or "nothing"), errors.SFTP_RIGHT_PROBLEM)

    def _authenticate(self, transport) -> None:
        try:
            if self.pkey is not None:
                transport.auth_publickey(self.username, self.pkey)
            else:
                self._auth_password(transport)
        except paramiko.BadAuthenticationType as exc:
            raise self._method_refused(exc.allowed_types) from None
        except paramiko.AuthenticationException:
            raise self._login_refused() from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TargetError("SFTP login to %s failed: connection lost (%s)" % (self.endpoint, _why(exc)),
                              errors.CONNECT_FAILED, transient=True) from None
        if not transport.is_authenticated():
            raise self._login_refused()

    def _auth_password(self, transport) -> None:
        password = self.options["password"]
        try:
            transport.auth_password(self.username, password)
        except paramiko.BadAuthenticationType as exc:
            # Servers that take passwords only through keyboard-interactive.
            if "keyboard-interactive" not in exc.allowed_types:
                raise

            def answer(_title, _instructions, prompts):
                return [password if not echo else "" for _prompt, echo in prompts]

            transport.auth_interactive(self.username, answer)

    # -- the OpenSSH client ---------------------------------------------------------------
    def _ssh_argv(self, ssh: str, workdir: str, key_file) -> list:
        password = key_file is None
        options = {
            "HostName": self.server.replace("%", "%%"),
            "Port": str(self.port),
            "User": self.username,
            "HostKeyAlias": SSH_HOST_ALIAS,
            "UserKnownHostsFile": os.path.join(workdir, "known_hosts"),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "yes",
            "CheckHostIP": "no",
            "UpdateHostKeys": "no",
            "VerifyHostKeyDNS": "no",
            "Ciphers": "^" + ",".join(GCM_CIPHERS),
            "ConnectTimeout": str(max(1, int(round(self.CONNECT_TIMEOUT)))),
            "ServerAliveInterval": str(max(1, int(min(self.KEEPALIVE, self.IO_TIMEOUT)))),
            "ServerAliveCountMax": str(max(1, int(self.IO_TIMEOUT // max(1, min(self.KEEPALIVE, self.IO_TIMEOUT))))),
            "TCPKeepAlive": "yes",
            "BatchMode": "no" if password else "yes",
            "IdentitiesOnly": "yes",
            "IdentityAgent": "none",
            "IdentityFile": key_file or "none",
            "PubkeyAuthentication": "no" if password else "yes",
            "PasswordAuthentication": "yes" if password else "no",
            "KbdInteractiveAuthentication": "yes" if password else "no",
            "PreferredAuthentications": "password,keyboard-interactive" if password else "publickey",
            "NumberOfPasswordPrompts": "1",
            "GSSAPIAuthentication": "no",
            "HostbasedAuthentication": "no",
            "AddKeysToAgent": "no",
            "ControlMaster": "no",
            "ControlPath": "none",
            "ProxyCommand": "none",
            "ProxyJump": "none",
            "ForwardAgent": "no",
            "ForwardX11": "no",
            "ClearAllForwardings": "yes",
            "PermitLocalCommand": "no",
            "RequestTTY": "no",
            "EscapeChar": "none",
            "Compression": "no",
            "LogLevel": "DEBUG1",  # the negotiated cipher, and the reason of a failure
        }
        argv = [ssh, "-F", "none"]
        for name, value in options.items():
            argv += ["-o", "%s=%s" % (name, value)]
        return argv + ["-s", "--", SSH_HOST_ALIAS, "sftp"]

    def _connect_openssh(self, ssh: str) -> None:
        keys = self._ssh_known_keys()
        password = None if self.options.get("private_key") else self.options["password"]
        workdir = _private_dir(executable=password is not None)
        if workdir is None:
            raise TargetError("%s: no private temporary folder for the SSH client (%s)"
                              % (self.endpoint, ", ".join(TEMP_BASES or ("/dev/shm", tempfile.gettempdir()))),
                              errors.FAILED)
        secrets_ = []  # files that go as soon as ssh is logged in
        feed = None
        session = None
        try:
            write_known_hosts(os.path.join(workdir, "known_hosts"), SSH_HOST_ALIAS, keys)
            env = {"PATH": os.environ.get("PATH") or os.defpath, "LC_ALL": "C"}
            if os.environ.get("HOME"):
                env["HOME"] = os.environ["HOME"]
            key_file = None
            if password is None:
                key_file = os.path.join(workdir, "id")
                _write_private(key_file, self.ssh_key)
                secrets_.append(key_file)
            else:
                fifo = os.path.join(workdir, "answer")
                helper = os.path.join(workdir, "askpass")
                os.mkfifo(fifo, 0o600)
                secrets_ += [fifo, helper]
                # Ours is open for reading and writing: opening never waits,
                # the lines stay in the kernel's FIFO buffer (no disk) until
                # the helper reads one, and go when it is closed.
                feed = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
                line = (password + "\n").encode("utf-8")
                for _answer in range(PASSWORD_ANSWERS):
                    os.write(feed, line)
                _write_private(helper, (ASKPASS_SCRIPT % shlex.quote(fifo)).encode("utf-8"), 0o700)
                env.update(SSH_ASKPASS=helper, SSH_ASKPASS_REQUIRE="force")
            stderr = tempfile.TemporaryFile(dir=workdir)  # pylint: disable=consider-using-with
            ours, theirs = socket.socketpair()
            try:
                proc = subprocess.Popen(  # pylint: disable=consider-using-with
                    self._ssh_argv(ssh, workdir, key_file), stdin=theirs, stdout=theirs, stderr=stderr, env=env,
                    start_new_session=True, close_fds=True)
            except OSError as exc:
                stderr.close()
                ours.close()
                raise TargetError("cannot start the SSH client %s: %s" % (ssh, exc.strerror or exc), errors.FAILED) from None
            finally:
                theirs.close()
            session = _SshSession(proc, _SshChannel(ours, self.CONNECT_TIMEOUT + self.AUTH_TIMEOUT), workdir, stderr)
            try:
                sftp = paramiko.SFTPClient(session.channel)  # INIT/VERSION: ssh has connected and logged in
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self._ssh_failure(session, exc) from None
            session.channel.settimeout(self.IO_TIMEOUT)
            match = re.search(r"kex: client->server cipher: (\S+)", session.log_text())
            session.cipher = match.group(1) if match else "?"
        except BaseException:
            if session is not None:
                session.close()
            else:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            # Names first (a helper started now finds no FIFO), then our end
            # of the FIFO (a helper still reading gets end-of-file).
            for path in secrets_:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            if feed is not None:
                os.close(feed)
        self.ssh, self.sftp = session, sftp

    def _ssh_failure(self, session: _SshSession, exc: BaseException) -> TargetError:
        """Why ssh did not get to the SFTP session, as a result code."""
        timed_out = isinstance(exc, socket.timeout)
        if timed_out:
            session.proc.kill()
        status = session.wait(5.0)
        text = session.log_text()
        session.close()
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("debug")]
        said = "; ".join(line.replace("ssh: ", "", 1) for line in lines[-3:])[:300]
        match = re.search(r"Could not resolve hostname [^:]*: (.*)", text)
        if match:
            return TargetError("cannot resolve SFTP server %s: %s" % (self.server, match.group(1).strip()),
                               errors.CONNECT_FAILED, transient=True)
        match = re.search(r"connect to host .* port \d+: (.*)", text)
        if match:
            return TargetError("cannot connect to SFTP server %s: %s" % (self.endpoint, match.group(1).strip()),
                               errors.CONNECT_FAILED, transient=True)
        match = re.search(r"Unable to negotiate with .*?: (.*)", text)
        if match:
            raise _UseParamiko("no common algorithms: %s" % match.group(1).strip()[:200])
        if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            # ssh refused the key: the policy says why, with the key offered;
            # a key the policy accepts is one ssh cannot check (its algorithm).
            self._accepted_key()
            raise _UseParamiko("it refused the host key the policy accepts")
        match = re.search(r"Permission denied \(([^)]*)\)", text)
        if match:
            allowed = [m for m in match.group(1).split(",") if m]
            wanted = ("publickey",) if self.options.get("private_key") else ("password", "keyboard-interactive")
            if not any(m in allowed for m in wanted):
                return self._method_refused(allowed)
            return self._login_refused()
        if "Authenticated to " in text:
            if "subsystem request failed" in text or status == 0:
                return TargetError("%s: the server refused the SFTP subsystem (%s)" % (self.endpoint, said or _why(exc)),
                                   errors.FAILED)
            return TargetError("SFTP session with %s failed: %s" % (self.endpoint, said or _why(exc)),
                               errors.CONNECT_FAILED, transient=True)
        if "Load key" in text or "invalid format" in text:
            return TargetError("%s: private_key could not be loaded by the SSH client" % self.location(), errors.INVALID)
        if timed_out:
            return TargetError("SSH handshake with %s failed: timed out" % self.endpoint, errors.CONNECT_FAILED,
                               transient=True)
        return TargetError("SSH handshake with %s failed: %s" % (self.endpoint, said or _why(exc)),
                           errors.CONNECT_FAILED, transient=True)

    # -- session -----------------------------------------------------------------------------
    def _negotiate_request_size(self) -> int:
        """Largest write the server accepts (limits@openssh.com), capped."""
        try:
            t, msg = self._call(CMD_EXTENDED, "limits@openssh.com")
        except (_StatusError, OSError, EOFError, paramiko.SSHException):
            return DEFAULT_REQUEST
        if t != CMD_EXTENDED_REPLY:
            return DEFAULT_REQUEST
        msg.get_int64()  # max packet length
        msg.get_int64()  # max read length
        max_write = msg.get_int64()
        return max(DEFAULT_REQUEST, min(max_write, MAX_REQUEST)) if max_write else DEFAULT_REQUEST

    def close(self) -> None:
        sftp, ssh, transport = self.sftp, self.ssh, self.transport
        self.sftp = self.ssh = self.transport = None
        for thing in (sftp, ssh, transport):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # pylint: disable=broad-except
                    pass

    # -- SFTP requests with status codes ----------------------------------------------
    def _call(self, cmd: int, *args):
        """One request; returns (type, msg) of a non-status reply, raises
        _StatusError for an error status (paramiko would drop the code)."""
        replies = _Replies()
        num = self.sftp._async_request(replies, cmd, *args)  # pylint: disable=protected-access
        while num not in replies.replies:
            self.sftp._read_response()  # pylint: disable=protected-access
        t, msg = replies.replies.pop(num)
        if t == CMD_STATUS:
            _expect_ok((t, msg))
        return t, msg

    def free_space(self, path: str):
        """(available to users, free) bytes from statvfs@openssh.com, or None."""
        if not self.statvfs_supported:
            return None
        try:
            t, msg = self._call(CMD_EXTENDED, "statvfs@openssh.com", path)
        except _StatusError as exc:
            if exc.code == SFTP_OP_UNSUPPORTED:
                self.statvfs_supported = False
            return None
        if t != CMD_EXTENDED_REPLY:
            return None
        _bsize, frsize, blocks, bfree, bavail = (msg.get_int64() for _field in range(5))
        if not blocks or not frsize:  # servers that do not know say 0
            return None
        return bavail * frsize, bfree * frsize

    def transfer_error(self, exc: BaseException, what: str, need: int = 0) -> TargetError:
        """Map a failure during `what` to a result code. A dead session is
        transient (the caller reconnects); `need` = bytes still to write, to
        recognise a full disk behind a generic failure."""
        if isinstance(exc, TargetError):
            return exc
        status = isinstance(exc, _StatusError)
        dead = not self.alive() or isinstance(exc, (EOFError, socket.timeout, ConnectionError, paramiko.SSHException))
        if not status and dead:
            self.close()
            return TargetError("%s: %s: connection to %s lost (%s)" % (self.location(), what, self.endpoint,
                                                                       _why(exc)),
                               errors.CONNECT_FAILED, transient=True)
        text = exc.text if status else (exc.strerror or str(exc))
        code = exc.code if status else None
        num = getattr(exc, "errno", None)
        if code == SFTP_PERMISSION_DENIED or num in (errno.EACCES, errno.EPERM):
            return TargetError("%s: %s: permission denied for user '%s'" % (self.location(), what, self.username),
                               errors.SFTP_RIGHT_PROBLEM)
        lowered = (text or "").lower()
        if num in (errno.ENOSPC, errno.EDQUOT) or any(w in lowered for w in NO_SPACE_WORDS):
            return TargetError("%s: %s: no space left on the server (%s)" % (self.location(), what, text), errors.DISK_FULL)
        if need and (code == SFTP_FAILURE or code is None) and self.folder and self.alive():
            try:
                space = self.free_space(self.folder)
            except (OSError, EOFError, paramiko.SSHException):
                space = None
            if space is not None and space[0] < need:
                return TargetError("%s: %s: no space left on the server (%d bytes free for users, %d more needed)"
                                   % (self.location(), what, space[0], need), errors.DISK_FULL)
        if code == SFTP_NO_SUCH_FILE or num == errno.ENOENT:
            return TargetError("%s: %s: no such file or folder" % (self.location(), what), errors.FAILED)
        return TargetError("%s: %s failed: %s" % (self.location(), what, text or type(exc).__name__), errors.FAILED)

    sftp_error = transfer_error  # its name before _transfer.py

    # -- folders ------------------------------------------------------------------------
    def _base(self) -> str:
        path = self.options.get("path") or "."
        if path == ".":
            return self.sftp.normalize(".")  # the login folder, absolute
        return posixpath.normpath(path)

    def _folder(self) -> str:
        if self.folder is None:
            self.folder = self._op("finding the login folder",
                                   lambda: posixpath.join(self._base(), ROOT_DIR, self.ctx.job))
        return self.folder

    def _is_dir(self, path: str):
        """True/False, or None when it does not exist."""
        try:
            return stat.S_ISDIR(self.sftp.stat(path).st_mode or 0)
        except IOError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def _existing_ancestor(self, path: str) -> str:
        probe = path
        while True:
            kind = self._is_dir(probe)
            if kind:
                return probe
            if kind is False:
                raise TargetError("%s: %s exists but is not a folder" % (self.location(), probe), errors.FAILED)
            parent = posixpath.dirname(probe)
            if parent == probe:
                return probe
            probe = parent

    def ensure_dir(self) -> None:
        folder = self._folder()

        def make():
            # Walk up to what exists (a chrooted or restricted account may not
            # see '/'), then create downwards, mkdir -p style.
            existing = self._existing_ancestor(folder)
            missing = []
            probe = folder
            while probe != existing:
                missing.append(probe)
                probe = posixpath.dirname(probe)
            for path in reversed(missing):
                try:
                    self.sftp.mkdir(path, 0o700)
                except IOError:
                    if not self._is_dir(path):  # not a race with a parallel run: a real failure
                        raise
        self._op("creating folder %s" % folder, make)

    # -- the primitives of _transfer.TransferTarget ---------------------------------------------
    def _path(self, name: str) -> str:
        return posixpath.join(self._folder(), name)

    def _remote_size(self, path: str):
        try:
            return self.sftp.stat(path).st_size or 0
        except IOError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def _open_partial(self, path: str, new: bool):
        if not new:
            return self.sftp.open(path, "r+b")
        remote = self.sftp.open(path, "wb")
        try:
            remote.chmod(0o600)  # archives hold the appliance's data
        except IOError:
            pass
        return remote

    def _truncate(self, handle, size: int) -> None:
        handle.truncate(size)

    def _write_window(self, handle, src=None) -> RequestWindow:
        return _SftpWrites(self, handle.handle, src)

    def _flush(self, handle) -> None:
        """fsync@openssh.com; servers without it are trusted as they are."""
        if not self.fsync_supported:
            return
        try:
            self._call(CMD_EXTENDED, "fsync@openssh.com", handle.handle)
        except _StatusError as exc:
            if exc.code != SFTP_OP_UNSUPPORTED:
                raise
            self.fsync_supported = False

    def _close_handle(self, handle) -> None:
        handle.close()

    def _check_space(self, size: int) -> None:
        """Refuse early when the server says the archive cannot fit at all
        (counting even space reserved for root: no false alarms)."""
        space = self.free_space(self.folder)
        if space is not None and space[1] < size:
            raise TargetError("%s: not enough space on the server: %d bytes free, the archive has %d"
                              % (self.location(), space[1], size), errors.DISK_FULL)

    def _rename_over(self, partial: str, final: str, name: str) -> None:
        try:
            self._call(CMD_EXTENDED, "posix-rename@openssh.com", partial, final)
        except _StatusError as exc:
            if exc.code != SFTP_OP_UNSUPPORTED:
                raise
            # Plain SFTP rename will not replace: clear a stale name first.
            self._remove_path(final)
            self.sftp.rename(partial, final)

    def _remove_path(self, path: str) -> None:
        try:
            self.sftp.remove(path)
        except IOError as exc:
            if exc.errno != errno.ENOENT:
                raise

    # -- the rest of the primitives ---------------------------------------------------------
    def listdir(self) -> list:
        folder = self._folder()

        def scan():
            try:
                entries = self.sftp.listdir_attr(folder)
            except IOError as exc:
                if exc.errno == errno.ENOENT:
                    return []
                raise
            return [RemoteFile(e.filename, e.st_size or 0, float(e.st_mtime or 0))
                    for e in entries if e.st_mode is not None and stat.S_ISREG(e.st_mode)]
        return self._op("listing %s" % folder, scan)

    def probe_write(self) -> None:
        folder = self._folder()

        def probe():
            # The job folder may not exist yet and check mode creates nothing:
            # prove write access in the nearest folder that exists.
            where = self._existing_ancestor(folder)
            path = posixpath.join(where, ".sar-backup-probe-%s" % uuid.uuid4().hex)
            try:
                with self.sftp.open(path, "wb") as handle:
                    handle.write(b"sar-backup write probe\n")
            finally:
                try:
                    self.sftp.remove(path)
                except IOError:
                    pass
        self._op("writing a probe file below %s" % folder, probe)


TARGET = SftpTarget
