#!/usr/bin/env bash
# Build fastreap into a fresh virtual environment and run the test suite
# against the installed package (never the source tree).
#   bash scripts/test.sh [PYTHON] [pytest args...]
# PYTHON defaults to python3. The venv lives in .venv-<version>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
[ $# -gt 0 ] && shift
ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=".venv-$ver"
if [ ! -x "$venv/bin/python" ]; then
    "$PY" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q pytest pytest-timeout hypothesis psutil Cython "mypy==2.4.1"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps .
# Run from tests/ so `import fastreap` resolves to the installed package.
cd tests
exec "../$venv/bin/python" -m pytest -p no:cacheprovider "$@"
