# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Push monitoring per job (job option `ping`), the way healthchecks.io, its self-hosted
clones and borgmatic's hook do it: a run pings `<url>/start` when it begins, `<url>` when it
succeeded and `<url>/fail` when it failed, each an HTTP POST whose body is a short plain-text
summary (result code, archive, per-target codes; never a secret).

    ping:
      url: https://hc-ping.com/0b0a...           # secret: the URL is the credential
      states: [start, success, failure]          # default: all three
      timeout: 10s

The URL is treated as a secret (it is the check's credential): masked in module output,
diffs and status files, never logged. A ping that fails is a warning, never a failed run."""

from __future__ import annotations

import urllib.parse

from .errors import ValidationError
from .fsutil import parse_duration

STATES = ("start", "success", "failure")
SUFFIX = {"start": "/start", "success": "", "failure": "/fail"}
DEFAULT_TIMEOUT = 10


def validate(value, field: str = "ping"):
    if value is None or value == {} or value == "":
        return None
    if not isinstance(value, dict):
        raise ValidationError(field, "must be a dictionary with url (and states, timeout)")
    for key in value:
        if key not in ("url", "states", "timeout"):
            raise ValidationError("%s.%s" % (field, key), "unknown option (url, states, timeout)")
    url = value.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValidationError("%s.url" % field, "is required: the check's ping URL (http or https)")
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc or any(c.isspace() for c in url.strip()):
        # The message never repeats the URL: it is a credential.
        raise ValidationError("%s.url" % field, "must be an http:// or https:// URL with a host")
    states = value.get("states")
    if states is None:
        states = list(STATES)
    if not isinstance(states, list) or not states:
        raise ValidationError("%s.states" % field, "must be a non-empty list of %s" % ", ".join(STATES))
    for i, state in enumerate(states):
        if state not in STATES:
            raise ValidationError("%s.states[%d]" % (field, i), "must be one of %s, got %r" % (", ".join(STATES), state))
    timeout = DEFAULT_TIMEOUT if value.get("timeout") is None else parse_duration(value["timeout"], "%s.timeout" % field)
    if not 1 <= timeout <= 300:
        raise ValidationError("%s.timeout" % field, "must be between 1 second and 5 minutes")
    return {"url": url.strip().rstrip("/"), "states": [s for s in STATES if s in states], "timeout": timeout}


def summary(result: dict | None) -> str:
    if not result:
        return ""
    archive = result.get("archive") or {}
    lines = ["job %s on %s: %s" % (result.get("job"), result.get("host"), result.get("code")),
             "archive %s (%s bytes)" % (archive.get("name") or "-", archive.get("size") or 0)]
    for target in result.get("targets") or []:
        lines.append("target %s %s %s: %s" % (target.get("index"), target.get("type"), target.get("location") or "",
                                              target.get("code")))
    if result.get("error"):
        lines.append("error: %s" % result["error"])
    return "\n".join(lines)[:10000] + "\n"


def send(ping: dict | None, state: str, result: dict | None = None) -> str | None:
    """Ping for `state`; None when done (or not wanted), else a warning (without the URL)."""
    if not ping or state not in ping["states"]:
        return None
    # Local: every run imports this module (job validation), few ping; http.client alone pulls in the email package.
    import http.client
    import ssl
    body = summary(result).encode("utf-8")
    parts = urllib.parse.urlsplit(ping["url"] + SUFFIX[state])
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=ping["timeout"],
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=ping["timeout"])
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain; charset=utf-8",
                                                       "User-Agent": "sar-backup"})
        answer = conn.getresponse()
        answer.read(4096)
        if not 200 <= answer.status < 300:
            return "the %s ping was answered with HTTP %d" % (state, answer.status)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # Never str() of something that may quote the URL (the check's credential).
        return "the %s ping failed: %s" % (state, getattr(exc, "strerror", None) or type(exc).__name__)
    finally:
        conn.close()
    return None
