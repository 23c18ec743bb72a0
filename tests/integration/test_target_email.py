# SPDX-License-Identifier: GPL-3.0-or-later
"""The `email` target and the engine's SMTP sender against a real SMTP server
(aiosmtpd, tests/harness/smtp.py) in plain, STARTTLS and implicit-TLS modes."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from harness import smtp as smtp_harness

from ansible_collections.sar.backup.plugins.module_utils import errors, mailer
from ansible_collections.sar.backup.plugins.module_utils.errors import TargetError
from ansible_collections.sar.backup.plugins.module_utils.job import validate_target
from ansible_collections.sar.backup.plugins.module_utils.targets import target_class
from ansible_collections.sar.backup.plugins.module_utils.targets.base import TargetContext

USER = "backup-user"
PASSWORD = "S3cret-Pa55word!"
JOB = "nightly"
HOST = "pbx1"
NAME = "nightly_pbx1_20260102T030405Z.sar"
TO = ["ops@example.com", "archive@example.com"]
FIXED_DATE = "Fri, 02 Jan 2026 03:04:05 -0000"


@pytest.fixture
def servers(tmp_path):
    """Factory: servers(mode, **kwargs) -> a started SmtpServer, stopped at teardown."""
    started = []

    def start(mode="plain", **kwargs):
        folder = tmp_path / ("srv%d" % len(started))
        folder.mkdir()
        server = smtp_harness.SmtpServer(str(folder), mode=mode, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def make_archive(tmp_path, size: int, name: str = NAME) -> tuple:
    path = tmp_path / name
    data = os.urandom(size)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


def make_target(tmp_path, smtp: dict, **options):
    raw = {"type": "email", "to": list(TO)}
    raw.update(options)
    normalized = validate_target(raw, 0)
    ctx = TargetContext(job=JOB, host=HOST, config_dir=str(tmp_path), settings={"smtp": smtp})
    target = target_class("email")(normalized, ctx)
    target.RETRY_BACKOFF = 0  # retries stay, the waiting goes
    return target


def fix_headers(target):
    """Message-ID and Date fixed, so the message size is known in advance."""
    original = target.message_args

    def fixed(*args):
        out = original(*args)
        out.update(message_id="<fixed.1@sar.test>", date=FIXED_DATE)
        return out

    target.message_args = fixed
    return target


def assert_no_secret(exc: BaseException) -> None:
    assert PASSWORD not in str(exc)
    assert PASSWORD not in repr(exc.args)


# -- delivery ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_archive_arrives_byte_identical(tmp_path, servers, mode):
    server = servers(mode, username=USER, password=PASSWORD)
    path, sha = make_archive(tmp_path, 300_001)
    target = make_target(tmp_path, server.settings())
    assert target.location() == ",".join(TO)

    outcome = target.deliver(path, NAME, 300_001, sha)

    assert outcome == {"bytes": 300_001, "pruned": []}
    assert "AUTH ok" in server.commands
    assert len(server.messages) == 1
    got = server.messages[0]
    assert got.mail_from == "backup@sar.test"
    assert sorted(got.rcpt_tos) == sorted(TO)
    assert got.message["Subject"] == "[sar-backup] %s on %s: %s" % (JOB, HOST, NAME)
    [(filename, payload, ctype)] = got.attachments()
    assert filename == NAME
    assert ctype == "application/octet-stream"
    assert hashlib.sha256(payload).hexdigest() == sha
    body = got.message.get_body(("plain",)).get_content()
    assert sha in body and NAME in body and "300001 bytes" in body
    assert PASSWORD.encode() not in got.raw
    # Nothing to list or prune on a mailbox.
    assert target.listdir() == [] and target.archives() == []


def test_size_computed_is_size_sent(tmp_path, servers):
    server = servers("starttls")
    path, sha = make_archive(tmp_path, 123_457)
    target = fix_headers(make_target(tmp_path, server.settings()))
    expected = mailer.message_size(**target.message_args(path, NAME, 123_457, sha))
    target.deliver(path, NAME, 123_457, sha)
    [got] = server.messages
    # aiosmtpd hands over the DATA without the final CRLF of the "CRLF.CRLF" end.
    assert len(got.raw) in (expected, expected - 2)


def test_default_sender_is_sar_backup_at_fqdn(tmp_path, servers):
    server = servers("plain")
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings(**{"from": None}))
    target.deliver(path, NAME, 1000, sha)
    [got] = server.messages
    assert got.mail_from == "sar-backup@%s" % socket.getfqdn()
    assert got.message["From"] == got.mail_from


# -- TLS verification -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_untrusted_certificate_is_connect_failed(tmp_path, servers, mode):
    server = servers(mode, username=USER, password=PASSWORD)
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings(cafile=None))
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.CONNECT_FAILED
    assert "smtp.cafile" in str(info.value)
    assert_no_secret(info.value)
    assert server.messages == []
    assert not any(c.startswith("AUTH") or c == "MAIL" for c in server.commands)


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_certificate_for_another_host_is_connect_failed(tmp_path, servers, mode):
    # Trusted CA (cafile is the cert itself) but the name does not match 127.0.0.1.
    server = servers(mode, san="DNS:smtp.other.example")
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.CONNECT_FAILED
    assert "certificate" in str(info.value)
    assert server.messages == []


def test_tls_client_against_plain_server_is_connect_failed(tmp_path, servers):
    server = servers("plain")
    target = make_target(tmp_path, server.settings(security="tls"))
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.CONNECT_FAILED
    assert "TLS" in str(info.value)


def test_starttls_required_but_not_offered_is_connect_failed(tmp_path, servers):
    server = servers("plain")
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings(security="starttls"))
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.CONNECT_FAILED
    assert "STARTTLS" in str(info.value)
    assert server.messages == []


# -- refusals ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "starttls"])
def test_wrong_password_is_mail_failed(tmp_path, servers, mode):
    server = servers(mode, username=USER, password="the-right-one")
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings(password=PASSWORD))
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MAIL_FAILED
    assert USER in str(info.value) and "smtp.password" in str(info.value)
    assert_no_secret(info.value)
    assert "AUTH failed" in server.commands
    assert "MAIL" not in server.commands
    assert server.messages == []


def test_rejected_recipient_is_mail_failed(tmp_path, servers):
    server = servers("starttls", reject_rcpt=True, username=USER, password=PASSWORD)
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MAIL_FAILED
    assert TO[0] in str(info.value) and "550" in str(info.value)
    assert not info.value.transient
    assert_no_secret(info.value)
    assert server.messages == []


def test_one_recipient_rejected_still_fails_the_target(tmp_path, servers):
    server = servers("plain", reject_rcpt={TO[1]})
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MAIL_FAILED
    assert TO[1] in str(info.value) and TO[0] not in str(info.value)
    # The relay took it for the other address; the target still reports the refusal.
    assert [m.rcpt_tos for m in server.messages] == [[TO[0]]]


def test_rejected_message_is_mail_failed(tmp_path, servers):
    server = servers("tls", reject_data=True)
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MAIL_FAILED
    assert "refused the message" in str(info.value)
    assert server.commands.count("DATA") == 1  # a 5xx is final: no retry


def test_temporary_refusal_is_retried(tmp_path, servers):
    server = servers("plain", reject_data="451 4.3.0 try again later")
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 1000, sha)
    assert info.value.code == errors.MAIL_FAILED
    assert info.value.transient
    assert server.commands.count("DATA") == target.RETRY_ATTEMPTS


def test_temporary_refusal_then_accepted(tmp_path, servers):
    server = servers("plain", reject_data="451 4.3.0 try again later")
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings())
    logs = []

    def accept_after_first(msg):
        logs.append(msg)
        server.handler.reject_data = False

    target.ctx.log = accept_after_first
    target.deliver(path, NAME, 1000, sha)
    assert server.commands.count("DATA") == 2
    assert len(server.messages) == 1
    assert any("retry" in line for line in logs)


# -- max_size -----------------------------------------------------------------------------

def test_archive_over_max_size_is_mailtobig_before_connecting(tmp_path, servers):
    server = servers("starttls", username=USER, password=PASSWORD)
    size = 200_000
    path, sha = make_archive(tmp_path, size)
    target = make_target(tmp_path, server.settings(), max_size="200KB")  # archive fits, encoding does not
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, size, sha)
    assert info.value.code == errors.MAIL_TOO_BIG
    text = str(info.value)
    assert "after encoding" in text and "max_size 200 KB (200000 bytes)" in text
    assert_no_secret(info.value)
    assert server.commands == []  # not even a connection that got to MAIL FROM
    assert server.messages == []


def test_mailtobig_even_without_a_reachable_relay(tmp_path):
    path, sha = make_archive(tmp_path, 50_000)
    target = make_target(tmp_path, {"host": None}, max_size=1000)
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 50_000, sha)
    assert info.value.code == errors.MAIL_TOO_BIG


def test_one_mb_and_one_mib_are_different_limits(tmp_path, servers):
    server = servers("plain")
    # ~748 kB of archive is ~1.024 MB encoded: over 1 MB (1,000,000), under 1 MiB (1,048,576).
    size = 748_000
    path, sha = make_archive(tmp_path, size)
    probe = fix_headers(make_target(tmp_path, server.settings()))
    encoded = mailer.message_size(**probe.message_args(path, NAME, size, sha))
    assert 1_000_000 < encoded < 1_048_576

    with pytest.raises(TargetError) as info:
        make_target(tmp_path, server.settings(), max_size="1MB").deliver(path, NAME, size, sha)
    assert info.value.code == errors.MAIL_TOO_BIG
    assert server.messages == []

    make_target(tmp_path, server.settings(), max_size="1MiB").deliver(path, NAME, size, sha)
    [got] = server.messages
    assert hashlib.sha256(got.attachments()[0][1]).hexdigest() == sha


def test_max_size_boundary_is_the_encoded_message_size(tmp_path, servers):
    server = servers("plain")
    size = 10_000
    path, sha = make_archive(tmp_path, size)
    exact = mailer.message_size(**fix_headers(make_target(tmp_path, server.settings())).message_args(path, NAME, size, sha))
    assert exact > size * 4 // 3  # the base64 growth is counted, not the raw size

    with pytest.raises(TargetError) as info:
        fix_headers(make_target(tmp_path, server.settings(), max_size=exact - 1)).deliver(path, NAME, size, sha)
    assert info.value.code == errors.MAIL_TOO_BIG
    assert "(%d bytes with the message)" % exact in str(info.value)
    assert server.messages == []

    fix_headers(make_target(tmp_path, server.settings(), max_size=exact)).deliver(path, NAME, size, sha)
    [got] = server.messages
    assert len(got.raw) in (exact, exact - 2)


# -- check mode ------------------------------------------------------------------------------

def test_check_sends_nothing(tmp_path, servers):
    server = servers("starttls", username=USER, password=PASSWORD)
    target = make_target(tmp_path, server.settings())
    target.check()
    assert server.commands == ["AUTH ok", "MAIL", "RCPT", "RCPT", "RSET"]
    assert server.messages == []


def test_check_reports_refused_recipient(tmp_path, servers):
    server = servers("tls", reject_rcpt={TO[0]})
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.MAIL_FAILED
    assert TO[0] in str(info.value)
    assert "DATA" not in server.commands and server.messages == []


def test_check_reports_wrong_password(tmp_path, servers):
    server = servers("tls", username=USER, password="the-right-one")
    target = make_target(tmp_path, server.settings(password=PASSWORD))
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.MAIL_FAILED
    assert_no_secret(info.value)


# -- no relay / unreachable relay ---------------------------------------------------------------

def test_no_relay_configured(tmp_path):
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, {"host": None, "password": PASSWORD})
    for action in (lambda: target.deliver(path, NAME, 1000, sha), target.check):
        with pytest.raises(TargetError) as info:
            action()
        assert info.value.code == errors.CONNECT_FAILED
        assert str(info.value) == "no SMTP relay configured: set smtp.host with sar_backup_settings"


def test_connection_refused(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nobody listens on `port` now.
    target = make_target(tmp_path, {"host": "127.0.0.1", "port": port, "security": "none",
                                    "username": USER, "password": PASSWORD, "timeout": 5})
    with pytest.raises(TargetError) as info:
        target.check()
    assert info.value.code == errors.CONNECT_FAILED
    assert "refused" in str(info.value) and str(port) in str(info.value)
    assert_no_secret(info.value)


def test_silent_server_times_out(tmp_path):
    with socket.socket() as sock:  # accepts connections (backlog) but never greets
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        port = sock.getsockname()[1]
        target = make_target(tmp_path, {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 1})
        with pytest.raises(TargetError) as info:
            target.check()
    assert info.value.code == errors.CONNECT_FAILED
    assert "timed out" in str(info.value)
    assert info.value.transient


# -- mailer used directly (the run reports will) --------------------------------------------------

def test_send_message_with_html_and_attachment(tmp_path, servers):
    server = servers("starttls", username=USER, password=PASSWORD)
    path, sha = make_archive(tmp_path, 5000, name="log.txt")
    msg = mailer.build_message("reports@sar.test", ["ops@example.com"], "run failed", "plain text",
                               html="<p>html</p>", attachments=[("log.txt", path, "text/plain")])
    mailer.send_message(server.settings(), msg)
    [got] = server.messages
    assert got.mail_from == "backup@sar.test"  # the envelope sender is smtp.from
    assert got.message["From"] == "reports@sar.test"
    assert got.message.get_body(("html",)).get_content().strip() == "<p>html</p>"
    [(filename, payload, ctype)] = got.attachments()
    assert (filename, ctype) == ("log.txt", "text/plain")
    assert hashlib.sha256(payload).hexdigest() == sha
