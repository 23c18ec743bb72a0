#!/usr/bin/env bash
# ansible-test bootstraps pip in each venv it makes by downloading get-pip from a
# CI file host that is unreachable from our machines. Provide it offline: a pip
# wheel from PyPI plus a tiny get_pip replacement that installs it.
set -euo pipefail
venv_python=${1:?usage: ansible-test-offline.sh VENV_PYTHON}
cache="$HOME/.ansible/test/cache"
mkdir -p "$cache"
if ! ls "$cache"/pip-24.2-*.whl >/dev/null 2>&1; then
    "$venv_python" -m pip download --quiet --no-deps --dest "$cache" pip==24.2
fi
cat > "$cache/get_pip_24_2.py" <<'PY'
"""Offline stand-in for get-pip 24.2: install pip from the wheel beside this file."""
import glob
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
wheel = sorted(glob.glob(os.path.join(here, "pip-24.2-*.whl")))[0]
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
cmd = [sys.executable, os.path.join(wheel, "pip"), "install", "--no-index", "--find-links", here] + args
sys.exit(subprocess.call(cmd))
PY
