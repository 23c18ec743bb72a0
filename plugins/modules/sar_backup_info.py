#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations

DOCUMENTATION = r"""
module: sar_backup_info
short_description: List the backup jobs of a PBX appliance, their last run and their archives
description:
  - Returns the jobs saved on the host with M(sar.backup.sar_backup_job) (secrets replaced by C(********)), when each
    runs next, and the status of its last run (the content of its status file).
  - With O(archives=true), also logs in to every target of every listed job and returns the archives found there
    (name, size, time), newest first. A target that cannot be listed (server not reachable, login refused, Python
    library missing) does not fail the module; it is returned in RV(unreachable_targets) with its result code, and a warning
    says so.
  - Never changes anything. The one exception is the one a run makes too - an V(sftp) target with
    C(host_key_policy=accept_new) remembers the server's key on first contact in C(<config_dir>/known_hosts).
  - A job file that cannot be read or is invalid (edited by hand) does not hide the others; its entry carries RV(jobs[].error)
    instead of RV(jobs[].job), and a warning says so.
version_added: 0.1.0
author:
  - sar-backup engineers (@sar-backup)
extends_documentation_fragment:
  - sar.backup.common
attributes:
  check_mode:
    support: full
    description: Can run in check mode and return the same data.
    details:
      - This action does not modify state.
  diff_mode:
    support: none
    description: Nothing to diff.
    details:
      - This action does not modify state.
options:
  name:
    description:
      - Report only on these saved jobs (in this order). Not given or empty - every saved job.
      - A name that is not a saved job fails the module.
    type: list
    elements: str
  archives:
    description:
      - Also list the archives on every target of the reported jobs (RV(archives), RV(unreachable_targets)).
      - This connects to each target (SMB, SFTP, Dropbox, USB), as a run would, with the job's credentials.
        V(email) targets have nothing to list.
    type: bool
    default: false
seealso:
  - module: sar.backup.sar_backup_job
  - module: sar.backup.sar_backup_run
"""

EXAMPLES = r"""
- name: Every job, its schedule and its last run
  sar.backup.sar_backup_info:
  register: backup_info

- name: Fail when the last run of a job did not succeed
  ansible.builtin.assert:
    that: item.last_run is not none and item.last_run.code == "successful"
    fail_msg: "backup job {{ item.name }}: {{ item.last_run.code | default('never ran') }}"
  loop: "{{ backup_info.jobs }}"
  loop_control:
    label: "{{ item.name }}"

- name: The archives of the job "nightly" on all its targets
  sar.backup.sar_backup_info:
    name: [nightly]
    archives: true
  register: nightly

- name: Newest archive of that job
  ansible.builtin.debug:
    msg: "{{ (nightly.archives | first).name }} on {{ (nightly.archives | first).location }}"
  when: nightly.archives | length > 0
"""

