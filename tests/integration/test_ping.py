# SPDX-License-Identifier: GPL-3.0-or-later
"""Push monitoring (job option ping, plugins/module_utils/ping.py) against a local HTTP server in the
healthchecks.io style: /start, success, /fail, the body a summary; the URL is a secret everywhere."""

from __future__ import annotations

import http.server
import json
import os
import threading

import pytest

from harness.playbook import run_playbook

from ansible_collections.sar.backup.plugins.module_utils import cli
from ansible_collections.sar.backup.plugins.module_utils.job import mask, validate_job
from ansible_collections.sar.backup.plugins.module_utils.errors import ValidationError
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings

TOKEN = "0b0a7c1e-ping-token-5f3d9a"


class Pings(http.server.BaseHTTPRequestHandler):
    calls: list = []
    answer = 200

    def do_POST(self):  # noqa: N802  (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        Pings.calls.append((self.path, body))
        self.send_response(Pings.answer)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Pings.calls = []
    Pings.answer = 200
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pings)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d/ping/%s" % (httpd.server_address[1], TOKEN)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def host(tmp_path, appliance):
    store = Store(str(tmp_path / "etc"))
    store.write_settings(validate_settings({
        "profile": appliance.profile, "archive_dir": str(tmp_path / "archives"),
        "staging_dir": str(tmp_path / "staging"), "status_dir": str(tmp_path / "status"),
        "lock_path": str(tmp_path / "lock" / "sar-backup.lock")}))
    return store


def everything_written(tmp_path) -> str:
    text = []
    for top, _dirs, files in os.walk(str(tmp_path)):
        for name in files:
            if name.endswith(".json") and "jobs" in top:
                continue  # the job file holds the URL (0600), as it holds every secret
            try:
                with open(os.path.join(top, name), "rb") as handle:
                    text.append(handle.read().decode("utf-8", "replace"))
            except OSError:
                pass
    return "\n".join(text)


def test_start_success_and_failure_pings(host, server, tmp_path, capsys):
    host.write_job(validate_job({"name": "nightly", "data": ["announcements"], "targets": [{"type": "local"}],
                                 "ping": {"url": server}}))
    assert cli.main(["--config-dir", host.config_dir, "run", "nightly"]) == 0
    assert [p for p, _b in Pings.calls] == ["/ping/%s/start" % TOKEN, "/ping/%s" % TOKEN]
    assert "nightly" in Pings.calls[1][1] and "successful" in Pings.calls[1][1] and ".sar" in Pings.calls[1][1]
    # A failing run pings /fail with the reason.
    Pings.calls = []
    host.write_job(validate_job({"name": "nightly", "data": ["announcements"],
                                 "targets": [{"type": "local", "path": str(tmp_path / "not-mounted")}],
                                 "ping": {"url": server, "states": ["failure"]}}))
    assert cli.main(["--config-dir", host.config_dir, "run", "nightly"]) == 1
    assert [p for p, _b in Pings.calls] == ["/ping/%s/fail" % TOKEN]
    assert "mountfail" in Pings.calls[0][1]
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err and TOKEN not in everything_written(tmp_path)
    assert oct(os.stat(host.job_path("nightly")).st_mode & 0o777) == "0o600"


def test_a_failing_ping_is_a_warning_not_a_failure(host, server, tmp_path):
    Pings.answer = 500
    host.write_job(validate_job({"name": "nightly", "data": ["announcements"], "targets": [{"type": "local"}],
                                 "ping": {"url": server, "timeout": "2s"}}))
    assert cli.main(["--config-dir", host.config_dir, "run", "nightly"]) == 0
    status = json.loads((tmp_path / "status" / "nightly.json").read_text())
    assert status["code"] == "successful"
    assert "the start ping was answered with HTTP 500" in status["warnings"]
    assert "the success ping was answered with HTTP 500" in status["warnings"]
    # A server that is gone: a warning without the URL.
    host.write_job(validate_job({"name": "nightly", "data": ["announcements"], "targets": [{"type": "local"}],
                                 "ping": {"url": "http://127.0.0.1:1/ping/" + TOKEN, "states": ["success"]}}))
    assert cli.main(["--config-dir", host.config_dir, "run", "nightly"]) == 0
    status = json.loads((tmp_path / "status" / "nightly.json").read_text())
    assert any(w.startswith("the success ping failed") for w in status["warnings"])
    assert TOKEN not in json.dumps(status)


def test_ping_url_is_a_secret_in_module_output_and_diff(host, server, tmp_path):
    result = run_playbook([{"name": "Job", "sar.backup.sar_backup_job": {
        "config_dir": host.config_dir, "name": "nightly", "data": ["announcements"], "targets": [{"type": "local"}],
        "ping": {"url": server}}}], str(tmp_path), diff=True, verbosity=3)
    assert result.rc == 0, result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert mask({"ping": {"url": server}})["ping"]["url"] != server


@pytest.mark.parametrize("ping, field", [
    ({"url": "ftp://example.com/x"}, "ping.url"),
    ({"url": "not a url"}, "ping.url"),
    ({}, None),
    ({"url": "https://hc-ping.com/x", "states": ["finish"]}, "ping.states[0]"),
    ({"url": "https://hc-ping.com/x", "timeout": "1h"}, "ping.timeout"),
    ({"url": "https://hc-ping.com/x", "extra": 1}, "ping.extra"),
])
def test_bad_ping_options_are_refused_without_repeating_the_url(ping, field):
    job = {"name": "j", "targets": [{"type": "local"}], "ping": ping}
    if field is None:
        assert validate_job(job)["ping"] is None
        return
    with pytest.raises(ValidationError) as info:
        validate_job(job)
    assert info.value.field == field and "hc-ping.com/x" not in str(info.value)
