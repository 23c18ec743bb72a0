# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations


class ModuleDocFragment:
    # The job options (sar_backup_job), written once.
    DOCUMENTATION = r"""
options:
  name:
    description:
      - Name of the backup job (web UI step 1), 1 to 64 characters of V(A-Z a-z 0-9 . _ -), starting with a letter or digit.
      - It names the folder C(starface-backup/<name>/) on every target and the archives C(<name>_<host>_<UTC time>.sar).
    type: str
    required: true
  state:
    description:
      - V(present) saves the job, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  report_to:
    description:
      - E-mail addresses that receive the run report (web UI step 1 "error report to"). Uses the SMTP relay of
        M(sar.backup.sar_backup_settings).
    type: list
    elements: str
  report_on:
    description:
      - When a report is mailed to O(report_to).
    type: str
    choices: [failure, always, never]
    default: failure
  interval:
    description:
      - How often the job runs on its own. V(manual) never runs automatically (seed "Manuel").
      - V(weekly) runs on the weekday of O(start); V(monthly) on its day of month (day 29 to 31 falls back to the last day of
        shorter months); V(hourly) at the minute of O(start).
    type: str
    choices: [manual, hourly, daily, weekly, monthly]
    default: manual
  start:
    description:
      - First automatic start, C(YYYY-MM-DD HH:MM) in the host's local time; later runs are computed from it.
      - Required unless O(interval=manual). A timer that fires before it does nothing.
    type: str
  data:
    description:
      - What the backup contains (web UI step 2). V(core) = users, groups, number assignments, chat history and the
        configuration; V(cdr_voicemail) = call detail records and voicemail; V(announcements) = user-made announcement audio.
      - Each category maps to sources through the host's appliance profile (see M(sar.backup.sar_backup_settings)).
    type: list
    elements: str
    choices: [core, cdr_voicemail, announcements]
    default: [core]
  targets:
    description:
      - Where the archive goes (web UI step 3), one or more; all are written in parallel. Every target writes to
        C(<base>/starface-backup/<name>/).
      - Options apply to the target types named in their description; giving an option to another type is an error.
      - Required when O(state=present).
    type: list
    elements: dict
    suboptions:
      type:
        description:
          - V(local) = the appliance's disk, V(smb) = Windows share, V(sftp) = SFTP server, V(dropbox) = Dropbox,
            V(usb) = USB storage attached to the appliance, V(email) = send by e-mail.
        type: str
        required: true
        choices: [local, smb, sftp, dropbox, usb, email]
      keep:
        description:
          - All types but email. Retention; the newest N archives of this job are kept on this target, older ones removed.
            V(0) keeps all (unless a calendar rule below is set). Default V(7).
          - The rules add up - an archive is kept when any of O(targets[].keep), O(targets[].keep_daily),
            O(targets[].keep_weekly), O(targets[].keep_monthly), O(targets[].keep_yearly) keeps it. The archive just
            written and the newest one are never removed. Check mode lists what a run would prune.
        type: int
      keep_daily:
        description:
          - All types but email. Calendar retention (as borgmatic and restic) - for each of the last N days that have
            archives, the newest archive of that day is kept. Days are the appliance's local calendar. V(0) (default) = no
            daily rule.
        type: int
      keep_weekly:
        description:
          - All types but email. For each of the last N ISO weeks that have archives, the newest archive of the week is
            kept. V(0) (default) = no weekly rule.
        type: int
      keep_monthly:
        description:
          - All types but email. For each of the last N months that have archives, the newest archive of the month is kept.
            V(0) (default) = no monthly rule.
        type: int
      keep_yearly:
        description:
          - All types but email. For each of the last N years that have archives, the newest archive of the year is kept.
            V(0) (default) = no yearly rule.
        type: int
      verify:
        description:
          - All types but email. V(size) compares the size after upload; V(full) reads the archive back and compares SHA-256
            (Dropbox compares its content hash). Default V(size).
        type: str
        choices: [size, full]
      path:
        description:
          - V(local) - base directory, default the host's C(archive_dir) setting (C(/var/lib/sar-backup/archives)).
          - V(sftp) - absolute path or V(.) for the login directory (default V(.)).
          - V(dropbox) - folder in the app's space, default V(/).
        type: str
      server:
        description:
          - V(smb), V(sftp) - host name or IP address, without protocol or port. Required for these types.
        type: str
      port:
        description:
          - V(smb) - default V(445). V(sftp) - default V(22).
        type: int
      share:
        description:
          - V(smb) - the share and optional sub-folders joined with C(/), for example V(Backup/pbx/site1). Required.
        type: str
      username:
        description:
          - V(smb) - user as the server expects it, C(DOMAIN\\user) allowed. V(sftp) - login name. Required for these types.
        type: str
      password:
        description:
          - V(smb) - password (required unless O(targets[].security=kerberos)). V(sftp) - password (or O(targets[].private_key)).
        type: str
      security:
        description:
          - V(smb) - authentication method (seed "Sécurité"). Default V(negotiate).
        type: str
        choices: [negotiate, ntlm, kerberos]
      encrypt:
        description:
          - V(smb) - require SMB3 encryption; a server that cannot encrypt is an error. Default V(true).
        type: bool
      private_key:
        description:
          - V(sftp) - private key text (OpenSSH or PEM), instead of O(targets[].password).
        type: str
      private_key_passphrase:
        description:
          - V(sftp) - passphrase of O(targets[].private_key).
        type: str
      host_key:
        description:
          - V(sftp) - the server's pinned host key, an OpenSSH public key line (C(type base64 [comment])) or a C(SHA256:...)
            fingerprint. Without it, the key must already be in C(<config_dir>/known_hosts) or O(targets[].host_key_policy=accept_new).
        type: str
      host_key_policy:
        description:
          - V(sftp) - V(strict) refuses unknown and changed host keys; V(accept_new) trusts a key on first use, remembers it in
            C(<config_dir>/known_hosts) and still refuses a changed one. Default V(strict).
        type: str
        choices: [strict, accept_new]
      app_key:
        description:
          - V(dropbox) - the app key; required with O(targets[].refresh_token).
        type: str
      app_secret:
        description:
          - V(dropbox) - the app secret (not needed for PKCE refresh tokens).
        type: str
      refresh_token:
        description:
          - V(dropbox) - a long-lived refresh token (recommended), or give O(targets[].access_token).
        type: str
      access_token:
        description:
          - V(dropbox) - an access token (the seed's "access key"); short-lived tokens expire, prefer O(targets[].refresh_token).
        type: str
      label:
        description:
          - V(usb) - filesystem label of the USB storage to use.
        type: str
      uuid:
        description:
          - V(usb) - filesystem UUID of the USB storage to use. With neither label nor uuid, the only USB storage present is used.
        type: str
      mount_options:
        description:
          - V(usb) - options for mounting it when it is not mounted yet.
        type: str
      to:
        description:
          - V(email) - recipient addresses. Required.
        type: list
        elements: str
      max_size:
        description:
          - V(email) - largest archive to send, after encoding; bytes or a size such as V(20MB), V(10MiB). Default V(20MB).
            A larger archive fails with code C(mailtobig) before anything is sent.
        type: raw
  compression:
    description:
      - Compression of the archive.
    type: str
    choices: [zstd, gzip]
    default: zstd
  encryption:
    description:
      - Encrypt the archive with age (U(https://age-encryption.org/v1)), by passphrase or to recipient public keys.
    type: dict
    suboptions:
      passphrase:
        description:
          - Passphrase (at least 8 characters); the archive then opens with C(age -d).
        type: str
      recipients:
        description:
          - age public keys (C(age1...)); the archive opens with any matching identity.
        type: list
        elements: str
  defer:
    description:
      - Scheduled runs only. When the maintenance lock is taken (appliance archiving or another backup), wait this long before
        trying again. Seconds or V(30s), V(5m), V(1h), V(1d).
    type: raw
    default: 1h
  retries:
    description:
      - Scheduled runs only. How often a run deferred by the maintenance lock tries again before it reports C(alreadyRunning).
    type: int
    default: 3
  hooks:
    description:
      - Commands run on the appliance around a run. Each command is an argv list (no shell), or a dictionary with
        C(argv) (a list) or C(shell) (a command line for C(/bin/sh -c)), and C(timeout) (seconds or C(30s)/C(5m)/C(1h);
        default 5 minutes; the command's process group is killed then).
      - Hooks get standard input from C(/dev/null) and a small, clean environment - C(PATH), C(LANG), C(HOME),
        C(SAR_BACKUP_JOB), C(SAR_BACKUP_HOOK) (the stage), C(SAR_BACKUP_CODE) (the run's result code, after and
        on_failure), C(SAR_BACKUP_ARCHIVE) (the archive's path on the host, or its name), C(SAR_BACKUP_CONFIG_DIR) -
        never a secret. Their output (last 4000 bytes) is in the result's and status file's C(hooks).
    type: dict
    suboptions:
      before:
        description:
          - Run in order under the maintenance lock before anything is read. The first that fails (non-zero exit, cannot
            start, timeout) fails the run with code C(hookFailed); no archive is built.
        type: list
        elements: raw
      after:
        description:
          - Run after a successful run. A failing one is reported as a warning; the run stays successful.
        type: list
        elements: raw
      on_failure:
        description:
          - Run after a failed run (a failed O(hooks.before) hook included). A failing one is reported as a warning.
        type: list
        elements: raw
  ping:
    description:
      - Push monitoring (healthchecks.io and compatible, as borgmatic does) - a run POSTs to C(<url>/start) when it
        begins, to C(<url>) when it succeeded and to C(<url>/fail) when it failed, with a short plain-text summary
        (result code, archive, per-target codes) as the body. A ping that fails is a warning, never a failed run.
    type: dict
    suboptions:
      url:
        description:
          - The check's ping URL (http or https). It is the check's credential - treated as a secret (masked in output,
            diffs and status files).
        type: str
      states:
        description:
          - Which pings to send (default all three).
        type: list
        elements: str
        choices: [start, success, failure]
      timeout:
        description:
          - Seconds (or C(10s)/C(1m)) per ping; default 10.
        type: raw
  drill:
    description:
      - Restore drills of this job - its newest archive is fetched from a target, restored into isolation (a scratch
        folder and a scratch database, dropped afterwards) and checked (row counts, file checksums); nothing of the
        appliance changes. See M(sar.backup.sar_backup_restore) O(sar.backup.sar_backup_restore#module:drill) and the
        collection's docs/restore.md. Absent = no scheduled drill (a drill can still be run on demand).
    type: dict
    suboptions:
      interval:
        description:
          - How often - V(manual) (the default, no timer), V(hourly), V(daily), V(weekly), V(monthly); the role writes
            a C(sar-backup-drill-<job>.timer) for a scheduled one.
        type: str
        choices: [manual, hourly, daily, weekly, monthly]
      start:
        description:
          - First drill, C(YYYY-MM-DD HH:MM) local time; required unless O(drill.interval=manual). Must not be at the same
            minute as the job's own runs.
        type: str
      target:
        description:
          - V(rotate) (default) - the next target after the last drill's, so each target's copy is proven in turn; or the
            index of one target. E-mail targets cannot be read back.
        type: raw
"""

    # sar_backup_run's `definition`: the same options nested. Generated by
    # `python tools/gen-doc-fragments.py` from DOCUMENTATION; a unit test checks it.
    DEFINITION = r"""
options:
  definition:
    description:
      - An inline job that runs once and is not saved (web UI step 4 "run only"), with the options of
        M(sar.backup.sar_backup_job) (O(definition.state) does not apply).
      - Mutually exclusive with O(job).
    type: dict
    suboptions:
      name:
        description:
          - Name of the backup job (web UI step 1), 1 to 64 characters of V(A-Z a-z 0-9 . _ -), starting with a letter or digit.
          - It names the folder C(starface-backup/<name>/) on every target and the archives C(<name>_<host>_<UTC time>.sar).
        type: str
        required: true
      state:
        description:
          - V(present) saves the job, V(absent) removes it.
        type: str
        choices: [present, absent]
        default: present
      report_to:
        description:
          - E-mail addresses that receive the run report (web UI step 1 "error report to"). Uses the SMTP relay of
            M(sar.backup.sar_backup_settings).
        type: list
        elements: str
      report_on:
        description:
          - When a report is mailed to O(definition.report_to).
        type: str
        choices: [failure, always, never]
        default: failure
      interval:
        description:
          - How often the job runs on its own. V(manual) never runs automatically (seed "Manuel").
          - V(weekly) runs on the weekday of O(definition.start); V(monthly) on its day of month (day 29 to 31 falls back to the last day of
            shorter months); V(hourly) at the minute of O(definition.start).
        type: str
        choices: [manual, hourly, daily, weekly, monthly]
        default: manual
      start:
        description:
          - First automatic start, C(YYYY-MM-DD HH:MM) in the host's local time; later runs are computed from it.
          - Required unless O(definition.interval=manual). A timer that fires before it does nothing.
        type: str
      data:
        description:
          - What the backup contains (web UI step 2). V(core) = users, groups, number assignments, chat history and the
            configuration; V(cdr_voicemail) = call detail records and voicemail; V(announcements) = user-made announcement audio.
          - Each category maps to sources through the host's appliance profile (see M(sar.backup.sar_backup_settings)).
        type: list
        elements: str
        choices: [core, cdr_voicemail, announcements]
        default: [core]
      targets:
        description:
          - Where the archive goes (web UI step 3), one or more; all are written in parallel. Every target writes to
            C(<base>/starface-backup/<name>/).
          - Options apply to the target types named in their description; giving an option to another type is an error.
          - Required when O(definition.state=present).
        type: list
        elements: dict
        suboptions:
          type:
            description:
              - V(local) = the appliance's disk, V(smb) = Windows share, V(sftp) = SFTP server, V(dropbox) = Dropbox,
                V(usb) = USB storage attached to the appliance, V(email) = send by e-mail.
            type: str
            required: true
            choices: [local, smb, sftp, dropbox, usb, email]
          keep:
            description:
              - All types but email. Retention; the newest N archives of this job are kept on this target, older ones removed.
                V(0) keeps all (unless a calendar rule below is set). Default V(7).
              - The rules add up - an archive is kept when any of O(definition.targets[].keep), O(definition.targets[].keep_daily),
                O(definition.targets[].keep_weekly), O(definition.targets[].keep_monthly), O(definition.targets[].keep_yearly) keeps it. The archive just
                written and the newest one are never removed. Check mode lists what a run would prune.
            type: int
          keep_daily:
            description:
              - All types but email. Calendar retention (as borgmatic and restic) - for each of the last N days that have
                archives, the newest archive of that day is kept. Days are the appliance's local calendar. V(0) (default) = no
                daily rule.
            type: int
          keep_weekly:
            description:
              - All types but email. For each of the last N ISO weeks that have archives, the newest archive of the week is
                kept. V(0) (default) = no weekly rule.
            type: int
          keep_monthly:
            description:
              - All types but email. For each of the last N months that have archives, the newest archive of the month is kept.
                V(0) (default) = no monthly rule.
            type: int
          keep_yearly:
            description:
              - All types but email. For each of the last N years that have archives, the newest archive of the year is kept.
                V(0) (default) = no yearly rule.
            type: int
          verify:
            description:
              - All types but email. V(size) compares the size after upload; V(full) reads the archive back and compares SHA-256
                (Dropbox compares its content hash). Default V(size).
            type: str
            choices: [size, full]
          path:
            description:
              - V(local) - base directory, default the host's C(archive_dir) setting (C(/var/lib/sar-backup/archives)).
              - V(sftp) - absolute path or V(.) for the login directory (default V(.)).
              - V(dropbox) - folder in the app's space, default V(/).
            type: str
          server:
            description:
              - V(smb), V(sftp) - host name or IP address, without protocol or port. Required for these types.
            type: str
          port:
            description:
              - V(smb) - default V(445). V(sftp) - default V(22).
            type: int
          share:
            description:
              - V(smb) - the share and optional sub-folders joined with C(/), for example V(Backup/pbx/site1). Required.
            type: str
          username:
            description:
              - V(smb) - user as the server expects it, C(DOMAIN\\user) allowed. V(sftp) - login name. Required for these types.
            type: str
          password:
            description:
              - V(smb) - password (required unless O(definition.targets[].security=kerberos)). V(sftp) - password (or O(definition.targets[].private_key)).
            type: str
          security:
            description:
              - V(smb) - authentication method (seed "Sécurité"). Default V(negotiate).
            type: str
            choices: [negotiate, ntlm, kerberos]
          encrypt:
            description:
              - V(smb) - require SMB3 encryption; a server that cannot encrypt is an error. Default V(true).
            type: bool
          private_key:
            description:
              - V(sftp) - private key text (OpenSSH or PEM), instead of O(definition.targets[].password).
            type: str
          private_key_passphrase:
            description:
              - V(sftp) - passphrase of O(definition.targets[].private_key).
            type: str
          host_key:
            description:
              - V(sftp) - the server's pinned host key, an OpenSSH public key line (C(type base64 [comment])) or a C(SHA256:...)
                fingerprint. Without it, the key must already be in C(<config_dir>/known_hosts) or O(definition.targets[].host_key_policy=accept_new).
            type: str
          host_key_policy:
            description:
              - V(sftp) - V(strict) refuses unknown and changed host keys; V(accept_new) trusts a key on first use, remembers it in
                C(<config_dir>/known_hosts) and still refuses a changed one. Default V(strict).
            type: str
            choices: [strict, accept_new]
          app_key:
            description:
              - V(dropbox) - the app key; required with O(definition.targets[].refresh_token).
            type: str
          app_secret:
            description:
              - V(dropbox) - the app secret (not needed for PKCE refresh tokens).
            type: str
          refresh_token:
            description:
              - V(dropbox) - a long-lived refresh token (recommended), or give O(definition.targets[].access_token).
            type: str
          access_token:
            description:
              - V(dropbox) - an access token (the seed's "access key"); short-lived tokens expire, prefer O(definition.targets[].refresh_token).
            type: str
          label:
            description:
              - V(usb) - filesystem label of the USB storage to use.
            type: str
          uuid:
            description:
              - V(usb) - filesystem UUID of the USB storage to use. With neither label nor uuid, the only USB storage present is used.
            type: str
          mount_options:
            description:
              - V(usb) - options for mounting it when it is not mounted yet.
            type: str
          to:
            description:
              - V(email) - recipient addresses. Required.
            type: list
            elements: str
          max_size:
            description:
              - V(email) - largest archive to send, after encoding; bytes or a size such as V(20MB), V(10MiB). Default V(20MB).
                A larger archive fails with code C(mailtobig) before anything is sent.
            type: raw
      compression:
        description:
          - Compression of the archive.
        type: str
        choices: [zstd, gzip]
        default: zstd
      encryption:
        description:
          - Encrypt the archive with age (U(https://age-encryption.org/v1)), by passphrase or to recipient public keys.
        type: dict
        suboptions:
          passphrase:
            description:
              - Passphrase (at least 8 characters); the archive then opens with C(age -d).
            type: str
          recipients:
            description:
              - age public keys (C(age1...)); the archive opens with any matching identity.
            type: list
            elements: str
      defer:
        description:
          - Scheduled runs only. When the maintenance lock is taken (appliance archiving or another backup), wait this long before
            trying again. Seconds or V(30s), V(5m), V(1h), V(1d).
        type: raw
        default: 1h
      retries:
        description:
          - Scheduled runs only. How often a run deferred by the maintenance lock tries again before it reports C(alreadyRunning).
        type: int
        default: 3
      hooks:
        description:
          - Commands run on the appliance around a run. Each command is an argv list (no shell), or a dictionary with
            C(argv) (a list) or C(shell) (a command line for C(/bin/sh -c)), and C(timeout) (seconds or C(30s)/C(5m)/C(1h);
            default 5 minutes; the command's process group is killed then).
          - Hooks get standard input from C(/dev/null) and a small, clean environment - C(PATH), C(LANG), C(HOME),
            C(SAR_BACKUP_JOB), C(SAR_BACKUP_HOOK) (the stage), C(SAR_BACKUP_CODE) (the run's result code, after and
            on_failure), C(SAR_BACKUP_ARCHIVE) (the archive's path on the host, or its name), C(SAR_BACKUP_CONFIG_DIR) -
            never a secret. Their output (last 4000 bytes) is in the result's and status file's C(hooks).
        type: dict
        suboptions:
          before:
            description:
              - Run in order under the maintenance lock before anything is read. The first that fails (non-zero exit, cannot
                start, timeout) fails the run with code C(hookFailed); no archive is built.
            type: list
            elements: raw
          after:
            description:
              - Run after a successful run. A failing one is reported as a warning; the run stays successful.
            type: list
            elements: raw
          on_failure:
            description:
              - Run after a failed run (a failed O(definition.hooks.before) hook included). A failing one is reported as a warning.
            type: list
            elements: raw
      ping:
        description:
          - Push monitoring (healthchecks.io and compatible, as borgmatic does) - a run POSTs to C(<url>/start) when it
            begins, to C(<url>) when it succeeded and to C(<url>/fail) when it failed, with a short plain-text summary
            (result code, archive, per-target codes) as the body. A ping that fails is a warning, never a failed run.
        type: dict
        suboptions:
          url:
            description:
              - The check's ping URL (http or https). It is the check's credential - treated as a secret (masked in output,
                diffs and status files).
            type: str
          states:
            description:
              - Which pings to send (default all three).
            type: list
            elements: str
            choices: [start, success, failure]
          timeout:
            description:
              - Seconds (or C(10s)/C(1m)) per ping; default 10.
            type: raw
      drill:
        description:
          - Restore drills of this job - its newest archive is fetched from a target, restored into isolation (a scratch
            folder and a scratch database, dropped afterwards) and checked (row counts, file checksums); nothing of the
            appliance changes. See M(sar.backup.sar_backup_restore) O(definition.sar.backup.sar_backup_restore#module:drill) and the
            collection's docs/restore.md. Absent = no scheduled drill (a drill can still be run on demand).
        type: dict
        suboptions:
          interval:
            description:
              - How often - V(manual) (the default, no timer), V(hourly), V(daily), V(weekly), V(monthly); the role writes
                a C(sar-backup-drill-<job>.timer) for a scheduled one.
            type: str
            choices: [manual, hourly, daily, weekly, monthly]
          start:
            description:
              - First drill, C(YYYY-MM-DD HH:MM) local time; required unless O(definition.drill.interval=manual). Must not be at the same
                minute as the job's own runs.
            type: str
          target:
            description:
              - V(rotate) (default) - the next target after the last drill's, so each target's copy is proven in turn; or the
                index of one target. E-mail targets cannot be read back.
            type: raw
"""
