# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzzing the job and settings schemas (hypothesis).

Arbitrary JSON-ish input - near-valid definitions with junk mixed in, non-string
keys, non-string target types, nested lists and dictionaries, huge numbers,
NaN - goes through `job.validate_job` and `store.validate_settings`, the way the
modules and `sar-backup` save them (validate, then write through the Store):

- the only exception is ValidationError, and its message starts with the field
  it names (a dotted path);
- a refused save writes nothing (the config directory is byte for byte the same)
  and the caller's input is not modified;
- an accepted definition is a fixed point (validate(validate(x)) == validate(x))
  and survives saving and loading unchanged.

Bounded and reproducible (`derandomize=True`, a few hundred examples each);
SAR_SOAK=1 runs thousands."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import SOAK

from ansible_collections.sar.backup.plugins.module_utils import job as jobmod
from ansible_collections.sar.backup.plugins.module_utils import store as storemod
from ansible_collections.sar.backup.plugins.module_utils.errors import ValidationError

EXAMPLES = 6000 if SOAK else 400
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

INTERESTING = [
    "", " ", "0", "-1", "1h", "5m", "30s", "1d", "20MB", "1GiB", "1.5", "9" * 400, "1e400", "nan", "inf",
    "manual", "hourly", "daily", "weekly", "monthly", "present", "absent", "failure", "always", "never",
    "core", "cdr_voicemail", "announcements", "core,announcements", "zstd", "gzip", "size", "full",
    "local", "smb", "sftp", "dropbox", "usb", "email", "negotiate", "kerberos", "strict", "accept_new",
    "starttls", "tls", "none", "2024-01-01 10:00", "2024-02-30 10:00", "2024-01-01 25:00", "nightly", "a/b",
    "x@example.org", "root@localhost", "not an address", "/var/backups", "relative/path", "/a\0b", "//double",
    "share", "share/sub", "../up", "host.example", "http://host/x", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI x",
    "SHA256:" + "A" * 43, "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----",
    "age1" + "q" * 58, "long-enough-passphrase", "public.cdr*", "ümlaut", "\n", "yes", "no", "true", "off",
]
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2, max_value=70000)
           | st.floats() | st.text(max_size=16) | st.sampled_from(INTERESTING))
keys = (st.text(max_size=10) | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
        | st.sampled_from(INTERESTING))
junk = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(keys, children, max_size=4), max_leaves=10)
plausible = scalars | st.lists(st.sampled_from(INTERESTING), max_size=3) | junk


def _with_junk(required: dict, optional: dict):
    """A dictionary of the known fields (each maybe present) plus a few junk keys now and then."""
    known = st.fixed_dictionaries(required, optional=optional)
    extra = st.dictionaries(keys, junk, max_size=2)
    return st.tuples(known, extra, st.integers(0, 9)).map(lambda t: {**t[0], **t[1]} if t[2] == 0 else t[0])


def _one_wrong(valid):
    """A valid dictionary with one field (known or not) replaced by junk."""
    return st.tuples(valid, st.sampled_from(sorted(jobmod.ALL_TARGET_OPTIONS) + sorted(jobmod.DEFAULTS)) | keys,
                     junk).map(lambda t: {**t[0], t[1]: t[2]})


