# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import pytest

from ansible_collections.sar.backup.plugins.module_utils import job as jobmod
from ansible_collections.sar.backup.plugins.module_utils.errors import ValidationError
from ansible_collections.sar.backup.plugins.module_utils.fsutil import parse_duration, parse_size


def make(**over):
    raw = {"name": "nightly", "targets": [{"type": "local"}]}
    raw.update(over)
    return raw


def test_defaults_filled_in():
    job = jobmod.validate_job(make())
    assert job["interval"] == "manual" and job["start"] is None
    assert job["data"] == ["core"] and job["compression"] == "zstd"
    assert job["defer"] == 3600 and job["retries"] == 3 and job["report_on"] == "failure"
    assert job["targets"] == [{"type": "local", "keep": 7, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0,
                              "keep_yearly": 0, "verify": "size", "path": None}]


def test_type_defaults_per_target():
    job = jobmod.validate_job(make(targets=[
        {"type": "sftp", "server": "h", "username": "u", "password": "p"},
        {"type": "smb", "server": "h", "share": "\\share\\sub\\", "username": "D\\u", "password": "p"},
        {"type": "dropbox", "access_token": "t"},
        {"type": "email", "to": "a@example.com, b@example.com", "max_size": "1MiB"},
    ]))
    sftp, smb, dbx, mail = job["targets"]
    assert sftp["port"] == 22 and sftp["path"] == "." and sftp["host_key_policy"] == "strict"
    assert smb["port"] == 445 and smb["share"] == "share/sub" and smb["encrypt"] is True and smb["security"] == "negotiate"
    assert dbx["path"] == "/"
    assert mail["to"] == ["a@example.com", "b@example.com"] and mail["max_size"] == 1048576


def test_normalization_is_idempotent():
    job = jobmod.validate_job(make(interval="monthly", start="2026-1-31 2:05", data=["announcements", "core", "core"]))
    assert job["start"] == "2026-01-31 02:05"
    assert job["data"] == ["core", "announcements"]
    assert jobmod.validate_job(job) == job


@pytest.mark.parametrize("over, field", [
    ({"name": "a b"}, "name"),
    ({"name": ""}, "name"),
    ({"interval": "weekly"}, "start"),
    ({"interval": "daily", "start": "2026-02-30 01:00"}, "start"),
    ({"targets": [{"type": "local", "keep": "x"}]}, "targets[0].keep"),
    ({"targets": [{"type": "local"}, {"type": "sftp", "server": "h", "username": "u", "password": "p", "port": 0}]},
     "targets[1].port"),
    ({"targets": [{"type": "usb", "share": "x"}]}, "targets[0].share"),
    ({"targets": [{"type": "usb", "colour": "x"}]}, "targets[0].colour"),
    ({"targets": [{"type": "email", "to": ["nobody"]}]}, "targets[0].to[0]"),
    ({"encryption": {"passphrase": "long enough", "recipients": ["age1x"]}}, "encryption.passphrase"),
    ({"defer": -5}, "defer"),
    ({"unknown_option": 1}, "unknown_option"),
])
def test_errors_name_the_field(over, field):
    with pytest.raises(ValidationError) as info:
        jobmod.validate_job(make(**over))
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_mask_and_secret_values():
    job = jobmod.validate_job(make(encryption={"passphrase": "p4ssphrase!"}, targets=[
        {"type": "sftp", "server": "h", "username": "u", "password": "pw-1"},
        {"type": "dropbox", "app_key": "k", "refresh_token": "rt-1", "app_secret": "as-1"}]))
    masked = jobmod.mask(job)
    text = repr(masked)
    for secret in ("p4ssphrase!", "pw-1", "rt-1", "as-1"):
        assert secret not in text
    assert masked["targets"][1]["app_key"] == "k"  # not a secret
    assert sorted(jobmod.secret_values(job)) == sorted(["p4ssphrase!", "pw-1", "rt-1", "as-1"])


def test_diff_view_shows_secrets_only_as_changed():
    old = jobmod.validate_job(make(targets=[{"type": "sftp", "server": "h", "username": "u", "password": "pw-first-1"}]))
    new = jobmod.validate_job(make(targets=[{"type": "sftp", "server": "h", "username": "u", "password": "pw-second-2"}]))
    before, after = jobmod.diff_view(old, new)
    assert before["targets"][0]["password"] == "<secret>"
    assert after["targets"][0]["password"] == "<secret changed>"
    _b, same = jobmod.diff_view(new, new)
    assert same["targets"][0]["password"] == "<secret unchanged>"
    assert "pw-first-1" not in repr((before, after)) and "pw-second-2" not in repr((before, after))


@pytest.mark.parametrize("text, expected", [
    (0, 0), (20, 20), ("20MB", 20_000_000), ("20 MiB", 20 * 1024 * 1024), ("1GB", 10 ** 9), ("1GiB", 2 ** 30),
    ("512", 512), ("1.5KB", 1500),
])
def test_parse_size(text, expected):
    assert parse_size(text, "max_size") == expected


@pytest.mark.parametrize("text", ["", "MB", "-1", "1 parsec", True, -3])
def test_parse_size_rejects(text):
    with pytest.raises(ValidationError) as info:
        parse_size(text, "max_size")
    assert info.value.field == "max_size"


@pytest.mark.parametrize("text, expected", [(0, 0), (45, 45), ("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400), ("90", 90)])
def test_parse_duration(text, expected):
    assert parse_duration(text, "defer") == expected


@pytest.mark.parametrize("text", ["soon", "1w", "", "-5s", False])
def test_parse_duration_rejects(text):
    with pytest.raises(ValidationError):
        parse_duration(text, "defer")


def test_argument_spec_marks_every_secret_no_log():
    spec = jobmod.argument_spec()
    targets = spec["targets"]["options"]
    for key in jobmod.SECRET_KEYS - {"passphrase", "url"}:
        assert targets[key].get("no_log") is True, key
    assert spec["ping"]["options"]["url"]["no_log"] is True
    assert spec["encryption"]["options"]["passphrase"]["no_log"] is True


@pytest.mark.parametrize("start, words", [
    ("2026-02-30 04:00", "the date 2026-02-30 does not exist"),
    ("2027-2-29 4:00", "the date 2027-02-29 does not exist"),
    ("2026-04-31 01:00", "the date 2026-04-31 does not exist"),
    ("2026-03-01 24:00", "the time 24:00 does not exist"),
    ("2026-03-01 12:60", "the time 12:60 does not exist"),
    ("tomorrow", "must be 'YYYY-MM-DD HH:MM'"),
])
def test_start_that_does_not_exist_says_so(start, words):
    with pytest.raises(ValidationError) as info:
        jobmod.validate_job(make(interval="daily", start=start))
    assert info.value.field == "start" and words in str(info.value)
    jobmod.validate_job(make(interval="daily", start="2028-02-29 04:00"))  # a leap day exists
