# SPDX-License-Identifier: GPL-3.0-or-later
"""The `email` target and the engine's SMTP sender against a real SMTP server
(aiosmtpd, tests/harness/smtp.py) in plain, STARTTLS and implicit-TLS modes."""

from __future__ import annotations

import binascii
import email
import email.policy
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap

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


def same_boundaries(data: bytes) -> bytes:
    """The MIME boundaries (random) replaced by B0, B1... in order of appearance."""
    for index, boundary in enumerate(re.findall(rb'boundary="([^"]+)"', data)):
        data = data.replace(boundary, b"B%d" % index)
    return data


def in_memory_bytes(args: dict) -> bytes:
    """The message as the email package makes it with the archive in memory."""
    return same_boundaries(mailer.to_bytes(mailer.build_message(**args)))


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
    # aiosmtpd keeps the DATA up to the "." line, dot-stuffing undone: the message itself.
    assert len(got.raw) == expected


def test_default_sender_is_sar_backup_at_fqdn(tmp_path, servers):
    server = servers("plain")
    path, sha = make_archive(tmp_path, 1000)
    target = make_target(tmp_path, server.settings(**{"from": None}))
    target.deliver(path, NAME, 1000, sha)
    [got] = server.messages
    assert got.mail_from == "sar-backup@%s" % socket.getfqdn()
    assert got.message["From"] == got.mail_from


# -- streaming: the archive is encoded while it is sent --------------------------------

@pytest.mark.parametrize("size", [0, 1, 2, 57, 58, 1001, 57 * mailer.B64_BLOCK_LINES, 57 * mailer.B64_BLOCK_LINES * 2 + 1])
def test_composed_message_is_what_the_email_package_makes(tmp_path, size):
    """Same bytes (boundaries aside) as the in-memory message, for sizes around the
    base64 line (57 bytes) and the encoder's block; dots at line starts are stuffed."""
    path, _sha = make_archive(tmp_path, size)
    args = {"sender": "backup@sar.test", "to": list(TO), "subject": "archive " * 12, "text": ".\n.hidden\nend\n",
            "html": "<p>x</p>\n.dot\n", "attachments": [(NAME, path, "application/octet-stream"), ("copy.bin", path, "text/plain")],
            "message_id": "<fixed.1@sar.test>", "date": FIXED_DATE}
    message = mailer.compose(**args)
    streamed = b"".join(message.chunks())
    assert same_boundaries(streamed) == in_memory_bytes(args)
    assert message.size == len(streamed) == mailer.message_size(**args)
    assert message.recipients == TO
    stuffed = b"".join(message.chunks(stuffed=True))
    assert re.sub(rb"(?m)^\.\.", b".", stuffed) == streamed
    assert b"\r\n.\r\n" not in stuffed and b"\r\n..\r\n" in stuffed and b"\r\n..hidden\r\n" in stuffed
    assert all(len(chunk) <= 400_000 for chunk in message.chunks())  # bounded pieces, never the whole file


@pytest.mark.parametrize("mode", ["plain", "starttls", "tls"])
def test_streamed_message_arrives_as_the_email_package_would_make_it(tmp_path, servers, mode):
    server = servers(mode, username=USER, password=PASSWORD)
    size = 300_001
    path, sha = make_archive(tmp_path, size)
    target = fix_headers(make_target(tmp_path, server.settings()))
    target.deliver(path, NAME, size, sha)
    [got] = server.messages
    args = target.message_args(path, NAME, size, sha)
    assert same_boundaries(got.raw) == in_memory_bytes(args)  # headers, text and attachment as before
    msg = got.message
    assert msg["From"] == "backup@sar.test"
    assert msg["To"] == ", ".join(TO)
    assert msg["Subject"] == "[sar-backup] %s on %s: %s" % (JOB, HOST, NAME)
    assert msg["Message-ID"] == "<fixed.1@sar.test>"
    assert msg["Date"] == FIXED_DATE
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == target.body(NAME, size, sha)
    [(filename, payload, ctype)] = got.attachments()
    assert (filename, ctype) == (NAME, "application/octet-stream")
    assert hashlib.sha256(payload).hexdigest() == sha


