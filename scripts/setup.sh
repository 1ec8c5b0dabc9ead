#!/usr/bin/env bash
# Create .venv and install keydyn with its development tools and the optional parts its tests cover (`viewer`:
# rerun; `robot`: keydyn serve's transport; `cluster`: Ray). torch 2.13.0 is installed first, on its own, so that
# no other (multi-GB) torch build is pulled in by the package's dependencies: the build from TORCH_INDEX_URL when it
# is set (a CUDA index of pytorch.org, say), else a wheel that pip's own configuration finds locally, else the CPU
# build from pytorch.org's CPU index (PyPI's Linux wheel would bring the CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "keydyn needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
TORCH="torch==2.13.0"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/python -m pip install -q "$TORCH" --index-url "$TORCH_INDEX_URL"
elif .venv/bin/python -m pip install --dry-run -q --no-deps --no-index "$TORCH" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "$TORCH"
else
  .venv/bin/python -m pip install -q "$TORCH" --extra-index-url https://download.pytorch.org/whl/cpu
fi
.venv/bin/python -m pip install -q -e ".[dev,viewer,robot,cluster]"
