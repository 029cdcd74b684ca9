#!/usr/bin/env bash
# Lint in a throwaway venv with pinned tools (the same versions as
# .pre-commit-config.yaml): ruff check, ruff format --check, cython-lint,
# clang-format --dry-run on _csrc, mypy --strict (files from pyproject).
# Runs every step and fails at the end if any failed.
#   bash scripts/lint.sh [PYTHON]        (FIX=1 applies ruff/clang-format fixes)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/fastreap-lint.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$PY" -m venv "$work/venv" || exit 1
V="$work/venv/bin"
"$V/python" -m pip install -q "ruff==0.17.6" "cython-lint==0.22.1" "mypy==2.4.1" "clang-format==23.1.5" ||
    exit 1
# cython-lint runs pycodestyle by name.
export PATH="$V:$PATH"

status=0
step() {
    echo "=== lint: $*"
    "$@" || { echo "lint: FAILED: $*" >&2; status=1; }
}
shopt -s nullglob
csrc=(src/fastreap/_csrc/*.c src/fastreap/_csrc/*.h src/fastreap/_bench/*.c)
cy=(src/fastreap/*.pyx src/fastreap/*.pxd src/fastreap/_csrc/*.pxd)
if [ "${FIX:-0}" = 1 ]; then
    ruff check --fix .
    ruff format .
    clang-format -i "${csrc[@]}"
fi
step ruff check --output-format concise .
step ruff format --check .
step cython-lint "${cy[@]}"
step clang-format --dry-run -Werror "${csrc[@]}"
# mypy reads _core.pyi (no build needed); files and strictness from pyproject.
step mypy
[ $status = 0 ] && echo "lint: all clean"
exit $status
