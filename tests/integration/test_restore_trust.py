# SPDX-License-Identifier: GPL-3.0-or-later
"""Restore trusts nothing it reads (SPEC section 10, docs/restore.md "What is trusted"):
the host's profile decides where each source goes, never the archive's manifest, and
only archives signed by the host's own key or a trusted key are accepted unless the
user says `trust: any`. Real PostgreSQL, real trees, real archives made by the runner;
crafted archives are repacked from real ones the way an attacker would (valid checksums)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import pytest
import zstandard

from harness.playbook import run_playbook

from ansible_collections.sar.backup.plugins.module_utils import signing
from ansible_collections.sar.backup.plugins.module_utils.store import Store

from test_restore import Pbx  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def pbx(tmp_path, appliance):
    box = Pbx(tmp_path, appliance.cluster)
    try:
        yield box
    finally:
        appliance.cluster.psql("DROP DATABASE IF EXISTS %s" % box.db)


def tree_hashes(root: str) -> dict:
    out = {}
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def repack(src: str, dest: str, change_manifest=None, drop=()) -> None:
    """Rewrite an archive as an attacker would: members copied, the manifest changed, checksums recomputed
    so they match, no signature (the attacker has no key)."""
    raw = zstandard.ZstdDecompressor().stream_reader(open(src, "rb"), read_across_frames=True).read()
    members = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            data = tar.extractfile(info).read() if info.isreg() else None
            members.append((info, data))
    out = io.BytesIO()
    sums = []
    with tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if info.name in ("checksums.sha256", "signature.ed25519") or info.name in drop:
                continue
            if info.name == "manifest.json" and change_manifest:
                manifest = json.loads(data)
                change_manifest(manifest)
                data = json.dumps(manifest).encode()
                info.size = len(data)
            if data is not None:
                sums.append("%s  %s\n" % (hashlib.sha256(data).hexdigest(), info.name))
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        body = "".join(sums).encode()
        info = tarfile.TarInfo("checksums.sha256")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with open(dest, "wb") as handle:
        handle.write(zstandard.ZstdCompressor().compress(out.getvalue()))


def pbx_original_announcements(pbx, path, tmp_path) -> str:
    """The announcements tree as archived, extracted with standard tools (zstd + tar) for comparison."""
    dest = tmp_path / "std-extract"
    dest.mkdir()
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        tar.extractall(str(dest), members=[m for m in tar if m.name.startswith("files/announcements/0")],
                       filter="data")
    return str(dest / "files" / "announcements" / "0")


def other_host(pbx, tmp_path) -> Store:
    """A second appliance's config dir: same profile (the same appliance data), its own signing key."""
    store = Store(str(tmp_path / "etc-other"))
    store.write_settings(pbx.settings)
    return store