# Valid definitions (so that the round trip is exercised), then near-valid and junk ones.
emails = st.sampled_from(["ops@example.org", "root@localhost", "a.b@pbx.example"])
opt = st.none
valid_targets = st.one_of(
    st.fixed_dictionaries({"type": st.just("local")}, optional={
        "path": opt() | st.sampled_from(["/var/backups", "/srv/sar"]), "keep": st.integers(0, 60),
        "verify": st.sampled_from(["size", "full"])}),
    st.fixed_dictionaries({"type": st.just("smb"), "server": st.sampled_from(["nas", "10.0.0.5"]),
                           "share": st.sampled_from(["backup", "backup/pbx", "\\backup\\pbx"]),
                           "username": st.just("svc"), "password": st.just("pw")},
                          optional={"port": st.integers(1, 65535), "encrypt": st.booleans() | st.sampled_from(["yes", "off"]),
                                    "security": st.sampled_from(["negotiate", "ntlm"])}),
    st.fixed_dictionaries({"type": st.just("sftp"), "server": st.just("sftp.example"), "username": st.just("u"),
                           "password": st.just("pw")},
                          optional={"path": st.sampled_from([".", "/upload"]), "port": st.integers(1, 65535) | st.just("22"),
                                    "host_key_policy": st.sampled_from(["strict", "accept_new"])}),
    st.fixed_dictionaries({"type": st.just("dropbox"), "refresh_token": st.just("tok"), "app_key": st.just("key")},
                          optional={"path": st.sampled_from(["/", "/pbx"])}),
    st.fixed_dictionaries({"type": st.just("usb")}, optional={"label": st.just("BACKUP"), "mount_options": st.just("noatime")}),
    st.fixed_dictionaries({"type": st.just("email"), "to": st.lists(emails, min_size=1, max_size=2) | emails},
                          optional={"max_size": st.integers(0, 10 ** 9) | st.sampled_from(["20MB", "1GiB"])}),
)
valid_jobs = st.fixed_dictionaries(
    {"name": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z"), "targets": st.lists(valid_targets, min_size=1, max_size=3)},
    optional={"state": st.just("present"), "report_to": st.lists(emails, max_size=2) | emails,
              "report_on": st.sampled_from(jobmod.REPORT_ON), "interval": st.just("manual"),
              "data": st.lists(st.sampled_from(jobmod.CATEGORIES), min_size=1, max_size=3) | st.sampled_from(jobmod.CATEGORIES),
              "compression": st.sampled_from(jobmod.COMPRESSIONS), "defer": st.integers(0, 10 ** 6) | st.sampled_from(["1h", "30m"]),
              "retries": st.integers(0, 10) | st.just("3"),
              "encryption": st.none() | st.just({"passphrase": "long-enough-passphrase"})
              | st.just({"recipients": ["age1" + "q" * 58]})})
scheduled = st.tuples(valid_jobs, st.sampled_from(["hourly", "daily", "weekly", "monthly"]),
                      st.sampled_from(["2024-01-01 10:00", "2026-12-31 23:59"])).map(
    lambda t: {**t[0], "interval": t[1], "start": t[2]})
target = _with_junk({"type": st.sampled_from(list(jobmod.TARGET_OPTIONS)) | junk},
                    {key: plausible for key in jobmod.ALL_TARGET_OPTIONS if key != "type"})
job_fields = {key: plausible for key in jobmod.DEFAULTS}
job_fields["targets"] = st.lists(target | valid_targets | _one_wrong(valid_targets) | junk, max_size=3) | junk
jobs = (valid_jobs | scheduled | _one_wrong(valid_jobs)
        | _with_junk({"name": st.sampled_from(["nightly", "a", "x" * 64]) | junk}, job_fields) | junk)

_db_keys = list(storemod.DEFAULT_PROFILE["database"])
category_spec = _with_junk({}, {key: st.lists(st.sampled_from(INTERESTING) | junk, max_size=3) | junk
                                for key in ("tables", "exclude_tables", "paths")}) | st.none() | junk
profiles = _with_junk({}, {
    "database": _with_junk({}, {key: plausible for key in _db_keys}) | junk,
    "categories": st.dictionaries(st.sampled_from(list(jobmod.CATEGORIES)) | keys, category_spec, max_size=3) | junk,
}) | st.none() | junk
smtps = _with_junk({}, {key: plausible for key in storemod.DEFAULT_SMTP}) | st.none() | junk
settings_fields = {key: plausible for key in storemod.DEFAULT_SETTINGS}
settings_fields["profile"] = profiles
settings_fields["smtp"] = smtps
abs_paths = st.sampled_from(["/var/lib/sar", "/srv/x/", "/run/lock/sar.lock", "//double/slash", "/a/./b/../c"])
valid_category = st.one_of(
    st.fixed_dictionaries({}, optional={"tables": st.lists(st.sampled_from(["public.cdr*", "users", "s.t"]), max_size=2),
                                        "paths": st.lists(abs_paths, max_size=2) | abs_paths}),
    st.fixed_dictionaries({}, optional={"exclude_tables": st.lists(st.sampled_from(["public.cdr*"]), max_size=1),
                                        "paths": st.lists(abs_paths, max_size=2)}), st.none())
valid_settings = st.fixed_dictionaries({}, optional={
    "profile": st.fixed_dictionaries({}, optional={
        "database": st.fixed_dictionaries({}, optional={
            "host": st.sampled_from(["/var/run/postgresql", "db.example"]), "port": st.integers(1, 65535) | st.just("5432"),
            "user": st.just("postgres"), "password": st.none() | st.just("pw"), "name": st.just("asterisk"),
            "pg_bin_dir": st.none() | st.just("/usr/lib/postgresql/15/bin")}),
        "categories": st.dictionaries(st.sampled_from(jobmod.CATEGORIES), valid_category, max_size=3)}),
    "smtp": st.fixed_dictionaries({}, optional={
        "host": st.just("mail.example"), "port": st.integers(1, 65535), "security": st.sampled_from(storemod.SMTP_SECURITY),
        "from": emails, "timeout": st.integers(1, 300)}),
    "archive_dir": abs_paths, "staging_dir": abs_paths, "status_dir": abs_paths, "lock_path": abs_paths,
    "metrics_path": st.none() | abs_paths, "min_free_space": st.integers(0, 10 ** 12) | st.sampled_from(["64MiB", "1GB"])})
all_settings = (valid_settings | st.tuples(valid_settings, st.sampled_from(sorted(storemod.DEFAULT_SETTINGS)) | keys,
                                           junk).map(lambda t: {**t[0], t[1]: t[2]})
                | _with_junk({}, settings_fields) | junk)


@pytest.fixture(scope="module")
def scratch():
    """Config directories for the saves: in memory where possible (every save fsyncs)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = tempfile.mkdtemp(prefix="sar-fuzz-", dir=shm)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _state(directory: str) -> dict:
    out = {}
    for top, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(top, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, directory)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def _refused_cleanly(exc: ValidationError) -> None:
    assert isinstance(exc.field, str) and exc.field.strip(), "ValidationError without a field: %r" % (exc.field,)
    assert str(exc).startswith(exc.field + ": "), "the message does not start with the field: %s" % exc


def _json_round_trip(value):
    return json.loads(json.dumps(value, allow_nan=False))


@FUZZ
@given(raw=jobs, require_targets=st.booleans())
def test_job_schema(raw, require_targets, scratch):
    store = storemod.Store(os.path.join(scratch, "jobs"))
    shown = repr(raw)
    before = _state(store.config_dir) if os.path.isdir(store.config_dir) else {}
    try:
        job = jobmod.validate_job(raw, require_targets=require_targets)  # the module's save: validate ...
        store.write_job(job)                                             # ... then write
    except ValidationError as exc:
        event("refused")
        _refused_cleanly(exc)
        assert (_state(store.config_dir) if os.path.isdir(store.config_dir) else {}) == before, "a refused save wrote"
        assert repr(raw) == shown, "validation changed its input"
        return
    event("accepted")
    assert repr(raw) == shown, "validation changed its input"
    assert jobmod.validate_job(job, require_targets=require_targets) == job, "not a fixed point"
    assert _json_round_trip(job) == job
    if job["state"] == "present" or not require_targets:
        loaded = store.read_job(job["name"])
        assert loaded == job, "saved and loaded differ"
        if job["targets"] or job["state"] == "absent":
            assert store.load_job(job["name"]) == job


@FUZZ
@given(raw=all_settings)
def test_settings_schema(raw, scratch):
    store = storemod.Store(os.path.join(scratch, "settings"))
    shown = repr(raw)
    before = _state(store.config_dir) if os.path.isdir(store.config_dir) else {}
    try:
        wanted = storemod.validate_settings(raw)   # sar_backup_settings' save: validate ...
        store.write_settings(wanted)               # ... then write
    except ValidationError as exc:
        event("refused")
        _refused_cleanly(exc)
        assert (_state(store.config_dir) if os.path.isdir(store.config_dir) else {}) == before, "a refused save wrote"
        assert repr(raw) == shown, "validation changed its input"
        return
    event("accepted")
    assert repr(raw) == shown, "validation changed its input"
    assert storemod.validate_settings(wanted) == wanted, "not a fixed point"
    assert _json_round_trip(wanted) == wanted
    assert store.settings() == wanted, "saved and loaded differ"


def test_known_tracebacks_are_refusals():
    """The two tracebacks issue 7 found (non-string target type, non-string keys), and their kin."""
    cases = [
        ({"name": "n", "targets": [{"type": ["local"]}]}, "targets[0].type"),
        ({"name": "n", "targets": [{"type": {"a": 1}}]}, "targets[0].type"),
        ({"name": "n", "targets": [{"type": 5}]}, "targets[0].type"),
        ({"name": "n", 5: "x", "targets": [{"type": "local"}]}, "definition"),
        ({"name": "n", "targets": [{"type": "local", 1: 2, "path": "/x"}]}, "targets[0]"),
        ({"name": "n", "defer": "9" * 400, "targets": [{"type": "local"}]}, "defer"),
        ({"name": "n", "targets": [{"type": "email", "to": ["a@b.example"], "max_size": "9" * 400}]},
         "targets[0].max_size"),
    ]
    for raw, field in cases:
        try:
            jobmod.validate_job(raw)
        except ValidationError as exc:
            assert exc.field.startswith(field), (raw, str(exc))
        else:
            raise AssertionError("accepted %r" % (raw,))
    for raw, field in [([{}], "settings"), (5, "settings"), ({1: 2}, "settings"),
                       ({"profile": {"database": {"port": float("inf")}}}, "profile.database.port"),
                       ({"smtp": {"timeout": float("inf")}}, "smtp.timeout"),
                       ({"min_free_space": "9" * 400}, "min_free_space")]:
        try:
            storemod.validate_settings(raw)
        except ValidationError as exc:
            assert exc.field.startswith(field), (raw, str(exc))
        else:
            raise AssertionError("accepted %r" % (raw,))
