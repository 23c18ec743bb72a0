#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations

DOCUMENTATION = r"""
module: sar_backup_settings
short_description: The sar-backup settings of a PBX appliance
description:
  - Manages C(<config_dir>/settings.json) (mode 0600, written atomically) - the appliance profile (what each data
    category contains and how to reach the database), the SMTP relay for reports and the e-mail target, and paths.
  - Declarative - an option that is not given takes its documented default, so the task describes the whole settings.
  - Idempotent; supports check and diff mode. Passwords are never returned; the diff shows them as changed or unchanged.
version_added: 0.1.0
author:
  - sar-backup engineers (@sar-backup)
extends_documentation_fragment:
  - sar.backup.common
attributes:
  check_mode:
    support: full
    description: Reports what would change without writing.
  diff_mode:
    support: full
    description: Shows the settings before and after; secrets only as changed or unchanged.
options:
  profile:
    description:
      - The appliance profile; maps each data category to its sources. Defaults describe a STARFACE-like appliance
        (see the collection's C(docs/profile.md)).
    type: dict
    suboptions:
      database:
        description: How to reach the PBX database with C(pg_dump).
        type: dict
        suboptions:
          host:
            description: Unix socket directory or host name. Default C(/var/run/postgresql).
            type: str
          port:
            description: Default V(5432).
            type: int
          user:
            description: Default V(postgres).
            type: str
          password:
            description: Password, passed to C(pg_dump) through a private password file, never in arguments or environment.
            type: str
          name:
            description: Database name. Default V(asterisk).
            type: str
          pg_bin_dir:
            description: Directory of C(pg_dump)/C(pg_restore); default the C(PATH), else the newest C(/usr/lib/postgresql/*/bin).
            type: path
          restore_role:
            description:
              - Role a restore runs as (C(SET ROLE) from the restore's own first SQL file, never from the archive) after
                connecting as O(profile.database.user). Give a role that owns the appliance's tables but is no superuser
                and no member of C(pg_execute_server_program), C(pg_read_server_files) or C(pg_write_server_files), so
                that server-side programs and files stay out of a restore's reach even beyond the dump check.
              - Default none, the restore runs as O(profile.database.user); a restore logs when that role is a superuser
                or such a member (the dump check is then the only guard).
            type: str
      categories:
        description:
          - Per category (V(core), V(cdr_voicemail), V(announcements)) the tables to dump and the file trees to archive.
            A category given here replaces its default mapping; one not given keeps its default.
          - C(tables) dumps only those tables, C(exclude_tables) the whole database except those (C(pg_dump) C(-t)/C(-T)
            patterns); with neither the category has no database dump. C(paths) are absolute directories.
        type: dict
        suboptions:
          core:
            description: Users, groups, number assignments, chat history and configuration.
            type: dict
            suboptions: &category
              tables:
                description: C(pg_dump -t) patterns.
                type: list
                elements: str
              exclude_tables:
                description: C(pg_dump -T) patterns.
                type: list
                elements: str
              paths:
                description: File trees (absolute paths).
                type: list
                elements: path
          cdr_voicemail:
            description: Call detail records and voicemail.
            type: dict
            suboptions: *category
          announcements:
            description: User-made announcement audio.
            type: dict
            suboptions: *category
  smtp:
    description: The SMTP relay for run reports and the V(email) target. TLS certificates are always verified.
    type: dict
    suboptions:
      host:
        description: Relay host name or address.
        type: str
      port:
        description: Default V(465) with O(smtp.security=tls), else V(25).
        type: int
      security:
        description: V(starttls) (default), V(tls) (implicit TLS) or V(none).
        type: str
        choices: [starttls, tls, none]
      username:
        description: Login, if the relay needs one.
        type: str
      password:
        description: Password for O(smtp.username).
        type: str
      from:
        description: Sender address. Default C(sar-backup@<host fqdn>).
        type: str
      cafile:
        description: CA bundle that signs the relay's certificate (default the system's).
        type: path
      timeout:
        description: Seconds. Default V(30).
        type: int
  archive_dir:
    description: Default base directory of V(local) targets.
    type: path
    default: /var/lib/sar-backup/archives
  staging_dir:
    description: Where archives are built before delivery; needs free space for one archive plus database dumps.
    type: path
    default: /var/lib/sar-backup/staging
  status_dir:
    description: Where each run leaves C(<job>.json) for monitoring.
    type: path
    default: /var/lib/sar-backup/status
  lock_path:
    description: The maintenance lock shared with the appliance's archiving (an exclusive C(flock)).
    type: path
    default: /run/lock/sar-backup.lock
  metrics_path:
    description: Prometheus textfile; default C(<status_dir>/sar_backup.prom).
    type: path
seealso:
  - module: sar.backup.sar_backup_job
"""

