# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""The one SMTP sender of the engine: the `email` target and the run reports
both go through `Session.send`, so TLS, login and error codes are the same.

Messages are composed by the email package (`_compose`). The run reports are
small and sent from memory (`build_message` + `send_message`); the e-mail
target's archive is not: `compose` generates the headers and text parts with
the email package and leaves the attachment as a file, base64-encoded in
blocks while the DATA goes out (`send_wire`), so memory stays a few hundred KB
whatever the archive's size, and `WireMessage.size` is exactly what is sent.

Security (settings `smtp.security`): `tls` is implicit TLS (SMTP_SSL, port 465
by default), `starttls` upgrades a plain connection (port 25 by default) and
`none` stays plain. TLS always uses a verifying context: the relay's
certificate must chain to `smtp.cafile` (or the system CAs when unset) and
name the host we connected to.

Errors are TargetError with a result code (SPEC section 7):
- connectFailed: no relay configured, host unknown, connection refused or
  timing out, TLS handshake or certificate refused, relay without STARTTLS;
- mailFailed: the relay refused the login, the sender, a recipient or the
  message.
Replies in the 4xx range (and timeouts/disconnects) are marked transient.
Messages never carry the password.
"""

from __future__ import annotations

import base64
import copy
import email.policy
import email.utils
import os
import re
import smtplib
import socket
import ssl
import uuid
from email.message import EmailMessage

from . import errors
from .errors import TargetError

# Serialization for the wire: CRLF line ends, headers folded at 78.
WIRE_POLICY = email.policy.SMTP
# email's base64 encoder puts 57 input bytes (76 characters) on each line.
B64_LINE_INPUT = 57
B64_LINE_CHARS = 76
# Attachments are read and encoded this many lines at a time (~230 KB read, ~320 KB sent).
B64_BLOCK_LINES = 4096
CRLF = b"\r\n"
# Lines starting with "." get another "." in DATA (RFC 5321 4.5.2), as smtplib does.
_DOT_LINE = re.compile(br"(?m)^\.")

NO_RELAY = "no SMTP relay configured: set smtp.host with sar_backup_settings"


def default_port(security: str) -> int:
    return 465 if security == "tls" else 25


def default_sender() -> str:
    """From address when smtp.from is unset: sar-backup@<fqdn>."""
    return "sar-backup@%s" % socket.getfqdn()


def sender_of(smtp: dict) -> str:
    return smtp.get("from") or default_sender()


def encoded_length(size: int) -> int:
    """Bytes a `size`-byte attachment takes on the wire: base64 (4 characters
    per 3 bytes, padded) plus CRLF after every 76-character line."""
    if size <= 0:
        return 0
    return 4 * -(-size // 3) + 2 * -(-size // B64_LINE_INPUT)


def _compose(sender: str, to: list, subject: str, text: str, html, parts: list,
             message_id, date) -> EmailMessage:
    msg = EmailMessage(policy=WIRE_POLICY)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = date or email.utils.formatdate(localtime=False)
    msg["Message-ID"] = message_id or email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, data, mime in parts:
        maintype, _sep, subtype = (mime or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=filename, cte="base64")
    return msg


def build_message(sender: str, to: list, subject: str, text: str, html=None, attachments=(),
                  message_id=None, date=None) -> EmailMessage:
    """A message with a text body (and an HTML alternative), attachments read
    from disk: `attachments` is a list of (filename, path, mime).

    Everything is in memory (email.message keeps the base64 body, the wire copy
    is another): for small messages such as the run reports. Big attachments
    go through `compose` + `send_wire`, which stream them."""
    parts = []
    for filename, path, mime in attachments:
        with open(path, "rb") as handle:
            parts.append((filename, handle.read(), mime))
    return _compose(sender, to, subject, text, html, parts, message_id, date)


def _encoded_blocks(path: str):
    """The file base64-encoded as email does it: 76-character lines, each
    ended by CRLF, yielded B64_BLOCK_LINES lines at a time."""
    block = B64_LINE_INPUT * B64_BLOCK_LINES  # a multiple of 3: no padding before the end
    try:
        with open(path, "rb") as handle:
            while True:
                data = handle.read(block)  # buffered: short only at the end of the file
                if not data:
                    return
                text = base64.b64encode(data)
                yield CRLF.join([text[i:i + B64_LINE_CHARS] for i in range(0, len(text), B64_LINE_CHARS)]) + CRLF
    except OSError as exc:
        raise TargetError("cannot read the attachment %s: %s" % (path, exc.strerror or exc), errors.FAILED) from None


class WireMessage:
    """A message as it goes on the wire (CRLF line ends, before dot-stuffing):
    `segments` of generated bytes, with one attachment file between each two
    that is base64-encoded from the file while it is sent. Every segment and
    every encoded block starts at the beginning of a line. Sending twice (a
    retry) reads the files again from the start."""

    def __init__(self, segments: list, files: list = (), recipients: list = ()):
        if len(segments) != len(files) + 1:
            raise ValueError("a WireMessage needs one segment more than it has files")
        self.segments = list(segments)
        self.files = list(files)
        self.recipients = list(recipients)

    @classmethod
    def from_bytes(cls, data: bytes, recipients: list = ()) -> "WireMessage":
        return cls([bytes(data)], [], recipients)

    @property
    def size(self) -> int:
        """Bytes of the message (what SIZE= announces and the relay stores)."""
        return (sum(len(segment) for segment in self.segments)
                + sum(encoded_length(os.path.getsize(path)) for path in self.files))

    def chunks(self, stuffed: bool = False):
        """The message in pieces of at most a few hundred KB; `stuffed`: with
        the dots doubled that DATA needs (base64 lines never start with one)."""
        for index, segment in enumerate(self.segments):
            if index:
                yield from _encoded_blocks(self.files[index - 1])
            if segment:
                yield _DOT_LINE.sub(b"..", segment) if stuffed else segment


def compose(sender: str, to: list, subject: str, text: str, html=None, attachments=(),
            message_id=None, date=None) -> WireMessage:
    """What build_message makes, byte for byte, ready to stream: the email
    package generates the message with a marker line as each attachment's
    base64 body, which is cut out and replaced by the file when sending. The
    attachments are only stat'ed here. Give message_id and date to get the same
    bytes twice (the MIME boundary is random but always the same length)."""
    token = uuid.uuid4().hex
    markers = [("sar-backup-attachment-%s-%d\n" % (token, index)) for index in range(len(attachments))]
    stand_ins = [(filename, b"", mime) for filename, _path, mime in attachments]
    msg = _compose(sender, to, subject, text, html, stand_ins, message_id, date)
    if markers:
        # The attachments are the last parts of the multipart/mixed; their payload
        # is taken as already encoded and written as is (LF becomes CRLF).
        for part, marker in zip(msg.get_payload()[-len(markers):], markers):
            part.set_payload(marker)
    rest = to_bytes(msg)
    segments = []
    for marker in markers:
        line = marker.encode("ascii").replace(b"\n", CRLF)
        if rest.count(line) != 1:
            raise ValueError("attachment marker not found once in the generated message")
        before, _line, rest = rest.partition(line)
        segments.append(before)
    segments.append(rest)
    return WireMessage(segments, [path for _filename, path, _mime in attachments], _recipients(msg))


def message_size(sender: str, to: list, subject: str, text: str, html=None, attachments=(),
                 message_id=None, date=None) -> int:
    """The exact size on the wire of what build_message and compose produce
    with the same arguments (give the same message_id and date), without
    reading the attachments."""
    return compose(sender, to, subject, text, html, attachments, message_id, date).size


def to_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=WIRE_POLICY)


# -- the SMTP session ------------------------------------------------------------

class _Scrubber:
    """Removes the password (plain and as it travels in AUTH) from texts."""

    def __init__(self, smtp: dict):
        self.secrets = []
        password = smtp.get("password")
        if password:
            user = smtp.get("username") or ""
            raw = password.encode("utf-8")
            self.secrets = [password]
            for blob in (raw, ("\0%s\0%s" % (user, password)).encode("utf-8")):
                self.secrets.append(base64.b64encode(blob).decode("ascii"))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text


def _reply_text(exc: smtplib.SMTPResponseException) -> str:
    message = exc.smtp_error
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return "%s %s" % (exc.smtp_code, " ".join(str(message).split()))


def _transient_code(code) -> bool:
    return isinstance(code, int) and 400 <= code < 500


class Session:
    """One SMTP conversation with the configured relay (a context manager)."""

    def __init__(self, smtp: dict):
        self.settings = smtp or {}
        if not self.settings.get("host"):
            # Nothing to reach: same code as an unreachable relay, so monitoring
            # points at the relay settings rather than at the message.
            raise TargetError(NO_RELAY, errors.CONNECT_FAILED)
        self.security = self.settings.get("security") or "starttls"
        self.host = self.settings["host"]
        self.port = int(self.settings.get("port") or default_port(self.security))
        self.timeout = float(self.settings.get("timeout") or 30)
        self.scrub = _Scrubber(self.settings)
        self.client = None

    @property
    def where(self) -> str:
        return "SMTP relay %s:%d (%s)" % (self.host, self.port, self.security)

    def fail(self, exc: BaseException, stage: str) -> TargetError:
        """Map any exception of smtplib/ssl/socket to a TargetError."""
        scrub = self.scrub
        cafile = self.settings.get("cafile")
        if isinstance(exc, TargetError):
            return exc
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return TargetError(scrub("%s: login as %r refused (%s); check smtp.username and smtp.password"
                                     % (self.where, self.settings.get("username"), _reply_text(exc))),
                               errors.MAIL_FAILED, transient=_transient_code(exc.smtp_code))
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            refused = ", ".join("%s (%s)" % (addr, _reply_text(smtplib.SMTPResponseException(*reply)))
                                for addr, reply in sorted(exc.recipients.items()))
            transient = all(_transient_code(reply[0]) for reply in exc.recipients.values())
            return TargetError(scrub("%s refused the recipients: %s" % (self.where, refused)),
                               errors.MAIL_FAILED, transient=transient)
        if isinstance(exc, smtplib.SMTPSenderRefused):
            return TargetError(scrub("%s refused the sender %s (%s); set smtp.from to an address the relay accepts"
                                     % (self.where, exc.sender, _reply_text(exc))),
                               errors.MAIL_FAILED, transient=_transient_code(exc.smtp_code))
        if isinstance(exc, smtplib.SMTPConnectError):
            return TargetError(scrub("%s refused the connection (%s)" % (self.where, _reply_text(exc))),
                               errors.CONNECT_FAILED, transient=_transient_code(exc.smtp_code))
        if isinstance(exc, smtplib.SMTPDataError):
            hint = ""
            if exc.smtp_code == 552:
                hint = "; the relay's size limit may be below the target's max_size"
            return TargetError(scrub("%s refused the message (%s)%s" % (self.where, _reply_text(exc), hint)),
                               errors.MAIL_FAILED, transient=_transient_code(exc.smtp_code))
        if isinstance(exc, smtplib.SMTPResponseException):
            return TargetError(scrub("%s: %s refused (%s)" % (self.where, stage, _reply_text(exc))),
                               errors.MAIL_FAILED, transient=_transient_code(exc.smtp_code))
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return TargetError(scrub("%s closed the connection during %s (%s)" % (self.where, stage, exc)),
                               errors.CONNECT_FAILED, transient=True)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            if stage == "STARTTLS":
                return TargetError("%s does not offer STARTTLS; use smtp.security tls (port 465) "
                                   "or none if the relay really has no TLS" % self.where, errors.CONNECT_FAILED)
            return TargetError(scrub("%s: %s not supported by the relay (%s)%s"
                                     % (self.where, stage, exc,
                                        "; many relays offer AUTH only over TLS" if stage == "login" else "")),
                               errors.MAIL_FAILED)
        if isinstance(exc, smtplib.SMTPException):
            return TargetError(scrub("%s: %s failed (%s)" % (self.where, stage, exc)), errors.MAIL_FAILED)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return TargetError("%s: TLS certificate not accepted (%s); %s"
                               % (self.where, exc.verify_message or exc.reason,
                                  "check that smtp.cafile (%s) is the CA that signed it and that smtp.host is a name "
                                  "in the certificate" % cafile if cafile else
                                  "set smtp.cafile to the CA that signed it"),
                               errors.CONNECT_FAILED)
        if isinstance(exc, ssl.SSLError):
            return TargetError("%s: TLS handshake failed (%s); check smtp.security and smtp.port"
                               % (self.where, exc.reason or exc), errors.CONNECT_FAILED)
        if isinstance(exc, socket.gaierror):
            return TargetError("%s: cannot resolve host name (%s)" % (self.where, exc.strerror or exc),
                               errors.CONNECT_FAILED)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return TargetError("%s: timed out after %gs during %s" % (self.where, self.timeout, stage),
                               errors.CONNECT_FAILED, transient=True)
        if isinstance(exc, ConnectionRefusedError):
            return TargetError("%s: connection refused (is the relay running, is smtp.port right?)" % self.where,
                               errors.CONNECT_FAILED)
        if isinstance(exc, OSError):
            return TargetError(scrub("%s: %s failed (%s)" % (self.where, stage, exc.strerror or exc)),
                               errors.CONNECT_FAILED, transient=isinstance(exc, ConnectionError))
        return TargetError(scrub("%s: %s failed (%s: %s)" % (self.where, stage, type(exc).__name__, exc)),
                           errors.MAIL_FAILED)

    def _step(self, stage: str, func, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            raise self.fail(exc, stage) from None

    def open(self) -> "Session":
        """Connect, TLS as configured, EHLO, login when a username is set."""
        context = None
        if self.security in ("tls", "starttls"):
            context = self._step("TLS setup", ssl.create_default_context, cafile=self.settings.get("cafile"))
        if self.security == "tls":
            self.client = self._step("connect", smtplib.SMTP_SSL, self.host, self.port,
                                     timeout=self.timeout, context=context)
        else:
            self.client = self._step("connect", smtplib.SMTP, self.host, self.port, timeout=self.timeout)
        try:
            self._step("EHLO", self.client.ehlo_or_helo_if_needed)
            if self.security == "starttls":
                self._step("STARTTLS", self.client.starttls, context=context)
                self._step("EHLO", self.client.ehlo)
            if self.settings.get("username"):
                self._step("login", self.client.login, self.settings["username"], self.settings.get("password") or "")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        try:
            client.quit()
        except Exception:  # pylint: disable=broad-except
            try:
                client.close()
            except Exception:  # pylint: disable=broad-except
                pass

    def __enter__(self) -> "Session":
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(self, sender: str, recipients: list, message) -> None:
        """One mail transaction; `message` is bytes or a WireMessage (streamed)."""
        if not isinstance(message, WireMessage):
            message = WireMessage.from_bytes(message)
        refused = self._step("sending", self._transaction, sender, list(recipients), message)
        if refused:
            # Some recipients took it, these did not: still a failure of the target.
            raise self.fail(smtplib.SMTPRecipientsRefused(refused), "RCPT")

    def _give_up(self, code) -> None:
        """After a refusal, as smtplib does: 421 means the relay is closing, else RSET."""
        if code == 421:
            self.client.close()
            return
        try:
            self.client.rset()
        except smtplib.SMTPServerDisconnected:
            pass

    def _transaction(self, sender: str, recipients: list, message: "WireMessage") -> dict:
        """smtplib's sendmail (same commands, options and exceptions), but the
        DATA is written in chunks as the message is encoded. Returns the
        recipients refused while others were accepted."""
        client = self.client
        client.ehlo_or_helo_if_needed()
        size = message.size
        options = ["size=%d" % size] if client.does_esmtp and client.has_extn("size") else []
        code, reply = client.mail(sender, options)
        if code != 250:
            self._give_up(code)
            if code == 552 and options:
                # RFC 1870: 552 to MAIL FROM with SIZE is the relay's size limit, not the sender.
                raise smtplib.SMTPDataError(code, reply)
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        refused = {}
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, reply)
            if code == 421:
                client.close()
                raise smtplib.SMTPRecipientsRefused(refused)
        if len(refused) == len(recipients):
            self._give_up(0)
            raise smtplib.SMTPRecipientsRefused(refused)
        client.putcmd("data")
        code, reply = client.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        tail = b""
        for chunk in message.chunks(stuffed=True):
            client.send(chunk)
            tail = chunk[-2:] if len(chunk) >= 2 else (tail + chunk)[-2:]
        # The end: CRLF "." CRLF, with the message's own last CRLF when it has one.
        client.send(b".\r\n" if tail == CRLF else b"\r\n.\r\n")
        code, reply = client.getreply()
        if code != 250:
            self._give_up(code)
            raise smtplib.SMTPDataError(code, reply)
        return refused

    def probe(self, sender: str, recipients: list) -> None:
        """MAIL FROM / RCPT TO for every recipient, then RSET: nothing is sent."""
        code, reply = self._step("MAIL FROM", self.client.mail, sender)
        if code != 250:
            raise self.fail(smtplib.SMTPSenderRefused(code, reply, sender), "MAIL FROM")
        refused = {}
        for rcpt in recipients:
            code, reply = self._step("RCPT TO", self.client.rcpt, rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, reply)
        self._step("RSET", self.client.rset)
        if refused:
            raise self.fail(smtplib.SMTPRecipientsRefused(refused), "RCPT TO")


def _recipients(msg: EmailMessage) -> list:
    fields = msg.get_all("To", []) + msg.get_all("Cc", []) + msg.get_all("Bcc", [])
    return [addr for _name, addr in email.utils.getaddresses(fields) if addr]


def send_message(smtp_settings: dict, msg: EmailMessage) -> None:
    """Send `msg` through the configured relay to its To/Cc/Bcc addresses.
    The envelope sender is smtp.from (default sar-backup@<fqdn>); a message
    without a From header gets that too (the only change made to `msg`).
    Bcc is not put on the wire."""
    smtp = smtp_settings or {}
    session = Session(smtp)  # raises at once when no relay is configured
    sender = sender_of(smtp)
    if msg["From"] is None:
        msg["From"] = sender
    recipients = _recipients(msg)
    if not recipients:
        raise TargetError("message has no recipients", errors.MAIL_FAILED)
    if msg["Bcc"] is not None:
        msg = copy.copy(msg)  # shallow: deleting a header rebinds the copy's header list only
        del msg["Bcc"]
    data = to_bytes(msg)
    with session:
        session.send(sender, recipients, data)


def send_wire(smtp_settings: dict, message: WireMessage) -> None:
    """Send a composed message (see `compose`) to its recipients, streaming
    its attachments. The envelope sender is smtp.from, as for send_message."""
    smtp = smtp_settings or {}
    session = Session(smtp)  # raises at once when no relay is configured
    if not message.recipients:
        raise TargetError("message has no recipients", errors.MAIL_FAILED)
    with session:
        session.send(sender_of(smtp), message.recipients, message)


def probe(smtp_settings: dict, recipients: list) -> None:
    """Check mode: connect, TLS, login, MAIL FROM + RCPT TO each recipient, RSET."""
    smtp = smtp_settings or {}
    with Session(smtp) as session:
        session.probe(sender_of(smtp), list(recipients))