@pytest.mark.parametrize("size", [0, 1, 57, 58, 1000, 300_001])
def test_size_computed_is_the_data_received(tmp_path, servers, size):
    server = servers("plain")
    path, sha = make_archive(tmp_path, size)
    target = fix_headers(make_target(tmp_path, server.settings()))
    expected = mailer.message_size(**target.message_args(path, NAME, size, sha))
    target.deliver(path, NAME, size, sha)
    [got] = server.messages
    assert len(got.raw) == expected
    [(_filename, payload, _ctype)] = got.attachments()
    assert len(payload) == size and hashlib.sha256(payload).hexdigest() == sha


@pytest.mark.parametrize("path_kind", ["streamed", "in memory"])
def test_lines_starting_with_a_dot_arrive_unchanged(tmp_path, servers, path_kind):
    """A "." alone on a line would end the DATA early and ".x" would lose its dot
    without dot-stuffing; both sending paths stuff."""
    server = servers("starttls")
    path, sha = make_archive(tmp_path, 5000)
    text = "first\n.\n.hidden\n..two\nlast\n"
    args = {"sender": "reports@sar.test", "to": ["ops@example.com"], "subject": "dots", "text": text,
            "attachments": [("a.bin", path, "application/octet-stream")]}
    if path_kind == "streamed":
        mailer.send_wire(server.settings(), mailer.compose(**args))
    else:
        mailer.send_message(server.settings(), mailer.build_message(**args))
    [got] = server.messages
    assert got.message.get_body(("plain",)).get_content().replace("\r\n", "\n") == text
    assert hashlib.sha256(got.attachments()[0][1]).hexdigest() == sha


def test_message_too_big_after_data_is_mail_failed(tmp_path, servers):
    server = servers("starttls", reject_data="552 5.3.4 Message size exceeds fixed limit")
    path, sha = make_archive(tmp_path, 100_000)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 100_000, sha)
    assert info.value.code == errors.MAIL_FAILED
    assert not info.value.transient
    text = str(info.value)
    assert "refused the message (552 5.3.4 Message size exceeds fixed limit)" in text
    assert "size limit may be below the target's max_size" in text
    assert server.commands.count("DATA") == 1  # final: no retry
    assert server.messages == []


def test_size_over_the_relay_limit_is_refused_at_mail_from(tmp_path, servers):
    """A relay announcing SIZE refuses MAIL FROM with SIZE= over it (RFC 1870): the
    message is too big, not the sender."""
    server = servers("plain", data_size_limit=50_000)
    path, sha = make_archive(tmp_path, 100_000)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, 100_000, sha)
    assert info.value.code == errors.MAIL_FAILED
    assert not info.value.transient
    text = str(info.value)
    assert "refused the message (552 " in text and "size limit may be below the target's max_size" in text
    assert "smtp.from" not in text
    assert "DATA" not in server.commands and server.messages == []


def test_connection_dropped_during_data_is_retried_then_connect_failed(tmp_path, servers):
    server = servers("plain", username=USER, password=PASSWORD)
    server.handler.drop_data_after = 64 * 1024
    size = 2_000_000  # well past what the relay reads before it drops
    path, sha = make_archive(tmp_path, size)
    target = make_target(tmp_path, server.settings())
    with pytest.raises(TargetError) as info:
        target.deliver(path, NAME, size, sha)
    assert info.value.code == errors.CONNECT_FAILED
    assert info.value.transient
    assert "closed the connection during sending" in str(info.value)
    assert_no_secret(info.value)
    assert server.commands.count("DATA dropped") == target.RETRY_ATTEMPTS
    assert server.messages == []


def test_retry_after_a_drop_sends_the_whole_archive_again(tmp_path, servers):
    server = servers("tls")
    server.handler.drop_data_after = 64 * 1024
    size = 1_000_003
    path, sha = make_archive(tmp_path, size)
    target = fix_headers(make_target(tmp_path, server.settings()))
    logs = []

    def accept_after_first(line):
        logs.append(line)
        server.handler.drop_data_after = 0

    target.ctx.log = accept_after_first
    target.deliver(path, NAME, size, sha)
    assert server.commands.count("DATA dropped") == 1 and server.commands.count("DATA") == 1
    assert any("retry" in line for line in logs)
    [got] = server.messages
    assert len(got.raw) == mailer.message_size(**target.message_args(path, NAME, size, sha))
    assert hashlib.sha256(got.attachments()[0][1]).hexdigest() == sha


