#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations

DOCUMENTATION = r"""
module: sar_backup_job
short_description: Declare a backup job on a PBX appliance
description:
  - Saves a backup job (the appliance's "backup configuration", web UI steps 1 to 3) on the host, as
    C(<config_dir>/jobs/<name>.json) (mode 0600, written atomically), or removes it.
  - Idempotent; supports check and diff mode. Secrets are stored only in the job file, never returned; the diff shows
    them as changed or unchanged only.
  - Scheduled jobs are run by the C(sar-backup@.service) and C(sar-backup-<name>.timer) units the
    P(sar.backup.sar_backup#role) role installs; M(sar.backup.sar_backup_run) runs a job now.
  - Warns when another job on the host is scheduled at the same minute (backup runs never overlap; the later one is deferred).
version_added: 0.1.0
author:
  - sar-backup engineers (@sar-backup)
extends_documentation_fragment:
  - sar.backup.common
  - sar.backup.job
attributes:
  check_mode:
    support: full
    description: Reports what would change without writing.
  diff_mode:
    support: full
    description: Shows the job before and after; secrets only as changed or unchanged.
seealso:
  - module: sar.backup.sar_backup_run
  - module: sar.backup.sar_backup_settings
"""

EXAMPLES = r"""
- name: Nightly backup of everything to the appliance's disk and a Windows share
  sar.backup.sar_backup_job:
    name: nightly
    interval: daily
    start: "2026-12-01 02:30"
    data: [core, cdr_voicemail, announcements]
    report_to: ops@example.com
    targets:
      - type: local
        keep: 3
      - type: smb
        server: 192.0.2.6
        share: Backup_Starface/pbx01
        username: EXAMPLE\backup
        password: "{{ vault_smb_password }}"

- name: Weekly encrypted backup to SFTP with a pinned host key
  sar.backup.sar_backup_job:
    name: weekly-offsite
    interval: weekly
    start: "2026-12-06 03:00"
    encryption:
      recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
    targets:
      - type: sftp
        server: sftp.example.com
        username: pbx
        private_key: "{{ lookup('file', 'keys/pbx_ed25519') }}"
        host_key: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"
        path: /archiv

- name: Remove a job
  sar.backup.sar_backup_job:
    name: old-job
    state: absent
"""

RETURN = r"""
job:
  description: The normalized job as saved (every option, defaults applied), secrets replaced by C(********).
  returned: when O(state=present)
  type: dict
  sample: {"name": "nightly", "interval": "daily", "start": "2026-12-01 02:30", "data": ["core"],
           "targets": [{"type": "local", "path": null, "keep": 7, "verify": "size"}]}
schedule:
  description: When the job runs on its own.
  returned: when O(state=present)
  type: dict
  contains:
    on_calendar:
      description: systemd C(OnCalendar=) expressions of the job's timer (one per line of the timer; empty for V(manual)).
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
path:
  description: The job file on the host.
  returned: always
  type: str
  sample: /etc/sar-backup/jobs/nightly.json
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sar.backup.plugins.module_utils import schedule
from ansible_collections.sar.backup.plugins.module_utils.info import schedule_info
from ansible_collections.sar.backup.plugins.module_utils.errors import SarError, ValidationError
from ansible_collections.sar.backup.plugins.module_utils.job import (
    argument_spec, diff_view, mask, params_to_raw, validate_job, validate_name,
)
from ansible_collections.sar.backup.plugins.module_utils.store import Store


def main():
    spec = argument_spec()
    spec["config_dir"] = {"type": "path"}
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    store = Store(module.params["config_dir"])
    try:
        name = validate_name(module.params["name"])
        path = store.job_path(name)
        existing = store.read_job(name)
        if module.params["state"] == "absent":
            changed = existing is not None
            if changed and not module.check_mode:
                store.delete_job(name)
            before, _after = diff_view(existing, {})
            module.exit_json(changed=changed, path=path, diff={"before": before if existing else {}, "after": {}})
        job = validate_job(params_to_raw(module.params))
        changed = existing != job
        if not changed and os.stat(path).st_mode & 0o777 != 0o600:
            changed = True  # a job file readable by others is fixed, and that is a change
        if changed and not module.check_mode:
            store.write_job(job)
        others = [j for j in (store.read_job(n) for n in store.job_names() if n != name) if j]
        for warning in schedule.clashes(job, others):
            module.warn(warning)
        before, after = diff_view(existing or {}, job)
        module.exit_json(changed=changed, job=mask(job), schedule=schedule_info(job), path=path,
                         diff={"before": before if existing else {}, "after": after})
    except ValidationError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    except SarError as exc:
        module.fail_json(msg=str(exc), code=exc.code)
    except OSError as exc:
        module.fail_json(msg="cannot write the job: %s" % exc)


if __name__ == "__main__":
    main()
