#!/usr/bin/env bash
# Fast unit-test loop without ansible-test: the working tree is made importable
# as ansible_collections.sar.backup through a symlink in a temp dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# One farm per checkout (as tests/harness/playbook.py): parallel checkouts never re-point each other.
farm="${TMPDIR:-/tmp}/sar-backup-units-$(id -u)-$(printf %s "$root" | sha1sum | cut -c1-10)"
mkdir -p "$farm/ansible_collections/sar"
ln -sfn "$root" "$farm/ansible_collections/sar/backup"
cd "$root"
PYTHONPATH="$farm${PYTHONPATH:+:$PYTHONPATH}" exec "$root/.venv/bin/python" -m pytest -p no:cacheprovider -q "${@:-tests/unit}"
