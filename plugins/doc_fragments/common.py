# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers

from __future__ import annotations


class ModuleDocFragment:
    # The configuration directory every module and the sar-backup command share.
    DOCUMENTATION = r"""
options:
  config_dir:
    description:
      - The host's sar-backup configuration directory. Settings (C(settings.json)) and jobs
        (C(jobs/<name>.json)) live there; everything else the collection keeps on the host is found from it.
      - When not given, the environment variable E(SAR_BACKUP_CONFIG_DIR) on the managed host, else C(/etc/sar-backup).
    type: path
"""