RETURN = r"""
public_key:
  description:
    - The host's archive signing key (C(ed25519:<base64>)), or null before its first backup made one. Collect these
      from a fleet to restore one appliance's archives on another (M(sar.backup.sar_backup_restore) O(sar.backup.sar_backup_restore#module:trusted_keys)).
  returned: always
  type: str
  sample: "ed25519:5b2m8y3+6N0asiiIz2+jyPLqJGqi87MWSzlOGCNKNa4="
public_key_fingerprint:
  description: Its fingerprint (C(SHA256:...)), or null.
  returned: always
  type: str
jobs:
  description: The saved jobs (all, or those in O(name)), sorted by name unless O(name) gives an order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Job name.
      type: str
      sample: nightly
    job:
      description: The normalized job as saved, secrets replaced by C(********); null when the job file is invalid.
      type: dict
      sample: {"name": "nightly", "interval": "daily", "start": "2026-12-01 02:30", "data": ["core"],
               "targets": [{"type": "local", "path": null, "keep": 7, "verify": "size"}]}
    schedule:
      description: When the job runs on its own; null when the job file is invalid.
      type: dict
      contains:
        on_calendar:
          description: systemd C(OnCalendar=) expressions of the job's timer (empty for V(manual)).
          type: list
          elements: str
          sample: ["*-*-* 02:30:00"]
        next_runs:
          description: The next 3 start times, ISO 8601 with UTC offset (empty for V(manual)).
          type: list
          elements: str
          sample: ["2026-12-01T02:30:00+01:00", "2026-12-02T02:30:00+01:00", "2026-12-03T02:30:00+01:00"]
        drill:
          description: When the job's restore drills run on their own (C(drill) option); the role writes the timer
            C(sar-backup-drill-<job>.timer) from it.
          type: dict
          contains:
            on_calendar:
              description: systemd C(OnCalendar=) expressions of the drill timer (empty without a drill or for V(manual)).
              type: list
              elements: str
              sample: ["Sun *-*-* 05:00:00"]
            next_runs:
              description: The next 3 drill times, ISO 8601 with UTC offset (empty without a scheduled drill).
              type: list
              elements: str
              sample: ["2026-12-06T05:00:00+01:00", "2026-12-13T05:00:00+01:00", "2026-12-20T05:00:00+01:00"]
    last_run:
      description:
        - The job's status file (C(<status_dir>/<name>.json)) as written by its last run, or null when it never ran.
        - Holds among others C(code), C(success), C(started), C(finished), C(duration), C(last_success), C(archive)
          and C(targets) (per target C(type), C(location), C(status), C(code), C(error)).
      type: dict
      sample: {"job": "nightly", "code": "successful", "success": true, "started": "2026-12-01T02:30:00+01:00",
               "finished": "2026-12-01T02:31:12+01:00", "last_success": "2026-12-01T02:31:12+01:00"}
    error:
      description: Why the job file (or its status file) could not be used. Absent when everything could be read.
      type: str
      returned: when the job file or the status file cannot be read or is invalid
      sample: "job file /etc/sar-backup/jobs/old.json is invalid: interval: must be one of manual, hourly, ..."
archives:
  description: The archives of the reported jobs on their targets, newest first.
  returned: when O(archives=true)
  type: list
  elements: dict
  contains:
    job:
      description: Job name.
      type: str
      sample: nightly
    target:
      description: Index of the target in the job's O(sar.backup.sar_backup_job#module:targets) (from 0).
      type: int
      sample: 0
    type:
      description: Target type.
      type: str
      sample: local
    location:
      description: Where the target writes, without secrets.
      type: str
      sample: /var/lib/sar-backup/archives
    name:
      description: Archive name, C(<job>_<host>_<YYYYMMDDTHHMMSSZ>.sar).
      type: str
      sample: nightly_pbx01_20261201T013000Z.sar
    size:
      description: Bytes.
      type: int
      sample: 48213377
    created:
      description: When the archive was made (the UTC time in its name), ISO 8601 with UTC offset.
      type: str
      sample: "2026-12-01T02:30:00+01:00"
unreachable_targets:
  description:
    - Targets whose archives could not be listed; the module still succeeds (and warns).
    - Not called C(unreachable) - Ansible reserves that result key for hosts it cannot reach.
  returned: when O(archives=true)
  type: list
  elements: dict
  contains:
    job:
      description: Job name.
      type: str
    target:
      description: Index of the target in the job.
      type: int
    type:
      description: Target type.
      type: str
    location:
      description: Where the target writes, without secrets.
      type: str
    code:
      description: Result code (C(connectFailed), C(authFailed), C(mountfail), C(hostKeyUnknown), C(missingLibrary), ...).
      type: str
      sample: connectFailed
    error:
      description: What went wrong.
      type: str
      sample: "cannot connect to SFTP server sftp.example.com:22: Connection refused"
runtime:
  description: The installed runtime's C(sar-backup) command the module ran through, when the Python Ansible picked
    lacked a library (see the collection's docs/role.md); absent when the module did the work itself.
  returned: when the work was handed to the runtime
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.sar.backup.plugins.module_utils.calls import execute


def describe_missing(exc) -> str:
    return "%s: %s (or install the runtime with the role sar.backup.sar_backup: the module then runs through it)" % (
        exc.needed_for, missing_required_lib(exc.library))


def main():
    spec = {
        "config_dir": {"type": "path"},
        "name": {"type": "list", "elements": "str"},
        "archives": {"type": "bool", "default": False},
    }
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    execute(module, "sar_backup_info", describe_missing)


if __name__ == "__main__":
    main()
