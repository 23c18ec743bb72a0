# SPDX-License-Identifier: GPL-3.0-or-later
"""Proof suite, issue 7 - secrets.

One job with every target type that takes a secret (local, sftp with a
password, sftp with a passphrase-protected private key, smb, dropbox with
refresh_token + app_secret, e-mail through an SMTP relay that requires
AUTH), failing targets with wrong credentials, an age passphrase, the
database password of the profile and the SMTP password of the settings:
every secret a distinctive random string. Every module runs through a real
`ansible-playbook -vvv --diff` (settings, job in check mode then applied
twice, run in check mode, run, two inline `definition` runs - one keeping
its archive in staging, one fetching it to the controller -, info with
archives, restore verify_only from a path and from two targets), then the
`sar-backup` command runs the job, lists, verifies, restores (verify only)
and prints status and metrics, in subprocesses.

While all that runs, a sampler thread reads `/proc/*/cmdline` and
`/proc/*/environ` of every process of the machine (but this one) every
50 ms, and the modes of everything in staging, the local archive folder and
the fetch folder. Afterwards every secret - raw, its random core (which
survives JSON/shell/URL escaping), URL-encoded, base64 (standard and
URL-safe, of the whole value and of the core at every byte alignment, so
an encoded `user:password` or `\\0user\\0password` is caught too) - is
searched in: the play's stdout/stderr, every result and diff the modules
returned (an aggregate callback keeps them), the status files, the
Prometheus textfile, every mail the SMTP server accepted (raw, and decoded
parts), the CLI's stdout/stderr, the staging leftovers, the config_dir
tree (but the job/settings files and the signing key, whose modes are
checked instead), the archives' decrypted members, the archives on every
target, and the servers' own logs. Expected hits: 0 everywhere. Modes:
job/settings/signing key 0600, config_dir 0700, archives and staging
files never readable by group/other, status files 0644 (and secret-free).

One module-scoped fixture (`campaign`) does all of it once; three tests
judge it: outputs/files/mails, processes, modes.

The `usb` target is not part of the job: it takes no secret, and nothing
on these machines is on a USB bus - the harness can only widen the
target's `is_usb` seam inside the test process, not inside the module
processes `ansible-playbook` starts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets as pysecrets
import stat
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

# tests/ and the collection on sys.path, as tests/integration/conftest.py does
# (tests/reliability/conftest.py may already have done it: guarded).
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from harness.playbook import collections_path, run_playbook  # noqa: E402

FARM = collections_path()
if FARM not in sys.path:
    sys.path.insert(0, FARM)

from harness import appliance as sample  # noqa: E402
from harness import smbd as smbd_harness  # noqa: E402
from harness.dropbox_emulator import DropboxEmulator  # noqa: E402
from harness.postgres import PostgresCluster  # noqa: E402
from harness.smtp import SmtpServer  # noqa: E402
from harness.sshd import SshServer, generate_key  # noqa: E402

JOB = "secrets"
# Programs worth naming in the summary (the sampler reads every process of the machine).
RELEVANT = ("AnsiballZ_", "ansible", "pg_dump", "psql", "sshd: sar", "smbd", "python")
SAMPLE_EVERY = 0.05


# ----------------------------------------------------------------------------
# The secrets and every form they could leak in
# ----------------------------------------------------------------------------
def _core() -> str:
    """A distinctive random part: 24 hex digits survive any text escaping."""
    return pysecrets.token_hex(12)


def _b64_fragments(core: bytes) -> list:
    """The part of base64(...core...) that depends on `core` only, for each of
    the 3 byte alignments, standard and URL-safe alphabets: finds the core
    inside any base64-encoded blob (HTTP basic auth, SASL PLAIN, attachments)."""
    out = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + core)
        start = -(-shift * 4 // 3)  # ceil(4 * shift / 3): first char made of core bits only
        end = (shift + len(core)) * 4 // 3  # last char made of core bits only
        frag = encoded[start:end]
        out.append(frag)
        out.append(frag.replace(b"+", b"-").replace(b"/", b"_"))
    return out


class SecretSet:
    """Named secrets -> the byte strings none of the searched places may contain."""

    def __init__(self):
        self.lock = threading.Lock()
        self.needles = {}  # bytes -> label
        self.names = []
        self.version = 0
        self._regex = None
        self._regex_version = -1

    def add(self, name: str, value: str, cores=None) -> None:
        with self.lock:
            if name in self.names:
                return
            self.names.append(name)
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            forms = {
                "raw": raw,
                "url": urllib.parse.quote(raw, safe="").encode("ascii"),
                "url+": urllib.parse.quote_plus(raw).encode("ascii"),
                "b64": base64.b64encode(raw),
                "b64url": base64.urlsafe_b64encode(raw),
            }
            if isinstance(value, str):
                forms["json"] = json.dumps(value)[1:-1].encode("utf-8")
            for i, core in enumerate(cores or []):
                forms["core%d" % i] = core.encode("utf-8")
                for j, frag in enumerate(_b64_fragments(core.encode("utf-8"))):
                    forms["core%d-b64/%d" % (i, j)] = frag
            for form, needle in forms.items():
                if len(needle) >= 12:  # shorter ones would only find noise
                    self.needles.setdefault(needle, "%s (%s)" % (name, form))
            self.version += 1

    def regex(self):
        with self.lock:
            if self._regex_version != self.version:
                ordered = sorted(self.needles, key=len, reverse=True)
                self._regex = (re.compile(b"|".join(re.escape(n) for n in ordered)), dict(self.needles))
                self._regex_version = self.version
            return self._regex

    def find(self, data, skip_prefix: str | None = None) -> list:
        """Labels of the secrets found in data (str or bytes)."""
        if data is None:
            return []
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        regex, labels = self.regex()
        found = []
        for match in regex.finditer(data):
            label = labels[match.group(0)]
            if skip_prefix and label.startswith(skip_prefix):
                continue
            if label not in found:
                found.append(label)
        return found


# ----------------------------------------------------------------------------
# The sampler: /proc of every process, modes of the private folders
# ----------------------------------------------------------------------------
class Sampler(threading.Thread):
    def __init__(self, secret_set: SecretSet, private_dirs: list, refresh=None):
        super().__init__(name="secrets-sampler", daemon=True)
        self.secret_set = secret_set
        self.private_dirs = private_dirs
        self.refresh = refresh
        self.stop_event = threading.Event()
        self.own = {os.getpid()}
        self.checked = set()  # (version, hash(blob)) already searched
        self.hits = []  # (pid, file, program, labels)
        self.samples = 0
        self.pids = set()
        self.programs = set()
        self.modes = {}  # path -> (mode, is_dir), every entry ever seen in the private dirs
        self.bad_modes = {}
        self.errors = []

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.sample()
            except Exception as exc:  # pylint: disable=broad-except  # keep sampling, report at the end
                self.errors.append(repr(exc))
            self.stop_event.wait(SAMPLE_EVERY)
        self.sample()

    def sample(self) -> None:
        if self.refresh:
            self.refresh()
        version = self.secret_set.version
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in self.own:
                continue
            cmdline = b""
            for name in ("cmdline", "environ"):
                try:
                    with open("/proc/%s/%s" % (entry, name), "rb") as handle:
                        blob = handle.read()
                except OSError:
                    continue
                if name == "cmdline":
                    cmdline = blob
                if not blob:
                    continue
                key = (version, name, hash(blob))
                if key in self.checked:
                    continue
                self.checked.add(key)
                found = self.secret_set.find(blob)
                if found:
                    program = cmdline.split(b"\0")[:3]
                    self.hits.append((int(entry), name, b" ".join(program).decode("utf-8", "replace")[:200], found))
            if cmdline:
                self.pids.add(int(entry))
                args = cmdline.split(b"\0")
                for arg in args[:2]:
                    if arg and not arg.startswith(b"-"):
                        self.programs.add(os.path.basename(arg).decode("utf-8", "replace"))
        for top in self.private_dirs:
            for current, dirs, files in os.walk(top):
                for name in [""] + dirs + files if current == top else dirs + files:
                    path = os.path.join(current, name) if name else current
                    try:
                        st = os.lstat(path)
                    except OSError:
                        continue
                    is_dir = stat.S_ISDIR(st.st_mode)
                    mode = stat.S_IMODE(st.st_mode)
                    self.modes.setdefault(path, (mode, is_dir))
                    if mode & 0o077 and not (is_dir and not path.startswith(self.strict_dirs_under)):
                        self.bad_modes.setdefault(path, (mode, is_dir))
        self.samples += 1

    # Directories under these must be private too (staging); elsewhere only files are judged.
    strict_dirs_under = ("\0",)


# ----------------------------------------------------------------------------
# An aggregate callback that keeps every result (diffs included) in a file
# ----------------------------------------------------------------------------
CALLBACK = '''
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: sar_secrets_results
type: aggregate
short_description: keep every task result for tests/reliability/test_secrets.py
description: Writes every result (and diff event) of the run to $SAR_SECRETS_RESULTS as JSON.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "sar_secrets_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results = []

    def _record(self, result, status):
        self.results.append({"task": result._task.get_name(), "status": status,
                             "result": dict(result._result)})

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_on_file_diff(self, result):
        self._record(result, "diff")

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["SAR_SECRETS_RESULTS"], "w", encoding="utf-8") as handle:
            json.dump(self.results, handle, default=str, indent=1)
'''


# ----------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every server with secrets of this test's own, and the sample appliance."""
    base = tmp_path_factory.mktemp("secrets")
    cores = {}

    def secret(name: str, template: str = "%s") -> str:
        cores[name] = _core()
        return template % cores[name]

    values = {
        # Characters a shell, a config parser or JSON could trip over, around the random core.
        "sftp_password": secret("sftp_password", "sf 'x\"%s$:"),
        "sftp_key_passphrase": secret("sftp_key_passphrase", "kp %s !"),
        "sftp_wrong_password": secret("sftp_wrong_password", "sfw %s"),
        "smb_password": secret("smb_password", "sm 'x\"%s$:"),
        "smb_wrong_password": secret("smb_wrong_password", "smw-%s"),
        "dropbox_refresh_token": secret("dropbox_refresh_token", "sarrefresh-%s"),
        "dropbox_app_secret": secret("dropbox_app_secret", "sarappsecret%s"),
        "dropbox_wrong_refresh_token": secret("dropbox_wrong_refresh_token", "sarrefreshwrong-%s"),
        "smtp_password": secret("smtp_password", "smtp/%s=+"),
        "age_passphrase": secret("age_passphrase", "age pass %s &x"),
        "db_password": secret("db_password", "pw:%s\\x"),
    }
    started = []
    try:
        cluster = PostgresCluster()
        cluster.password = values["db_password"]
        cluster.start()
        started.append(cluster)
        root = str(base / "appliance")
        profile = sample.build_appliance(root, cluster)

        sshd = SshServer()
        sshd.password = values["sftp_password"]
        sshd.start()
        started.append(sshd)
        key_path = str(base / "id_ed25519")
        sshd.add_authorized_key(generate_key(key_path, "ed25519", passphrase=values["sftp_key_passphrase"]))
        with open(key_path, encoding="ascii") as handle:
            private_key = handle.read()
        os.unlink(key_path)
        values["sftp_private_key"] = private_key

        smbd = smbd_harness.SmbServer()
        smbd.password = values["smb_password"]
        smbd.start()
        started.append(smbd)

        os.makedirs(str(base / "dropbox"))
        emu = DropboxEmulator(str(base / "dropbox"))
        emu.refresh_token = values["dropbox_refresh_token"]
        emu.app_secret = values["dropbox_app_secret"]
        emu.refresh_tokens = {emu.refresh_token: True}
        emu.start()
        started.append(emu)

        os.makedirs(str(base / "smtp"))
        smtp = SmtpServer(str(base / "smtp"), mode="starttls", username="relay-user",
                          password=values["smtp_password"])
        smtp.start()
        started.append(smtp)
        yield {"base": base, "values": values, "cores": cores, "cluster": cluster, "profile": profile,
               "root": root, "sshd": sshd, "smbd": smbd, "dropbox": emu, "smtp": smtp}
    finally:
        for server in reversed(started):
            server.stop()


