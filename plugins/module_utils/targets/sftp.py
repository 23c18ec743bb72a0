# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`sftp`: an SSH server reached with paramiko (seed: "Serveur SFTP").

What this adds to the common delivery of base.Target:
- host keys checked before any credential is sent (SPEC 9): a pinned
  `host_key` (public key line or SHA256 fingerprint), else the host's own
  known_hosts file in the config dir, trust-on-first-use only with
  `host_key_policy: accept_new`;
- uploads with many write requests in flight (paramiko's one-request-at-a-time
  writes run at ~1 MB/s over real links), every reply checked, so a failed
  write (disk full) can never be missed and the confirmed prefix is known;
- a transport that drops mid-upload is reconnected and the upload resumed from
  the confirmed prefix of the remote partial, a finite number of times;
- the partial becomes the `.sar` name only after its size was checked, with an
  atomic posix-rename where the server offers it.

paramiko's public file API hides the SFTP status codes and drops errors of
pipelined writes; the request/reply calls used here (`_async_request`,
`_read_response`, the reply hook `_async_response`) are the ones its own
SFTPFile is built on and have been stable since paramiko 1.x. Uploads take
request ids the way `_async_request` does (its `_lock`, `request_number`,
`_expecting`) and write their requests to the channel themselves, without
paramiko's copies (see `_write_pipelined`).
"""

from __future__ import annotations

import base64
import collections
import errno
import hashlib
import hmac
import io
import os
import posixpath
import re
import socket
import stat
import struct
import uuid

from .. import errors
from ..errors import MissingLibrary, TargetError
from .base import ROOT_DIR, RemoteFile, Target, partial_name

try:
    import paramiko
    from paramiko.sftp import (
        CMD_DATA, CMD_EXTENDED, CMD_EXTENDED_REPLY, CMD_READ, CMD_STATUS, CMD_WRITE,
        SFTP_EOF, SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_OP_UNSUPPORTED, SFTP_PERMISSION_DENIED,
        int64,
    )
except ImportError:  # pragma: no cover
    paramiko = None

# Host key algorithms that yield a key of a given type (an RSA key is offered
# under three signature algorithms).
KEY_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"),
}
GCM_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
DEFAULT_REQUEST = 32 * 1024  # every SFTP server must accept this much per request
MAX_REQUEST = 256 * 1024  # OpenSSH: 255 KiB (limits@openssh.com); more buys nothing
IN_FLIGHT = 4 * 1024 * 1024  # bytes of write/read requests awaiting their reply
NO_SPACE_WORDS = ("no space", "disk full", "quota", "insufficient", "not enough space")


def fingerprint(blob: bytes) -> str:
    """OpenSSH's 'SHA256:<base64 without padding>' of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def known_hosts_name(server: str, port: int) -> str:
    """The host field OpenSSH writes: `host`, or `[host]:port` for other ports."""
    return server if port == 22 else "[%s]:%d" % (server, port)


def _host_matches(patterns: str, name: str) -> bool:
    """Does a known_hosts host field (comma list, hashed `|1|salt|hash`,
    wildcards, `!negation`) name `name`?"""
    matched = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("|1|"):
            try:
                salt, digest = (base64.b64decode(p) for p in pattern[3:].split("|", 1))
            except (ValueError, TypeError):
                continue
            hit = hmac.compare_digest(hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest(), digest)
        elif "*" in pattern or "?" in pattern:
            # OpenSSH patterns know only * and ? ('[host]:port' is literal).
            regex = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
            hit = re.fullmatch(regex, name.lower()) is not None
        else:
            hit = pattern.lower() == name.lower()
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def read_known_hosts(path: str, name: str) -> dict:
    """key type -> set of base64 blobs remembered for host `name` (ignores
    comments, markers like @cert-authority/@revoked and malformed lines)."""
    found = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise TargetError("cannot read known hosts file %s: %s" % (path, exc.strerror or exc), errors.FAILED)
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith(("#", "@")):
            continue
        if _host_matches(fields[0], name):
            found.setdefault(fields[1], set()).add(fields[2])
    return found


