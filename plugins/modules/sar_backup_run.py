#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations

DOCUMENTATION = r"""
module: sar_backup_run
short_description: Run a backup job now
description:
  - Runs a saved job (O(job)) or an inline one (O(definition), web UI step 4 "run only") on the appliance - takes the
    maintenance lock, dumps the database and archives the file trees into one C(.sar) in the staging directory, writes it
    to every target in parallel, verifies it, applies retention, writes the status file and cleans up.
  - Fails when any target failed; the other targets still receive the archive. A failed run still returns the archive
    (when it was built) and every target's result.
  - Check mode is a dry run - resolves the sources, estimates the size, checks the maintenance lock and logs in to every
    target (writing nothing that stays).
  - With O(fetch_to), the archive is downloaded to the controller after a successful run and its SHA-256 checked there.
  - Supports C(async) (without O(fetch_to)).
version_added: 0.1.0
author:
  - sar-backup engineers (@sar-backup)
extends_documentation_fragment:
  - sar.backup.common
  - sar.backup.job.DEFINITION
attributes:
  check_mode:
    support: full
    description: A dry run; nothing is written.
  diff_mode:
    support: none
    description: Nothing to diff.
  action:
    support: full
    description: The action plugin adds O(fetch_to).
  async:
    support: full
    description: Runs can be long; use C(async)/C(poll) (not with O(fetch_to)).
options:
  job:
    description:
      - Name of a job saved with M(sar.backup.sar_backup_job). Mutually exclusive with O(definition).
    type: str
  wait:
    description:
      - How long to wait for the maintenance lock (appliance archiving or another backup). V(0) fails at once with
        code C(alreadyRunning). Seconds or V(30s), V(5m), V(1h).
    type: raw
    default: 0
  keep_archive:
    description:
      - Leave the archive in the staging directory when no V(local) target holds a copy (RV(archive.path) then points at it).
        O(fetch_to) sets this and removes that copy after the download.
    type: bool
    default: false
  fetch_to:
    description:
      - Controller directory; after a successful run the archive is downloaded to C(<fetch_to>/<inventory_hostname>/<archive name>)
        and its SHA-256 checked. Handled by the action plugin.
    type: path
seealso:
  - module: sar.backup.sar_backup_job
"""

EXAMPLES = r"""
- name: Run the saved job "nightly" now and download the archive
  sar.backup.sar_backup_run:
    job: nightly
    wait: 10m
    fetch_to: "{{ playbook_dir }}/backups"

- name: Run once without saving the configuration (seed "Effectuer uniquement la sauvegarde")
  sar.backup.sar_backup_run:
    definition:
      name: before-upgrade
      data: [core, cdr_voicemail, announcements]
      targets:
        - type: local

- name: Dry run - sources, size estimate, target logins
  sar.backup.sar_backup_run:
    job: nightly
  check_mode: true
"""

RETURN = r"""
archive:
  description: The archive built by the run (also on failure, when it was built).
  returned: when the archive was built, or in check mode (name only)
  type: dict
  contains:
    name:
      description: C(<job>_<host>_<YYYYMMDDTHHMMSSZ>.sar).
      type: str
      sample: nightly_pbx01_20261128T023000Z.sar
    size:
      description: Bytes.
      type: int
    sha256:
      description: SHA-256 of the whole file.
      type: str
    created:
      description: ISO 8601 time with UTC offset.
      type: str
    path:
      description: The archive on the host when a copy remains there (a V(local) target, or O(keep_archive)), else null.
      type: str
fetched_path:
  description: Where the archive landed on the controller.
  returned: with O(fetch_to), after a successful run
  type: str
  sample: /srv/backups/pbx01/nightly_pbx01_20261128T023000Z.sar
targets:
  description: One entry per target, in the job's order.
  returned: always
  type: list
  elements: dict
  contains:
    type:
      description: Target type.
      type: str
    location:
      description: Where it writes, without secrets.
      type: str
    status:
      description: V(ok) or V(failed).
      type: str
    code:
      description: Result code (C(successful), C(mountfail), C(authFailed), C(sftpRightProblem), C(connectFailed), ...).
      type: str
    bytes:
      description: Bytes written.
      type: int
    seconds:
      description: Time spent on this target.
      type: float
    error:
      description: What went wrong, or null.
      type: str
    pruned:
      description: Archives removed by retention.
      type: list
      elements: str
    would_prune:
      description: Check mode - the archives retention would remove after this run's archive is written.
      type: list
      elements: str
code:
  description: The run's result code; C(successful) only when every target succeeded.
  returned: always
  type: str
  sample: successful
duration:
  description: Seconds the run took.
  returned: always
  type: float
estimated_size:
  description: Check mode - estimated bytes of the sources.
  returned: in check mode
  type: int
public_key:
  description: The host's archive signing key (C(ed25519:...)); the archive carries its signature.
  returned: when the run got as far as the status file
  type: str
runtime:
  description: The installed runtime's C(sar-backup) command the module ran through, when the Python Ansible picked
    lacked a library (see the collection's docs/role.md); absent when the module did the work itself.
  returned: when the work was handed to the runtime
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.sar.backup.plugins.module_utils.calls import execute
from ansible_collections.sar.backup.plugins.module_utils.job import argument_spec


def describe_missing(exc) -> str:
    return "%s: %s (or install the runtime with the role sar.backup.sar_backup: the module then runs through it)" % (
        exc.needed_for, missing_required_lib(exc.library))


def main():
    spec = {
        "config_dir": {"type": "path"},
        "job": {"type": "str"},
        "definition": {"type": "dict", "options": argument_spec()},
        "wait": {"type": "raw", "default": 0},
        "keep_archive": {"type": "bool", "default": False},
        "fetch_to": {"type": "path"},
    }
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           mutually_exclusive=[("job", "definition")], required_one_of=[("job", "definition")])
    execute(module, "sar_backup_run", describe_missing)


if __name__ == "__main__":
    main()