def _secret_set(world, signing_pem: str) -> SecretSet:
    found = SecretSet()
    for name, value in world["values"].items():
        if name == "sftp_private_key":
            lines = [ln.strip() for ln in value.splitlines() if len(ln.strip()) >= 40 and "PRIVATE KEY" not in ln]
            assert len(lines) >= 3, value
            found.add(name, value, cores=lines)
        else:
            found.add(name, value, cores=[world["cores"][name]])
    # The host's own signing key (made here, before any run, by the engine's code).
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(signing_pem.encode("ascii"), password=None)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    body = "".join(ln for ln in signing_pem.splitlines() if "PRIVATE KEY" not in ln)
    found.add("signing_key", signing_pem, cores=[body, raw.hex(), base64.b64encode(raw).decode("ascii")])
    found.add("signing_key (raw bytes)", raw)
    return found


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _files_under(top: str):
    for current, _dirs, files in os.walk(top):
        for name in files:
            yield os.path.join(current, name)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


# ----------------------------------------------------------------------------
# The campaign: every run, then every place searched (the tests below judge it)
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def campaign(world):
    began = time.monotonic()
    base = world["base"]
    values = world["values"]
    sshd, smbd, emu, smtp = world["sshd"], world["smbd"], world["dropbox"], world["smtp"]
    paths = {k: str(base / k) for k in ("etc", "archives", "staging", "status", "work", "fetched", "callbacks")}
    paths["lock"] = str(base / "lock" / "sar-backup.lock")
    for key in ("work", "callbacks"):
        os.makedirs(paths[key])
    config_dir = paths["etc"]

    from ansible_collections.sar.backup.plugins.module_utils import archive as archive_mod
    from ansible_collections.sar.backup.plugins.module_utils import signing
    signing.load_or_create(config_dir)
    signing_pem = _read(os.path.join(config_dir, signing.KEY_FILE)).decode("ascii")
    found = _secret_set(world, signing_pem)

    with open(os.path.join(paths["callbacks"], "sar_secrets_results.py"), "w", encoding="utf-8") as handle:
        handle.write(CALLBACK)
    passphrase_file = os.path.join(paths["work"], "age-passphrase")
    fd = os.open(passphrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(values["age_passphrase"] + "\n")

    keyed_dir = sshd.make_dir(os.path.join(sshd.home, "keyed"))
    inline_dir = sshd.make_dir(os.path.join(sshd.home, "inline"))
    profile = json.loads(json.dumps(world["profile"]))
    profile["database"]["password"] = "{{ s_db_password }}"
    settings = {
        "config_dir": config_dir,
        "profile": profile,
        "smtp": smtp.settings(password="{{ s_smtp_password }}"),
        "archive_dir": paths["archives"],
        "staging_dir": paths["staging"],
        "status_dir": paths["status"],
        "lock_path": paths["lock"],
    }
    sftp_common = {"type": "sftp", "server": "127.0.0.1", "port": sshd.port, "username": sshd.user,
                   "host_key": sshd.host_key_line()}
    smb_common = {"type": "smb", "server": "127.0.0.1", "port": smbd.port, "username": smbd.user}
    targets = [
        {"type": "local", "verify": "full"},                                                          # 0
        dict(sftp_common, password="{{ s_sftp_password }}", path=".", verify="full"),                 # 1
        {"type": "sftp", "server": "127.0.0.1", "port": sshd.port, "username": sshd.user,             # 2
         "private_key": "{{ s_sftp_private_key }}", "private_key_passphrase": "{{ s_sftp_key_passphrase }}",
         "path": keyed_dir, "host_key_policy": "accept_new"},
        dict(smb_common, password="{{ s_smb_password }}", share="secure/pbx", verify="full"),         # 3
        {"type": "dropbox", "app_key": emu.app_key, "app_secret": "{{ s_dropbox_app_secret }}",       # 4
         "refresh_token": "{{ s_dropbox_refresh_token }}", "path": "/backups", "verify": "full"},
        {"type": "email", "to": ["ops@example.com"], "max_size": "20MB"},                             # 5
        dict(smb_common, password="{{ s_smb_wrong_password }}", share="share"),                       # 6 fails
        dict(sftp_common, password="{{ s_sftp_wrong_password }}", path="."),                          # 7 fails
        {"type": "dropbox", "app_key": emu.app_key, "app_secret": "{{ s_dropbox_app_secret }}",       # 8 fails
         "refresh_token": "{{ s_dropbox_wrong_refresh_token }}", "path": "/wrong"},
    ]
    job = {"config_dir": config_dir, "name": JOB, "data": ["core", "cdr_voicemail", "announcements"],
           "targets": targets, "encryption": {"passphrase": "{{ s_age_passphrase }}"},
           "report_to": ["ops@example.com"], "report_on": "always"}
    encryption = {"passphrase": "{{ s_age_passphrase }}"}
    inline_kept = {"name": "inline-kept", "data": ["core", "announcements"], "encryption": encryption,
                   "report_to": ["ops@example.com"], "report_on": "always",
                   "targets": [dict(sftp_common, password="{{ s_sftp_password }}", path=inline_dir)]}
    inline_fetch = {"name": "inline-fetch", "data": ["cdr_voicemail"], "encryption": encryption,
                    "targets": [{"type": "dropbox", "app_key": emu.app_key,
                                 "app_secret": "{{ s_dropbox_app_secret }}",
                                 "refresh_token": "{{ s_dropbox_refresh_token }}", "path": "/inline"}]}
    cfg = {"config_dir": config_dir}
    passphrase = "{{ s_age_passphrase }}"
    tasks = [
        {"name": "settings check", "sar.backup.sar_backup_settings": settings, "check_mode": True, "diff": True},
        {"name": "settings", "sar.backup.sar_backup_settings": settings, "diff": True},
        {"name": "settings again", "sar.backup.sar_backup_settings": settings, "diff": True},
        {"name": "job check", "sar.backup.sar_backup_job": job, "check_mode": True, "diff": True},
        {"name": "job", "sar.backup.sar_backup_job": job, "diff": True},
        {"name": "job again", "sar.backup.sar_backup_job": job, "diff": True},
        {"name": "run check", "sar.backup.sar_backup_run": dict(cfg, job=JOB), "check_mode": True,
         "ignore_errors": True},
        {"name": "run", "sar.backup.sar_backup_run": dict(cfg, job=JOB), "register": "run_result",
         "ignore_errors": True},
        {"name": "run inline kept", "sar.backup.sar_backup_run": dict(cfg, definition=inline_kept, keep_archive=True)},
        {"name": "run inline fetch",
         "sar.backup.sar_backup_run": dict(cfg, definition=inline_fetch, fetch_to=paths["fetched"])},
        {"name": "info", "sar.backup.sar_backup_info": dict(cfg, archives=True), "ignore_errors": True},
        {"name": "restore path", "sar.backup.sar_backup_restore": dict(
            cfg, path="{{ run_result.archive.path }}", verify_only=True, passphrase=passphrase)},
        {"name": "restore sftp key", "sar.backup.sar_backup_restore": dict(
            cfg, job=JOB, target=2, verify_only=True, passphrase=passphrase)},
        {"name": "restore dropbox", "sar.backup.sar_backup_restore": dict(
            cfg, job=JOB, target=4, verify_only=True, passphrase=passphrase)},
    ]
    extravars = {"s_" + name: value for name, value in values.items()}
    results_path = os.path.join(paths["work"], "results.json")
    env = dict(emu.env(), ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_CALLBACK_PLUGINS=paths["callbacks"], ANSIBLE_CALLBACKS_ENABLED="sar_secrets_results",
               SAR_SECRETS_RESULTS=results_path)
    cli_env = dict(os.environ, **emu.env())

    def issued_tokens():
        with emu.lock:
            tokens = list(emu.tokens)
        for token in tokens:
            found.add("dropbox access token %s..." % token[:14], token, cores=[token.split("-", 1)[-1]])

    sampler = Sampler(found, [paths["staging"], paths["archives"], paths["fetched"]], refresh=issued_tokens)
    sampler.strict_dirs_under = (paths["staging"],)
    cli_runs = []
    timings = {}

    def sar(*argv, expect=None):
        code = ("import sys; sys.path.insert(0, %r); "
                "from ansible_collections.sar.backup.plugins.module_utils.cli import main; "
                "sys.exit(main(sys.argv[1:]))" % FARM)
        cli_began = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", code, "--config-dir", config_dir] + list(argv),
                              env=cli_env, capture_output=True, text=True, timeout=300, check=False)
        timings["sar-backup " + " ".join(a for a in argv if not a.startswith("/"))] = time.monotonic() - cli_began
        cli_runs.append((" ".join(argv), proc))
        if expect is not None:
            assert proc.returncode == expect, "sar-backup %s: exit %d\n%s\n%s" % (
                " ".join(argv), proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    sampler.start()
    try:
        play_began = time.monotonic()
        play = run_playbook(tasks, paths["work"], extravars=extravars, verbosity=3, diff=True, json_out=False,
                            env=env, timeout=400)
        timings["playbook"] = time.monotonic() - play_began
        assert os.path.exists(results_path), "no results: rc %d\n%s\n%s" % (
            play.rc, play.stdout[-5000:], play.stderr[-3000:])
        with open(results_path, encoding="utf-8") as handle:
            results = json.load(handle)
        by_task = {}
        for entry in results:
            if entry["status"] != "diff":
                by_task[entry["task"]] = entry["result"]
        assert play.rc == 0, "play failed (rc %d)\n%s\n%s" % (play.rc, play.stdout[-6000:], play.stderr[-3000:])
        run_res = by_task["run"]
        codes = [t["code"] for t in run_res["targets"]]
        assert codes == ["successful"] * 6 + ["authFailed", "sftpRightProblem", "authFailed"], run_res["targets"]
        local_archive = run_res["archive"]["path"]
        assert by_task["run inline kept"]["archive"].get("temporary") is True, by_task["run inline kept"]
        kept_archive = by_task["run inline kept"]["archive"]["path"]
        fetched_archive = by_task["run inline fetch"]["fetched_path"]
        assert by_task["info"].get("archives"), by_task["info"]
        for name in ("restore path", "restore sftp key", "restore dropbox"):
            assert not by_task[name].get("failed"), by_task[name]
        assert by_task["job"]["changed"] and not by_task["job again"]["changed"]
        assert not by_task["settings again"]["changed"]

        # The same through the command timers run (no Ansible).
        sar("run", JOB, expect=1)
        sar("list", "--archives", expect=1)  # 1: the failing targets cannot be listed
        sar("list", "--archives", "--format", "json", expect=1)
        sar("status", "--format", "json")
        sar("status", "--format", "checkmk", expect=0)
        sar("status")
        sar("metrics", expect=0)
        sar("verify", local_archive, "--passphrase-file", passphrase_file, expect=0)
        sar("restore", "--job", JOB, "--target", "1", "--verify-only", "--passphrase-file", passphrase_file, expect=0)
        sar("restore", "--job", JOB, "--target", "3", "--verify-only", "--passphrase-file", passphrase_file, expect=0)
        sar("restore", "--job", JOB, "--target", "6", "--verify-only", "--passphrase-file", passphrase_file, expect=1)
    finally:
        sampler.stop()
    issued_tokens()
    assert emu.tokens, "the dropbox targets never got an access token"

    # ------------------------------------------------------------------
    # Search every place
    # ------------------------------------------------------------------
    hits = []  # (place, labels)
    places = []

    def search(place: str, data, skip_prefix=None) -> None:
        places.append(place)
        labels = found.find(data, skip_prefix=skip_prefix)
        if labels:
            hits.append((place, labels))

    search("ansible-playbook -vvv --diff stdout", play.stdout)
    search("ansible-playbook -vvv --diff stderr", play.stderr)
    for i, entry in enumerate(results):
        what = "diff" if entry["status"] == "diff" else "result"
        search("module %s #%d of task %r" % (what, i, entry["task"]), json.dumps(entry["result"], default=str))
        if isinstance(entry["result"], dict) and entry["result"].get("diff"):
            search("diff of task %r" % entry["task"], json.dumps(entry["result"]["diff"], default=str))
    for argv, proc in cli_runs:
        search("sar-backup %s: stdout" % argv, proc.stdout)
        search("sar-backup %s: stderr (its log)" % argv, proc.stderr)
    for path in _files_under(paths["status"]):
        search("status dir file %s" % path, _read(path))
    assert os.path.exists(os.path.join(paths["status"], "sar_backup.prom"))
    assert os.path.exists(os.path.join(paths["status"], "%s.json" % JOB))
    mails = list(smtp.messages)
    reports = [m for m in mails if not m.attachments()]
    assert len(reports) >= 3 and len(mails) > len(reports), [m.message["Subject"] for m in mails]
    for i, mail in enumerate(mails):
        subject = mail.message["Subject"]
        search("mail %d %r: raw (headers and body)" % (i, subject), mail.raw)
        search("mail %d envelope" % i, "%s %s" % (mail.mail_from, " ".join(mail.rcpt_tos)))
        for part in mail.message.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True) or b""
            search("mail %d %r: decoded part %s" % (i, subject, part.get_content_type()), payload)
    leftovers = list(_files_under(paths["staging"]))
    for path in leftovers:
        search("staging leftover %s" % path, _read(path))
    private_files = {os.path.join(config_dir, "settings.json"), os.path.join(config_dir, "jobs", "%s.json" % JOB)}
    key_file = os.path.join(config_dir, signing.KEY_FILE)
    config_files = list(_files_under(config_dir))
    for path in config_files:
        if path in private_files:
            continue
        search("config_dir file %s" % path, _read(path), skip_prefix="signing_key" if path == key_file else None)
    # Archives: the bytes on every target, and every member decrypted (the manifest never holds a secret).
    archive_copies = [local_archive, kept_archive, fetched_archive]
    archive_copies += list(_files_under(sshd.home)) + list(_files_under(smbd.share_path("secure")))
    for path in archive_copies:
        search("archive bytes %s" % path, _read(path))
    for path in (local_archive, kept_archive, fetched_archive):
        with archive_mod.open_members(path, passphrase=values["age_passphrase"]) as members:
            for info, handle in members:
                search("archive %s member %s" % (os.path.basename(path), info.name),
                       handle.read() if handle is not None else info.name)
    for name in emu.list_names("/backups/starface-backup/%s" % JOB):
        search("dropbox copy %s" % name, emu.read_file("/backups/starface-backup/%s/%s" % (JOB, name)))
    search("sshd log", sshd.log())
    search("smbd log", smbd.log())
    search("postgres server log", world["cluster"].server_log())

    # ------------------------------------------------------------------
    # Modes
    # ------------------------------------------------------------------
    bad = []
    for path in sorted(private_files | {key_file}):
        if _mode(path) != 0o600:
            bad.append("%s is %04o, not 0600" % (path, _mode(path)))
    for path in (config_dir, os.path.join(config_dir, "jobs")):
        if _mode(path) & 0o077:
            bad.append("%s is %04o, open to group/other" % (path, _mode(path)))
    for path in _files_under(paths["status"]):
        if _mode(path) != 0o644:
            bad.append("status file %s is %04o, not 0644" % (path, _mode(path)))
    for path in [local_archive, kept_archive, fetched_archive] + list(_files_under(paths["archives"])) + leftovers:
        if _mode(path) & 0o077:
            bad.append("%s is %04o, readable by group/other" % (path, _mode(path)))
    for path, (mode, is_dir) in sorted(sampler.bad_modes.items()):
        bad.append("seen during the runs: %s %s was %04o" % ("dir" if is_dir else "file", path, mode))
    staging_seen = sorted(p for p in sampler.modes if p.startswith(paths["staging"] + os.sep))

    elapsed = time.monotonic() - began
    summary = ("%d secrets (%d needles) searched in %d places; sampler: %d samples of /proc, %d processes, "
               "programs seen: %s; %d paths seen in staging during the runs (%s); staging leftovers: %s; %.1f s"
               % (len(found.names), len(found.needles), len(places), sampler.samples, len(sampler.pids),
                  ", ".join(sorted(p for p in sampler.programs if p.startswith(RELEVANT))), len(staging_seen),
                  ", ".join("%s %04o" % (os.path.relpath(p, paths["staging"]), sampler.modes[p][0])
                            for p in staging_seen[:40]),
                  [os.path.relpath(p, paths["staging"]) for p in leftovers], elapsed))
    summary += "\ntimings: " + ", ".join("%s %.1f s" % item for item in timings.items())
    print(summary)
    return {"hits": hits, "sampler": sampler, "bad_modes": bad, "staging_seen": staging_seen, "summary": summary}