MEMORY_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from ansible_collections.sar.backup.plugins.module_utils import mailer
    from ansible_collections.sar.backup.plugins.module_utils.job import validate_target
    from ansible_collections.sar.backup.plugins.module_utils.targets import target_class
    from ansible_collections.sar.backup.plugins.module_utils.targets.base import TargetContext

    work, smtp, name, size, sha = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]

    def peak():
        # VmHWM, the peak RSS of this program: ru_maxrss would also count the
        # parent's memory (Linux keeps it across the fork and exec that start us).
        with open("/proc/self/status") as status:
            return [int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")][0]

    def make_target():
        options = validate_target({"type": "email", "to": ["ops@example.com"], "max_size": "1GB"}, 0)
        target = target_class("email")(options, TargetContext(job="nightly", host="pbx1", config_dir=work,
                                                                settings={"smtp": smtp}))
        original = target.message_args
        target.message_args = lambda *args: dict(original(*args), message_id="<big.1@sar.test>",
                                                 date="Fri, 02 Jan 2026 03:04:05 -0000")
        return target

    # Warm up: the whole path once with a small archive, so that imports, TLS and
    # buffers count as baseline.
    small = os.path.join(work, "small.sar")
    with open(small, "wb") as handle:
        handle.write(os.urandom(300000))
    make_target().deliver(small, "small.sar", 300000, "0" * 64)
    base = peak()
    target = make_target()
    big = os.path.join(work, name)
    target.deliver(big, name, size, sha)
    print(base, peak(), mailer.message_size(**target.message_args(big, name, size, sha)))
""")


def _child_env() -> dict:
    """The child imports the collection as this process does."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


def _attachment_sha256(raw: bytes, filename: str) -> str:
    """sha256 of the decoded attachment, decoded a block of whole 78-byte lines at a time."""
    head = raw.index(('filename="%s"' % filename).encode("ascii"))
    start = raw.index(b"\r\n\r\n", head) + 4
    end = raw.index(b"\r\n--", start) + 2  # base64 has no "-": the closing boundary
    digest = hashlib.sha256()
    view = memoryview(raw)
    step = 78 * 4096
    for offset in range(start, end, step):
        digest.update(binascii.a2b_base64(view[offset:min(offset + step, end)]))
    return digest.hexdigest()


def test_big_archive_is_sent_with_bounded_memory(tmp_path, servers):
    """200 MB through the target with max_size 1 GB: the sender, a fresh child
    process, grows its peak RSS (VmHWM) by less than 60 MiB over its baseline after
    a small warm-up send (the in-memory message cost ~1 GiB here). The relay
    (aiosmtpd, in this process) keeps the message; that is the server, not us."""
    server = servers("starttls", data_size_limit=0)
    server.handler.parse = False
    size = 200 * 1000 * 1000
    path = tmp_path / NAME
    digest = hashlib.sha256()
    with open(str(path), "wb") as handle:
        for _block_index in range(size // (1000 * 1000)):
            block = os.urandom(1000 * 1000)
            digest.update(block)
            handle.write(block)
    sha = digest.hexdigest()

    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path), json.dumps(server.settings()), NAME,
                          str(size), sha], capture_output=True, text=True, check=False, env=_child_env())
    assert res.returncode == 0, res.stderr
    base, peak, expected = (int(x) for x in res.stdout.split())
    assert peak - base < 60 * 1024 * 1024, "sending grew peak RSS by %d MiB" % ((peak - base) >> 20)

    [small, big] = server.messages
    assert b"small.sar" in small.raw
    assert len(big.raw) == expected > size * 4 // 3
    head = email.message_from_bytes(big.raw[:big.raw.index(b"\r\n\r\n") + 4], policy=email.policy.default)
    assert head["Subject"] == "[sar-backup] %s on %s: %s" % (JOB, HOST, NAME)
    assert head["Message-ID"] == "<big.1@sar.test>"
    assert _attachment_sha256(big.raw, NAME) == sha
    server.messages.clear()  # ~270 MB


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
    assert len(got.raw) == exact


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