EXAMPLES = r"""
- name: Settings of a STARFACE appliance with a relay and a bigger staging disk
  sar.backup.sar_backup_settings:
    staging_dir: /srv/sar-staging
    smtp:
      host: mail.example.com
      security: starttls
      username: pbx01
      password: "{{ vault_smtp_password }}"
      from: pbx01@example.com

- name: A non-default appliance layout
  sar.backup.sar_backup_settings:
    profile:
      database:
        name: pbx
        user: backup
        password: "{{ vault_db_password }}"
      categories:
        announcements:
          paths: [/srv/pbx/sounds/custom]
"""

RETURN = r"""
settings:
  description: The effective settings (every default filled in), passwords replaced by C(********).
  returned: success
  type: dict
  sample: {"archive_dir": "/var/lib/sar-backup/archives", "lock_path": "/run/lock/sar-backup.lock"}
path:
  description: The settings file.
  returned: success
  type: str
  sample: /etc/sar-backup/settings.json
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.sar.backup.plugins.module_utils.errors import SarError, ValidationError
from ansible_collections.sar.backup.plugins.module_utils.job import diff_view, mask
from ansible_collections.sar.backup.plugins.module_utils.store import Store, validate_settings

SETTING_KEYS = ("profile", "smtp", "archive_dir", "staging_dir", "status_dir", "lock_path", "metrics_path")


def _argument_spec() -> dict:
    category = {"type": "dict", "options": {
        "tables": {"type": "list", "elements": "str"},
        "exclude_tables": {"type": "list", "elements": "str"},
        "paths": {"type": "list", "elements": "path"},
    }}
    return {
        "config_dir": {"type": "path"},
        "profile": {"type": "dict", "options": {
            "database": {"type": "dict", "options": {
                "host": {"type": "str"},
                "port": {"type": "int"},
                "user": {"type": "str"},
                "password": {"type": "str", "no_log": True},
                "name": {"type": "str"},
                "pg_bin_dir": {"type": "path"},
                "restore_role": {"type": "str"},
            }},
            "categories": {"type": "dict", "options": {
                "core": category, "cdr_voicemail": category, "announcements": category,
            }},
        }},
        "smtp": {"type": "dict", "options": {
            "host": {"type": "str"},
            "port": {"type": "int"},
            "security": {"type": "str", "choices": ["starttls", "tls", "none"]},
            "username": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "from": {"type": "str"},
            "cafile": {"type": "path"},
            "timeout": {"type": "int"},
        }},
        "archive_dir": {"type": "path", "default": "/var/lib/sar-backup/archives"},
        "staging_dir": {"type": "path", "default": "/var/lib/sar-backup/staging"},
        "status_dir": {"type": "path", "default": "/var/lib/sar-backup/status"},
        "lock_path": {"type": "path", "default": "/run/lock/sar-backup.lock"},
        "metrics_path": {"type": "path"},
    }


def _strip_none(value):
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    return value


def main():
    module = AnsibleModule(argument_spec=_argument_spec(), supports_check_mode=True)
    store = Store(module.params["config_dir"])
    raw = {k: _strip_none(module.params[k]) for k in SETTING_KEYS if module.params[k] is not None}
    try:
        wanted = validate_settings(raw)
        existing = store.read_settings_raw()
        changed = existing != wanted
        if not changed and os.stat(store.settings_path).st_mode & 0o777 != 0o600:
            changed = True
        if changed and not module.check_mode:
            store.write_settings(wanted)
        before, after = diff_view(existing or {}, wanted)
        module.exit_json(changed=changed, settings=mask(wanted), path=store.settings_path,
                         diff={"before": before if existing else {}, "after": after})
    except ValidationError as exc:
        module.fail_json(msg=str(exc), field=exc.field)
    except (SarError, OSError) as exc:
        module.fail_json(msg="cannot write the settings: %s" % exc)


if __name__ == "__main__":
    main()
