# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""Runs sar_backup_run on the host, then (fetch_to) downloads the archive to the
controller and checks its SHA-256 there."""

from __future__ import annotations

import os
import re
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.sar.backup.plugins.module_utils.fsutil import sha256_file

ARCHIVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.sar$")
SAFE_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")


def _sha256(path: str) -> str:
    return sha256_file(path)[0].hexdigest()


class ActionModule(ActionBase):
    TRANSFERS_FILES = True
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = True
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = dict(self._task.args)
        fetch_to = args.pop("fetch_to", None)
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        if fetch_to and self._task.async_val:
            raise AnsibleActionFail("fetch_to cannot be combined with async: run with async, then fetch with a second task")
        if fetch_to and not self._task.check_mode:
            args["keep_archive"] = True
        result.update(self._execute_module(module_name="sar.backup.sar_backup_run", module_args=args,
                                           task_vars=task_vars, wrap_async=wrap_async))
        if not fetch_to or self._task.check_mode or result.get("failed") or wrap_async:
            if not wrap_async:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            return result
        try:
            result["fetched_path"] = self._fetch(result.get("archive") or {}, fetch_to, task_vars)
        finally:
            archive = result.get("archive") or {}
            if archive.get("temporary") and archive.get("path"):
                self._execute_module(module_name="ansible.legacy.file",
                                     module_args={"path": archive["path"], "state": "absent"}, task_vars=task_vars)
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _fetch(self, archive: dict, fetch_to: str, task_vars: dict) -> str:
        name, remote, sha256 = archive.get("name"), archive.get("path"), archive.get("sha256")
        if not (name and remote and sha256):
            raise AnsibleActionFail("the run left no archive on the host to fetch")
        host = str(task_vars.get("inventory_hostname", "localhost"))
        # Never let a host or archive name steer the download outside fetch_to.
        if not ARCHIVE_NAME.match(name) or not SAFE_HOST.match(host) or ".." in host:
            raise AnsibleActionFail("refusing to fetch %r for host %r: unsafe name" % (name, host))
        dest_dir = os.path.join(os.path.abspath(os.path.expanduser(fetch_to)), host)
        os.makedirs(dest_dir, mode=0o700, exist_ok=True)
        dest = os.path.join(dest_dir, name)
        source = remote
        if self._connection.become:
            # The archive is root-only; hand a private copy to the connecting user.
            tmpdir = self._make_tmp_path()
            source = self._connection._shell.join_path(tmpdir, name)
            user = self._get_remote_user()
            res = self._execute_module(module_name="ansible.legacy.command",
                                       module_args={"argv": ["install", "-m", "0600", "-o", user, remote, source]},
                                       task_vars=task_vars)
            if res.get("failed") or res.get("rc"):
                raise AnsibleActionFail("cannot hand the archive over for download: %s" % (res.get("msg") or res.get("stderr")))
        fd, partial = tempfile.mkstemp(prefix=".%s." % name, suffix=".partial", dir=dest_dir)
        os.close(fd)
        try:
            self._connection.fetch_file(source, partial)
            got = _sha256(partial)
            if got != sha256:
                raise AnsibleActionFail("downloaded %s has SHA-256 %s, the host reported %s" % (name, got, sha256))
            os.chmod(partial, 0o600)
            os.replace(partial, dest)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return dest