def test_foreign_and_unsigned_archives_need_a_trusted_key_or_trust_any(pbx, tmp_path, capsys):
    pbx.save_job()
    path = pbx.backup()
    own_key = signing.host_public_key(pbx.store.config_dir)
    assert own_key and own_key.startswith("ed25519:")
    status = json.loads(open(os.path.join(pbx.settings["status_dir"], "nightly.json")).read())
    assert status["public_key"] == own_key and status["archive"]["signed_by"] == own_key
    assert pbx.sar("verify", path) == 0
    assert "signed by SHA256:" in capsys.readouterr().out

    other = other_host(pbx, tmp_path)
    sar_other = ["--config-dir", other.config_dir]
    from ansible_collections.sar.backup.plugins.module_utils import cli
    before = pbx.snapshot()
    pbx.change()
    changed = pbx.snapshot()
    # A replacement appliance (another key) refuses the archive, restores nothing...
    assert cli.main(sar_other + ["verify", path]) == 1
    assert "UNTRUSTED" in capsys.readouterr().out
    assert cli.main(sar_other + ["restore", path, "--yes"]) == 1
    assert "signed by a key this host does not trust" in capsys.readouterr().err
    assert pbx.snapshot() == changed
    # ...until the old host's key is given, and then restores it all.
    assert cli.main(sar_other + ["restore", path, "--yes", "--trusted-key", own_key]) == 0
    assert pbx.snapshot() == before

    # Unsigned (an attacker's repack with valid checksums): refused, also with the host's own key trusted.
    unsigned = str(tmp_path / "unsigned.sar")
    repack(path, unsigned)
    assert pbx.sar("verify", unsigned) == 1
    assert "not signed" in capsys.readouterr().out
    assert pbx.sar("verify", unsigned, "--trust", "any") == 0
    # A signature that does not match is refused even with trust any.
    tampered = str(tmp_path / "tampered.sar")
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True).read()
    pos = raw.index(b'"signature": "') + len(b'"signature": "')
    flipped = raw[:pos] + (b"A" if raw[pos:pos + 1] != b"A" else b"B") + raw[pos + 1:]
    with open(tampered, "wb") as handle:
        handle.write(zstandard.ZstdCompressor().compress(flipped))
    assert pbx.sar("verify", tampered, "--trust", "any") == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_the_profile_decides_where_trees_go_never_the_manifest(pbx, tmp_path, capsys):
    pbx.save_job()
    path = pbx.backup()
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("must survive")
    outside = tree_hashes(str(sentinel))

    def point_outside(manifest):
        for src in manifest["sources"]:
            if src["category"] == "announcements":
                src["origin"] = str(sentinel)
    crafted = str(tmp_path / "crafted.sar")
    repack(path, crafted, point_outside)
    pbx.change()
    changed = pbx.snapshot()
    assert pbx.sar("verify", crafted, "--trust", "any") == 1
    assert "do not match this host's profile" in capsys.readouterr().out
    assert pbx.sar("restore", crafted, "--yes", "--trust", "any") == 1
    msg = capsys.readouterr().err
    assert "was archived from %s" % sentinel in msg and "scratch" in msg
    assert tree_hashes(str(sentinel)) == outside
    assert pbx.snapshot() == changed

    # Into a scratch directory: the trees land there, by the manifest's member names, nothing else changes.
    scratch = tmp_path / "look"
    assert pbx.sar("restore", crafted, "--yes", "--trust", "any", "--scratch-dir", str(scratch)) == 0
    assert tree_hashes(str(sentinel)) == outside
    assert pbx.snapshot() == changed
    assert tree_hashes(str(scratch / "files" / "announcements" / "0")) == tree_hashes(pbx_original_announcements(pbx, path, tmp_path))
    assert os.path.isfile(scratch / "db" / "core.pgdump")
    assert oct(os.stat(scratch).st_mode & 0o777) == "0o700"
    # A scratch directory inside the appliance's data is refused before anything happens.
    inside = os.path.join(pbx.paths("core")[0], "look")
    assert pbx.sar("restore", crafted, "--yes", "--trust", "any", "--scratch-dir", inside) == 2
    assert "overlaps the profile's path" in capsys.readouterr().err
    assert not os.path.exists(inside)


def test_profile_changed_since_the_backup_is_refused_naming_the_mismatch(pbx, tmp_path, capsys):
    pbx.save_job()
    path = pbx.backup()
    before = pbx.snapshot()
    moved = str(tmp_path / "moved-announcements")
    os.rename(pbx.paths("announcements")[0], moved)
    settings = json.loads(json.dumps(pbx.settings))
    settings["profile"]["categories"]["announcements"]["paths"] = [moved]
    pbx.store.write_settings(settings)
    assert pbx.sar("restore", path, "--yes") == 1
    err = capsys.readouterr().err
    assert "the profile puts it at %s" % moved in err
    assert pbx.snapshot()["db"] == before["db"]
    # Only the categories that match: fine.
    assert pbx.sar("restore", path, "--yes", "--data", "core", "cdr_voicemail") == 0


def test_module_trusted_keys_and_info_public_key(pbx, tmp_path):
    pbx.save_job()
    path = pbx.backup()
    other = other_host(pbx, tmp_path)
    result = run_playbook([
        {"name": "Keys", "sar.backup.sar_backup_info": {"config_dir": pbx.store.config_dir}, "register": "own"},
        {"name": "Refused", "sar.backup.sar_backup_restore": {"config_dir": other.config_dir, "path": path,
                                                              "verify_only": True}, "ignore_errors": True},
        {"name": "Trusted", "sar.backup.sar_backup_restore": {"config_dir": other.config_dir, "path": path,
                                                              "verify_only": True,
                                                              "trusted_keys": ["{{ own.public_key }}"]}},
    ], str(tmp_path))
    res = result.results()
    assert result.rc == 0, result.stdout + result.stderr
    assert res["Keys"]["public_key"] == signing.host_public_key(pbx.store.config_dir)
    assert res["Keys"]["public_key_fingerprint"].startswith("SHA256:")
    assert res["Refused"]["failed"] and res["Refused"]["code"] == "verifyFailed"
    assert "does not trust" in res["Refused"]["msg"]
    sig = res["Trusted"]["archive"]["signature"]
    assert sig["signed"] and sig["trusted"] and sig["trusted_by"] == "trusted_keys"
