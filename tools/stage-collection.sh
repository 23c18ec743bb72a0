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
# ansible-test units installs tests/unit/requirements.txt from a copy of its
# own, where `-r ../../requirements/...` cannot resolve: flatten it here, so the
# pins still live only in requirements/.
grep -hv -e '^#' -e '^-r' -e '^$' "$root/requirements/runtime.txt" "$root/requirements/unit.txt" \
    > "$dest/tests/unit/requirements.txt"
cd "$dest"
if [ ! -d .git ]; then
    git init -q
fi
git add -A >/dev/null
echo "$dest"