def test_no_secret_in_outputs_files_mails_or_logs(campaign):
    """Play output at -vvv, results and diffs, CLI output, status, metrics, mails, staging
    leftovers, config_dir (but the files meant to hold them), archives, server logs."""
    problems = ["SECRET in %s: %s" % (place, ", ".join(labels)) for place, labels in campaign["hits"]]
    assert not problems, "\n".join(problems) + "\n\n" + campaign["summary"]


def test_no_secret_in_any_process_cmdline_or_environ(campaign):
    sampler = campaign["sampler"]
    problems = ["SECRET in /proc/%d/%s (%s): %s" % (pid, name, program, ", ".join(labels))
                for pid, name, program, labels in sampler.hits]
    problems += ["sampler error: %s" % e for e in sampler.errors]
    assert not problems, "\n".join(problems) + "\n\n" + campaign["summary"]
    # The sampler really watched: the play, its modules and the command-line runs.
    assert sampler.samples > 20 and "ansible-playbook" in sampler.programs, campaign["summary"]
    assert any(p.startswith("AnsiballZ_sar_backup_run") for p in sampler.programs), campaign["summary"]


def test_secret_files_private_archives_and_staging_not_readable_by_others(campaign):
    """Job/settings/signing key 0600 in a 0700 config_dir; status files 0644 (secret-free, see
    above); archives (local, kept, fetched) and everything in staging - seen while the runs and
    restores went on, and what is left - never readable by group/other."""
    assert campaign["staging_seen"], campaign["summary"]
    assert not campaign["bad_modes"], "\n".join(campaign["bad_modes"]) + "\n\n" + campaign["summary"]
