# SPDX-License-Identifier: GPL-3.0-or-later
"""sources.find_tool: which PostgreSQL client program a run calls, on a file system laid out as
Debian's postgresql-common lays it out (/usr/lib/postgresql/<version>/bin, and PATH's programs
linked to the pg_wrapper dispatcher)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.sar.backup.plugins.module_utils import sources
from ansible_collections.sar.backup.plugins.module_utils.errors import SourceError

HOST = {"database": {"host": "/var/run/postgresql", "port": 5432, "name": "asterisk"}}
NO_HOST = {"database": {"port": 5432, "name": "asterisk"}}


def _program(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def debian(tmp_path, monkeypatch):
    """binroot with versions 9.6, 13 and 15 (pg_restore only in 9.6 and 13), and a PATH whose psql, pg_dump and
    pg_restore link to pg_wrapper, as postgresql-common installs them."""
    root = tmp_path / "lib" / "postgresql"
    for version, programs in (("9.6", ("psql", "pg_dump", "pg_restore")), ("13", ("psql", "pg_dump", "pg_restore")),
                              ("15", ("psql", "pg_dump"))):
        for name in programs:
            _program(str(root / version / "bin" / name))
    wrapper = _program(str(tmp_path / "share" / "postgresql-common" / "pg_wrapper"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("psql", "pg_dump", "pg_restore"):
        os.symlink(os.path.relpath(wrapper, str(bindir)), str(bindir / name))
    monkeypatch.setattr(sources, "_PG_BINROOT", str(root))
    monkeypatch.setenv("PATH", str(bindir))
    return {"root": str(root), "bin": str(bindir)}


def test_a_named_host_calls_the_newest_version_as_pg_wrapper_would(debian):
    assert sources.find_tool("pg_dump", HOST) == os.path.join(debian["root"], "15", "bin", "pg_dump")
    assert sources.find_tool("psql", HOST) == os.path.join(debian["root"], "15", "bin", "psql")


def test_the_newest_version_that_has_the_program_is_taken(debian):
    # pg_wrapper's get_newest_version(program): 13 has pg_restore, 15 does not; 13 > 9.6 by number, not by text.
    assert sources.find_tool("pg_restore", HOST) == os.path.join(debian["root"], "13", "bin", "pg_restore")


def test_without_a_host_the_wrapper_chooses_the_cluster(debian):
    assert sources.find_tool("pg_dump", NO_HOST) == os.path.join(debian["bin"], "pg_dump")


def test_a_program_on_path_that_is_not_the_wrapper_is_kept(debian, tmp_path, monkeypatch):
    own = tmp_path / "own"
    _program(str(own / "pg_dump"))
    monkeypatch.setenv("PATH", "%s:%s" % (own, debian["bin"]))
    assert sources.find_tool("pg_dump", HOST) == str(own / "pg_dump")


def test_the_wrapper_stays_when_no_version_is_installed(debian, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_PG_BINROOT", str(tmp_path / "nothing"))
    assert sources.find_tool("psql", HOST) == os.path.join(debian["bin"], "psql")


def test_pg_bin_dir_wins_over_everything(debian, tmp_path):
    own = _program(str(tmp_path / "pg12" / "pg_dump"))
    profile = {"database": dict(HOST["database"], pg_bin_dir=os.path.dirname(own))}
    assert sources.find_tool("pg_dump", profile) == own


def test_without_path_or_pg_bin_dir_the_newest_installed_is_found(debian, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert sources.find_tool("pg_dump", NO_HOST) == os.path.join(debian["root"], "15", "bin", "pg_dump")
    with pytest.raises(SourceError, match=r"^PostgreSQL client pg_ctl not found \(PATH, .*/lib/postgresql/\*/bin\)"):
        sources.find_tool("pg_ctl", NO_HOST)
