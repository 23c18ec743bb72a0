# SPDX-License-Identifier: GPL-3.0-or-later
"""restore._remove_tree: what a killed restore or a refused archive left is removed whatever its shape."""

from __future__ import annotations

import os
import stat
import sys

from ansible_collections.sar.backup.plugins.module_utils.restore import _remove_tree


def test_removes_a_tree_deeper_than_the_recursion_limit(tmp_path):
    depth = sys.getrecursionlimit() + 500
    fd = os.open(str(tmp_path), os.O_RDONLY)
    try:
        for _level in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as handle:
            handle.write(b"x")
    finally:
        os.close(fd)
    _remove_tree(str(tmp_path / "d"))
    assert os.listdir(str(tmp_path)) == []


def test_removes_read_only_directories_and_keeps_what_links_point_to(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    root = tmp_path / "root"
    (root / "ro" / "sub").mkdir(parents=True)
    (root / "ro" / "sub" / "f").write_bytes(b"x")
    (root / "ro" / "link").symlink_to(str(outside))
    os.chmod(str(root / "ro" / "sub"), stat.S_IRUSR | stat.S_IXUSR)
    os.chmod(str(root / "ro"), stat.S_IRUSR | stat.S_IXUSR)
    _remove_tree(str(root))
    assert not os.path.lexists(str(root))
    assert (outside / "keep").read_bytes() == b"k"


def test_a_file_or_a_missing_path(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    _remove_tree(str(tmp_path / "f"))
    _remove_tree(str(tmp_path / "missing"))
    (tmp_path / "l").symlink_to(str(tmp_path))
    _remove_tree(str(tmp_path / "l"))
    assert os.listdir(str(tmp_path)) == []