def remember_host_key(path: str, name: str, key_type: str, blob_b64: str) -> None:
    """Append one line (O_APPEND: parallel runs cannot interleave a line)."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, ("%s %s %s\n" % (name, key_type, blob_b64)).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


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


class _Upload:
    """Progress of one upload across reconnects."""

    def __init__(self):
        self.started = False
        self.confirmed = 0  # bytes from offset 0 the server acknowledged


class SftpReader(io.RawIOBase):
    """A remote file read with several large read requests in flight; closing
    it waits for the outstanding replies, so the session stays usable."""

    def __init__(self, target: "SftpTarget", path: str):
        super().__init__()
        self.target = target
        self.sftp = target.sftp
        self.path = path
        self.replies = _Replies()
        self.size = self.sftp.stat(path).st_size
        self.handle = self.sftp.open(path, "rb")
        self.request = target.request_size
        self.window = max(4, IN_FLIGHT // self.request)
        self.inflight = collections.deque()  # (num, offset, length)
        self.next_offset = 0
        self.buffer = b""
        self.eof = False
        self.released = False

    def readable(self) -> bool:
        return True

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
                self.eof = True
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

    def readinto(self, buf) -> int:
        if self.released:
            raise ValueError("I/O operation on closed file")
        while not self.buffer and not self.eof:
            try:
                chunk = self._next_chunk()
            except _StatusError as exc:
                raise self.target.sftp_error(exc, "reading %s" % self.path) from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise self.target.sftp_error(exc, "reading %s" % self.path) from None
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
            # Collect what is still on its way, so those replies do not
            # arrive in the middle of the next request on this session.
            while self.inflight and self.target.alive():
                num = self.inflight.popleft()[0]
                while num not in self.replies.replies:
                    self.sftp._read_response()  # pylint: disable=protected-access
                self.replies.replies.pop(num, None)
            self.handle.close()
        except Exception:  # pylint: disable=broad-except
            pass  # a dead session: nothing left to release
        finally:
            super().close()


class SftpTarget(Target):
    TYPE = "sftp"

    CONNECT_TIMEOUT = 30.0  # TCP connect, SSH banner, key exchange
    AUTH_TIMEOUT = 30.0
    IO_TIMEOUT = 120.0  # no progress on the session for this long = dead
    KEEPALIVE = 30  # seconds between SSH keepalives
    WINDOW = 8 * 1024 * 1024  # SSH channel window we offer (reads)

    def __init__(self, options: dict, ctx):
        super().__init__(options, ctx)
        self.server = options["server"]
        self.port = int(options.get("port") or 22)
        self.username = options["username"]
        self.transport = None
        self.sftp = None
        self.folder = None
        self.request_size = DEFAULT_REQUEST
        self.pkey = None
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
        return os.path.join(self.ctx.config_dir, "known_hosts")

    # -- connection -------------------------------------------------------------
    def alive(self) -> bool:
        return self.transport is not None and self.transport.is_active() and self.sftp is not None

    def connect(self) -> None:
        if paramiko is None:
            raise MissingLibrary("paramiko", "sftp target")
        if self.pkey is None and self.options.get("private_key"):
            self.pkey = self._load_private_key()
        self.retrying("connection to %s" % self.endpoint, self._connect_once)

    def _connect_once(self) -> None:
        self.close()
        transport = self._handshake(self._key_preference())
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
        self.request_size = self._negotiate_request_size()
        self.log("connected to %s as %s (cipher %s, %d KiB requests)"
                 % (self.endpoint, self.username, transport.remote_cipher, self.request_size // 1024))

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

    # -- host keys ------------------------------------------------------------------
    def _pin(self):
        pinned = self.options.get("host_key")
        if not pinned:
            return None, None
        pinned = pinned.strip()
        if pinned.startswith("SHA256:"):
            return "fingerprint", pinned.rstrip("=")
        fields = pinned.split()
        return "line", (fields[0], fields[1])

    def _key_preference(self) -> tuple:
        """Host key algorithms to ask for first: those of the pinned or
        remembered key (else a server with several keys would be refused for
        showing one we do not know yet)."""
        kind, value = self._pin()
        if kind == "line":
            types = [value[0]]
        elif kind is None:
            types = sorted(read_known_hosts(self.known_hosts_path, known_hosts_name(self.server, self.port)))
        else:
            types = []
        prefer = []
        for key_type in types:
            prefer.extend(KEY_ALGORITHMS.get(key_type, (key_type,)))
        return tuple(prefer)

    def _check_host_key(self, transport):
        """Accept or refuse the server's key; returns the transport to use (a
        fingerprint pin may need a new key exchange asking for another type)."""
        key = transport.get_remote_server_key()
        key_type, blob_b64 = key.get_name(), key.get_base64()
        offered = fingerprint(key.asbytes())
        kind, value = self._pin()
        if kind == "line":
            if (key_type, blob_b64) == value:
                return transport
            raise self._mismatch(key_type, offered, "the pinned host_key (%s %s)"
                                 % (value[0], self._fingerprint_of(value[1])))
        if kind == "fingerprint":
            if hmac.compare_digest(offered, value):
                return transport
            # The pinned key may be one of the server's other keys.
            offers = ["%s %s" % (key_type, offered)]
            for other, algorithms in KEY_ALGORITHMS.items():
                if other == key_type:
                    continue
                alternative = self._handshake_only(algorithms)
                if alternative is None:
                    continue
                alt_key = alternative.get_remote_server_key()
                alt_fp = fingerprint(alt_key.asbytes())
                if hmac.compare_digest(alt_fp, value):
                    transport.close()
                    return alternative
                offers.append("%s %s" % (alt_key.get_name(), alt_fp))
                alternative.close()
            raise TargetError(
                "SFTP server %s offers host keys %s, none of which is the pinned host_key %s: "
                "if the server's key changed on purpose, pin the new one" % (self.endpoint, ", ".join(offers), value),
                errors.HOST_KEY_MISMATCH)
        name = known_hosts_name(self.server, self.port)
        known = read_known_hosts(self.known_hosts_path, name)
        if not known:
            if self.options.get("host_key_policy") == "accept_new":
                try:
                    remember_host_key(self.known_hosts_path, name, key_type, blob_b64)
                except OSError as exc:
                    raise TargetError("cannot remember the host key of %s in %s: %s"
                                      % (self.endpoint, self.known_hosts_path, exc.strerror or exc), errors.FAILED) from None
                self.log("remembered host key %s %s of %s in %s" % (key_type, offered, name, self.known_hosts_path))
                return transport
            raise TargetError(
                "SFTP server %s offers %s key %s which is not known: pin it with host_key or set host_key_policy: accept_new"
                % (self.endpoint, key_type, offered), errors.HOST_KEY_UNKNOWN)
        if blob_b64 in known.get(key_type, ()):
            return transport
        remembered = ", ".join("%s %s" % (t, self._fingerprint_of(b)) for t in sorted(known) for b in sorted(known[t]))
        raise self._mismatch(key_type, offered, "the key remembered for %s in %s (%s); if the server's key changed on "
                             "purpose, remove that line" % (name, self.known_hosts_path, remembered))

    def _handshake_only(self, algorithms: tuple):
        """A key exchange restricted to `algorithms`; None if the server has no such key."""
        if not any(a in paramiko.Transport._preferred_keys for a in algorithms):  # pylint: disable=protected-access
            return None
        try:
            return self._handshake(algorithms, only=True)
        except TargetError:
            return None

    @staticmethod
    def _fingerprint_of(blob_b64: str) -> str:
        try:
            return fingerprint(base64.b64decode(blob_b64))
        except (ValueError, TypeError):
            return "(unreadable key)"

    def _mismatch(self, key_type: str, offered: str, expected: str) -> TargetError:
        return TargetError("SFTP server %s offers %s key %s, which differs from %s — refusing to connect"
                           % (self.endpoint, key_type, offered, expected), errors.HOST_KEY_MISMATCH)

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

    def _authenticate(self, transport) -> None:
        refused = TargetError("SFTP login to %s as '%s' failed: wrong user, password or key" % (self.endpoint, self.username),
                              errors.SFTP_RIGHT_PROBLEM)
        try:
            if self.pkey is not None:
                transport.auth_publickey(self.username, self.pkey)
            else:
                self._auth_password(transport)
        except paramiko.BadAuthenticationType as exc:
            raise TargetError("SFTP login to %s as '%s' failed: the server does not accept %s authentication (it allows: %s)"
                              % (self.endpoint, self.username, "key" if self.pkey is not None else "password",
                                 ", ".join(exc.allowed_types) or "nothing"), errors.SFTP_RIGHT_PROBLEM) from None
        except paramiko.AuthenticationException:
            raise refused from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TargetError("SFTP login to %s failed: connection lost (%s)" % (self.endpoint, _why(exc)),
                              errors.CONNECT_FAILED, transient=True) from None
        if not transport.is_authenticated():
            raise refused

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
        sftp, transport = self.sftp, self.transport
        self.sftp = self.transport = None
        for thing in (sftp, transport):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # pylint: disable=broad-except
                    pass

    def _ensure_connected(self) -> None:
        """Reconnect a dropped session; a server still unreachable is transient
        (the caller retries), a refused key or login is not."""
        if self.alive():
            return
        try:
            self._connect_once()
        except TargetError as exc:
            if exc.code == errors.CONNECT_FAILED:
                exc.transient = True
            raise

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

    def sftp_error(self, exc: BaseException, what: str, need: int = 0) -> TargetError:
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

    def _op(self, what: str, func, *args):
        """An idempotent operation, reconnecting on a dropped session."""
        def once():
            self._ensure_connected()
            try:
                return func(*args)
            except (_StatusError, OSError, EOFError, paramiko.SSHException) as exc:
                raise self.sftp_error(exc, what) from None
        return self.retrying(what, once)

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

    # -- upload ----------------------------------------------------------------------------
    def put(self, src_path: str, name: str, size: int) -> None:
        folder = self._folder()
        partial = posixpath.join(folder, partial_name(name))
        final = posixpath.join(folder, name)
        state = _Upload()
        try:
            with open(src_path, "rb") as src:
                self.retrying("upload of %s" % name, self._upload_once, src, partial, name, size, state)
            self.retrying("rename of %s" % name, self._commit_once, partial, final, name, size)
        except TargetError as exc:
            self._discard(partial)
            if exc.code == errors.CONNECT_FAILED:
                raise TargetError("%s: upload of %s interrupted and could not be resumed (%d attempts): %s"
                                  % (self.location(), name, self.RETRY_ATTEMPTS, exc), exc.code) from None
            raise
        except BaseException:
            self._discard(partial)
            raise

    def _upload_once(self, src, partial: str, name: str, size: int, state: _Upload) -> None:
        self._ensure_connected()
        remote = None
        try:
            offset = 0
            if state.started:
                remote = self._resume_handle(partial, state)
                offset = state.confirmed if remote is not None else 0
            if remote is None:
                if not state.started:
                    self._check_space(size)
                remote = self.sftp.open(partial, "wb")
                try:
                    remote.chmod(0o600)  # archives hold the appliance's data
                except IOError:
                    pass
                state.confirmed = 0
            state.started = True
            src.seek(offset)
            self._write_pipelined(src, remote.handle, offset, size, state)
            self._fsync(remote.handle)
            handle, remote = remote, None
            handle.close()
        except (_StatusError, OSError, EOFError, paramiko.SSHException) as exc:
            raise self.sftp_error(exc, "upload of %s" % name, need=size - state.confirmed) from None
        finally:
            if remote is not None and self.alive():
                try:
                    remote.close()
                except Exception:  # pylint: disable=broad-except
                    pass

    def _resume_handle(self, partial: str, state: _Upload):
        """Reopen the partial after a reconnect, cut back to the prefix the
        server confirmed (requests in flight at the cut may have landed out of
        order on some servers). None: start over."""
        try:
            remote_size = self.sftp.stat(partial).st_size
        except IOError as exc:
            if exc.errno == errno.ENOENT:
                self.log("partial upload vanished on the server, starting over")
                return None
            raise
        state.confirmed = min(state.confirmed, remote_size or 0)
        handle = self.sftp.open(partial, "r+b")
        if remote_size != state.confirmed:
            try:
                handle.truncate(state.confirmed)
            except IOError:
                pass  # overwriting from the confirmed offset is enough
        self.log("resuming upload at byte %d (%d on the server)" % (state.confirmed, remote_size or 0))
        return handle

    def _check_space(self, size: int) -> None:
        """Refuse early when the server says the archive cannot fit at all
        (counting even space reserved for root: no false alarms)."""
        space = self.free_space(self.folder)
        if space is not None and space[1] < size:
            raise TargetError("%s: not enough space on the server: %d bytes free, the archive has %d"
                              % (self.location(), space[1], size), errors.DISK_FULL)

    def _write_pipelined(self, src, handle: bytes, offset: int, size: int, state: _Upload) -> None:
        """Write src[offset:size] with up to IN_FLIGHT bytes of requests
        awaiting replies; every reply is checked, in file order, so
        `state.confirmed` is always a prefix the server has acknowledged.

        Not through SFTPClient._async_request: it copies a 255 KiB request
        about six times (Message, asbytes, header join, one slice per 32 KiB
        SSH packet sent), each copy a new block above glibc's 128 KiB mmap
        threshold, so each one page-faults fresh memory; that doubled the
        CPU time of an upload (measured 1.7 vs 0.8 CPU-s per 300 MB). Each
        request is instead read into one reused buffer behind its SFTP
        header and handed to the channel as memoryview slices (one SSH
        packet each); ids and reply routing are _async_request's own."""
        sftp = self.sftp
        channel = sftp.sock
        replies = _Replies()
        window = max(4, IN_FLIGHT // self.request_size)
        inflight = collections.deque()
        head = _WRITE_BEFORE_HANDLE + len(handle) + _WRITE_AFTER_HANDLE
        buf = bytearray(head + self.request_size)
        view = memoryview(buf)
        struct.pack_into(">I", buf, _WRITE_BEFORE_HANDLE - 4, len(handle))
        buf[_WRITE_BEFORE_HANDLE:_WRITE_BEFORE_HANDLE + len(handle)] = handle
        pos = offset
        while pos < size or inflight:
            while pos < size and len(inflight) < window:
                count = src.readinto(view[head:head + min(self.request_size, size - pos)])
                if not count:
                    raise TargetError("%s: the archive shrank while uploading (%d of %d bytes)"
                                      % (self.location(), pos, size), errors.FAILED)
                num = _register_request(sftp, replies)
                struct.pack_into(">IBI", buf, 0, head - 4 + count, CMD_WRITE, num)
                struct.pack_into(">QI", buf, head - _WRITE_AFTER_HANDLE, pos, count)
                # The channel has copied the packet when this returns: the buffer can be refilled.
                _send_all(channel, view[:head + count])
                inflight.append((num, pos + count))
                pos += count
            num, end = inflight[0]
            while num not in replies.replies:
                sftp._read_response()  # pylint: disable=protected-access
            inflight.popleft()
            _expect_ok(replies.replies.pop(num))
            state.confirmed = end

    def _fsync(self, handle: bytes) -> None:
        """Data on the server's disk before the rename makes it an archive
        (fsync@openssh.com; servers without it are trusted as they are)."""
        if not self.fsync_supported:
            return
        try:
            self._call(CMD_EXTENDED, "fsync@openssh.com", handle)
        except _StatusError as exc:
            if exc.code != SFTP_OP_UNSUPPORTED:
                raise
            self.fsync_supported = False

    def _commit_once(self, partial: str, final: str, name: str, size: int) -> None:
        self._ensure_connected()
        try:
            try:
                have = self.sftp.stat(partial).st_size
            except IOError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                # An earlier attempt may have renamed it before the cut.
                try:
                    if self.sftp.stat(final).st_size == size:
                        return
                except IOError:
                    pass
                raise TargetError("%s: the partial upload of %s disappeared before the rename" % (self.location(), name),
                                  errors.FAILED) from None
            if have != size:
                raise TargetError("%s: the upload of %s has %d bytes on the server, expected %d; not renamed"
                                  % (self.location(), name, have, size), errors.VERIFY_FAILED)
            try:
                self._call(CMD_EXTENDED, "posix-rename@openssh.com", partial, final)
            except _StatusError as exc:
                if exc.code != SFTP_OP_UNSUPPORTED:
                    raise
                # Plain SFTP rename will not replace: clear a stale name first.
                try:
                    self.sftp.remove(final)
                except IOError as rm_exc:
                    if rm_exc.errno != errno.ENOENT:
                        raise
                self.sftp.rename(partial, final)
        except (_StatusError, OSError, EOFError, paramiko.SSHException) as exc:
            raise self.sftp_error(exc, "rename of %s" % name) from None

    def _discard(self, partial: str) -> None:
        """Best effort after a failure; a partial left on a dead server is
        removed by the next run's prune."""
        if not self.alive():
            return
        try:
            self.sftp.remove(partial)
        except Exception:  # pylint: disable=broad-except
            pass

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

    def remove(self, name: str) -> None:
        path = posixpath.join(self._folder(), name)

        def unlink():
            try:
                self.sftp.remove(path)
            except IOError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        self._op("removing %s" % name, unlink)

    def open_read(self, name: str):
        path = posixpath.join(self._folder(), name)
        return self._op("opening %s" % name, SftpReader, self, path)

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
