#!/usr/bin/env bash
# Lay the working tree out as ansible_collections/sar/backup under .build/, as a
# git checkout of its own (ansible-test lists files through git), so sanity,
# units and playbooks see exactly the files of this tree, committed or not.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="${SAR_STAGE_ROOT:-$root/.build}/ansible_collections/sar/backup"
mkdir -p "$dest"
rsync -a --delete \
    --exclude /.git --exclude /.venv --exclude /.build --exclude /tests/output \
    --exclude /bench/output --exclude __pycache__ --exclude .pytest_cache \
    "$root"/ "$dest"/
cd "$dest"
if [ ! -d .git ]; then
    git init -q
fi
git add -A >/dev/null
echo "$dest"
