# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""`email`: the archive as an attachment to `to`, through the SMTP relay of
the host settings (seed: "E-Mail").

There is no folder here: delivery is one message. What the folder-based
targets do after an upload does not apply:
- `verify`: the relay accepting the message (250 after DATA) counts as
  written; nothing can be read back.
- `keep`: retention is the mailbox's business; nothing is pruned.
- archives()/listdir() are empty, restore needs the attachment saved as a file.

The size check comes first: the whole message as it would go on the wire
(base64 attachment with its line breaks, headers, text) is computed from the
archive's size and compared with `max_size` before any connection is made.

The archive is never held in memory: the message is composed without it and
the attachment is encoded from the file while the DATA goes out (mailer.compose
and mailer.send_wire), so max_size may be large without costing RAM.
"""

from __future__ import annotations

import email.utils

from .. import errors, mailer
from ..errors import TargetError
from ..fsutil import format_size
from .base import Target

MIME_TYPE = "application/octet-stream"


class EmailTarget(Target):
    TYPE = "email"

    @property
    def smtp(self) -> dict:
        return (self.ctx.settings or {}).get("smtp") or {}

    @property
    def recipients(self) -> list:
        return list(self.options.get("to") or [])

    def location(self) -> str:
        return ",".join(self.recipients)

    # -- folder primitives: nothing to list, nothing to prune ----------------
    def listdir(self) -> list:
        return []

    def archives(self) -> list:
        return []

    def ensure_dir(self) -> None:
        pass

    def remove(self, name: str) -> None:
        pass

    def prune(self, protect: str = "") -> list:
        return []

    def verify(self, name: str, size: int, sha256: str) -> None:
        # Accepted by the relay = written; a mailbox cannot be read back here.
        pass

    def open_read(self, name: str):
        raise TargetError("%s: archives sent by e-mail cannot be read back; save the attachment and use that file"
                          % self.location(), errors.FAILED)

    # -- the message ---------------------------------------------------------
    def subject(self, name: str) -> str:
        return "[sar-backup] %s on %s: %s" % (self.ctx.job, self.ctx.host, name)

    def body(self, name: str, size: int, sha256: str) -> str:
        return (
            "Backup archive of job %(job)s on %(host)s, attached.\n"
            "\n"
            "  name:    %(name)s\n"
            "  size:    %(size)d bytes (%(human)s)\n"
            "  sha256:  %(sha)s\n"
            "\n"
            "Save the attachment under its name; `sar-backup verify FILE` checks it\n"
            "before a restore.\n"
        ) % {"job": self.ctx.job, "host": self.ctx.host, "name": name, "size": size,
             "human": format_size(size), "sha": sha256}

    def message_args(self, src_path: str, name: str, size: int, sha256: str) -> dict:
        """Arguments for mailer.compose/message_size; Message-ID and Date
        fixed here so the size computed is the size sent."""
        sender = mailer.sender_of(self.smtp)
        return {
            "sender": sender,
            "to": self.recipients,
            "subject": self.subject(name),
            "text": self.body(name, size, sha256),
            "attachments": [(name, src_path, MIME_TYPE)],
            "message_id": email.utils.make_msgid(domain=sender.rpartition("@")[2] or None),
            "date": email.utils.formatdate(localtime=False),
        }

    def check_size(self, message: mailer.WireMessage) -> int:
        """Encoded message size; mailtobig when over max_size."""
        total = message.size
        limit = int(self.options.get("max_size") or 0)
        if limit and total > limit:
            raise TargetError(
                "archive is %s after encoding (%d bytes with the message), over the e-mail target's max_size %s "
                "(%d bytes); raise max_size if the relay takes bigger messages, or use another target type"
                % (format_size(total), total, format_size(limit), limit), errors.MAIL_TOO_BIG)
        return total

    def send(self, src_path: str, name: str, size: int, sha256: str) -> None:
        # Headers and text now; the archive is read and encoded only while it is sent.
        message = mailer.compose(**self.message_args(src_path, name, size, sha256))
        self.check_size(message)  # before connecting: nothing leaves the host when too big
        # Fail early (and without reading the archive) when no relay is set.
        if not self.smtp.get("host"):
            raise TargetError(mailer.NO_RELAY, errors.CONNECT_FAILED)
        # Each attempt reads the archive again from the start.
        self.retrying("sending", mailer.send_wire, self.smtp, message)

    def deliver(self, src_path: str, name: str, size: int, sha256: str) -> dict:
        """One message with the archive attached. Returns {'bytes', 'pruned'}."""
        self.send(src_path, name, size, sha256)
        self.log("sent %s (%s) to %s" % (name, format_size(size), self.location()))
        return {"bytes": size, "pruned": []}

    def probe_write(self) -> None:
        mailer.probe(self.smtp, self.recipients)

    def check(self, new_name: str = "") -> list:
        """Check mode: connect, TLS, login, MAIL FROM + RCPT TO, RSET; nothing sent (and nothing to prune)."""
        del new_name
        self.probe_write()
        return []


TARGET = EmailTarget
