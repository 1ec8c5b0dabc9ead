#!/usr/bin/env bash
# Create .venv and install keydyn with its development tools and the optional parts its tests cover (`viewer`:
# rerun; `robot`: keydyn serve's transport; `cluster`: Ray). CPU torch 2.13.0 is installed first, on its own, so
# that no other (multi-GB) torch build is pulled in by the package's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "keydyn needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,viewer,robot,cluster]"
