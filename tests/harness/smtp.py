# SPDX-License-Identifier: GPL-3.0-or-later
"""A real SMTP server (aiosmtpd) on 127.0.0.1 for tests.

    with smtp.SmtpServer(tmp_dir, mode="starttls", username="u", password="p") as server:
        server.settings()   # an smtp settings dict for the engine (cafile set)
        server.messages     # every message accepted: Received(mail_from, rcpt_tos, raw, message)

Modes: "plain" (no TLS), "starttls" (STARTTLS offered and required before
MAIL), "tls" (implicit TLS on connect). TLS uses a self-signed certificate
made with openssl in `tmp_dir` (subjectAltName DNS:localhost,IP:127.0.0.1 by
default; `san=` changes it). With `username`, AUTH PLAIN/LOGIN is offered;
in starttls mode only after STARTTLS, and then it is required before MAIL.

Knobs (attributes of `server.handler`, may be changed while running):
`reject_rcpt` (True or a set of addresses) answers RCPT with 550,
`reject_data` answers DATA with 550 (True) or with the reply given as a
string (e.g. "451 4.3.0 try again later"), after the whole message came in.
`drop_data_after` (a byte count) closes the connection once that much of the
DATA arrived, without a reply ("DATA dropped" in `commands`). `parse` (default
True): False keeps only the raw bytes (Received.message None), for big messages.
`commands` records the commands seen (MAIL, RCPT, DATA, RSET, AUTH ok/failed) in order.

`data_size_limit=` (SmtpServer): aiosmtpd's limit, announced as SIZE in EHLO;
over it MAIL FROM with SIZE= or the DATA get 552. Default: aiosmtpd's (32 MiB);
0 or None: no limit and no SIZE.
"""

from __future__ import annotations

import email
import email.policy
import os
import ssl
import subprocess
import threading
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

MODES = ("plain", "starttls", "tls")


def make_cert(directory: str, san: str = "DNS:localhost,IP:127.0.0.1", name: str = "smtp") -> tuple:
    """A self-signed certificate and key (openssl); returns (cert, key) paths."""
    cert = os.path.join(directory, "%s-cert.pem" % name)
    key = os.path.join(directory, "%s-key.pem" % name)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", key, "-out", cert, "-subj", "/CN=sar-backup test SMTP",
         "-addext", "subjectAltName=%s" % san,
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return cert, key


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list
    raw: bytes
    message: email.message.EmailMessage

    def attachments(self) -> list:
        """[(filename, payload bytes, content type)] of the message."""
        return [(part.get_filename(), part.get_payload(decode=True), part.get_content_type())
                for part in self.message.iter_attachments()]


@dataclass
class _Handler:
    reject_rcpt: object = False  # True, or a set of addresses
    reject_data: object = False  # True (550) or a reply line
    drop_data_after: int = 0  # close the connection after this many bytes of DATA
    parse: bool = True  # False: Received.message is None (the raw bytes only)
    messages: list = field(default_factory=list)
    commands: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, what: str) -> None:
        with self.lock:
            self.commands.append(what)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self._note("MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self._note("RCPT")
        if self.reject_rcpt is True or (self.reject_rcpt and address in self.reject_rcpt):
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self._note("DATA")
        if self.reject_data:
            return self.reject_data if isinstance(self.reject_data, str) else "550 5.7.1 message rejected by policy"
        raw = envelope.original_content
        parsed = email.message_from_bytes(raw, policy=email.policy.default) if self.parse else None
        with self.lock:
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), raw, parsed))
        return "250 2.0.0 accepted"

    async def handle_RSET(self, server, session, envelope):
        self._note("RSET")
        return "250 OK"


class _SMTP(SMTP):
    """aiosmtpd's server, plus the handler's `drop_data_after`: a relay that
    dies in the middle of a message."""

    async def smtp_DATA(self, arg):
        handler = self.event_handler
        if not handler.drop_data_after or self.envelope is None or not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        seen = 0
        while seen < handler.drop_data_after:
            chunk = await self._reader.read(65536)
            if not chunk:
                break
            seen += len(chunk)
        handler._note("DATA dropped")  # pylint: disable=protected-access
        self.transport.abort()  # no reply, no goodbye: the socket is simply gone


class _Controller(Controller):
    """Binds port 0 and learns the port the kernel picked before aiosmtpd's
    self-test connection (so no port is guessed or shared)."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()

    def factory(self):
        return _SMTP(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    def __init__(self, tmp_dir: str, mode: str = "plain", username: str | None = None,
                 password: str | None = None, san: str = "DNS:localhost,IP:127.0.0.1",
                 reject_rcpt=False, reject_data=False, data_size_limit=...):
        if mode not in MODES:
            raise ValueError("mode must be one of %s" % (MODES,))
        self.tmp_dir = tmp_dir
        self.mode = mode
        self.username = username
        self.password = password
        self.san = san
        self.handler = _Handler(reject_rcpt=reject_rcpt, reject_data=reject_data)
        self.data_size_limit = data_size_limit  # ...: aiosmtpd's default
        self.cert = self.key = None
        self.controller = None

    # what the test reads
    @property
    def messages(self) -> list:
        return self.handler.messages

    @property
    def commands(self) -> list:
        return self.handler.commands

    @property
    def port(self) -> int:
        return self.controller.port

    def settings(self, **overrides) -> dict:
        """An smtp settings dict (store.DEFAULT_SMTP shape) pointing here."""
        out = {
            "host": "127.0.0.1",
            "port": self.port,
            "security": {"plain": "none"}.get(self.mode, self.mode),
            "username": self.username,
            "password": self.password,
            "from": "backup@sar.test",
            "cafile": self.cert,
            "timeout": 10,
        }
        out.update(overrides)
        return out

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == (self.username or "").encode()
              and auth_data.password == (self.password or "").encode())
        self.handler._note("AUTH ok" if ok else "AUTH failed")  # pylint: disable=protected-access
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends 235/535

    def start(self) -> "SmtpServer":
        kwargs = {}
        if self.data_size_limit is not ...:
            kwargs["data_size_limit"] = self.data_size_limit or None
        if self.mode != "plain":
            self.cert, self.key = make_cert(self.tmp_dir, self.san)
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ctx.load_cert_chain(self.cert, self.key)
            if self.mode == "tls":
                kwargs["ssl_context"] = server_ctx
            else:
                kwargs["tls_context"] = server_ctx
                kwargs["require_starttls"] = True
        if self.username is not None:
            kwargs["authenticator"] = self._authenticate
            # aiosmtpd counts only STARTTLS as TLS: implicit TLS and the plain
            # mode must offer AUTH without it, and then aiosmtpd warns about
            # requiring AUTH, so it is only required (before MAIL) in starttls mode.
            kwargs["auth_require_tls"] = self.mode == "starttls"
            kwargs["auth_required"] = self.mode == "starttls"
        self.controller = _Controller(self.handler, hostname="127.0.0.1", port=0,
                                      server_hostname="sar-backup-test", **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self) -> "SmtpServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
