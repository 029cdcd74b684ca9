#!/usr/bin/env bash
# valgrind memcheck over a smoke run of fastreap (normal -O2 build, in a
# throwaway venv): tests/test_smoke.py under pytest, then
# scripts/valgrind_smoke.py on the pidfd watcher and on the SIGCHLD one.
#   bash scripts/valgrind_smoke.sh [PYTHON]
# Fails on any memcheck error (invalid read/write, uninitialised value used,
# bad free, bad syscall argument) and on any "definitely lost" block.
# PYTHONMALLOC=malloc sends CPython's small objects through malloc, so
# memcheck sees them. Only the interpreter is traced (children are /bin/sleep
# and sh). The fork-started fastreap.Process child is checked too: memcheck
# follows fork, logs it to the same file and makes it exit 99 on an error,
# which fails the smoke script. scripts/valgrind-python.supp holds the two
# CPython suppressions needed; read its comments. valgrind 3.19 does not know
# pidfd_open (ENOSYS), so under it fastreap runs its SIGCHLD watcher: the
# pidfd paths are covered by scripts/sanitize.sh, not here. CPython 3.11.7
# itself reports uninitialised reads in _PyLong_FromByteArray: use 3.10,
# 3.12 or 3.13.
set -uo pipefail
cd "$(dirname "$0")/.."
top=$PWD
PY=${1:-python3}
command -v valgrind >/dev/null || {
    echo "valgrind_smoke: valgrind is not installed" >&2
    exit 2
}

work=$(mktemp -d "${TMPDIR:-/tmp}/fastreap-vg.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src-copy"
git ls-files -z | xargs -0 cp --parents -t "$work/src-copy" || exit 2
"$PY" -m venv "$work/venv" || exit 2
vpy="$work/venv/bin/python"
"$vpy" -m pip install -q --disable-pip-version-check pytest pytest-timeout "Cython>=3.1" "setuptools>=77" || exit 2
"$vpy" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps "$work/src-copy" || exit 2

vg=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --show-leak-kinds=definite
    --errors-for-leak-kinds=definite --track-origins=yes --num-callers=30
    --suppressions="$top/scripts/valgrind-python.supp" --trace-children=no)
status=0
total=0
run() {
    local name=$1
    shift
    local log="$work/$name.log" start rc n
    start=$(date +%s)
    (cd "$top/tests" && PYTHONMALLOC=malloc "${vg[@]}" --log-file="$log.%p" "$vpy" "$@")
    rc=$?
    cat "$log".* >"$log"  # the interpreter and any fork child, one file each
    n=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$log" | awk '{s += $3} END {print s + 0}')
    lost=$(grep -Eo 'definitely lost: [0-9,]+ bytes' "$log" | sort -t: -k2 -n | tail -n 1)
    echo "valgrind_smoke: $name: exit $rc, ${n:-?} errors in $(ls "$log".* | wc -l) process(es), ${lost:-definitely lost: 0 bytes}, $(($(date +%s) - start)) s"
    total=$((total + ${n:-1}))
    if [ "$rc" -ne 0 ] || [ "${n:-1}" != 0 ]; then
        sed -n '/^==[0-9]*== [A-Z]/,$p' "$log" | head -n 120 >&2
        status=1
    fi
}
run pytest-smoke -m pytest -q -p no:cacheprovider test_smoke.py
run smoke-auto "$top/scripts/valgrind_smoke.py"
FASTREAP_BACKEND=sigchld run smoke-sigchld "$top/scripts/valgrind_smoke.py"
echo "valgrind_smoke: $total errors in all; $([ $status -eq 0 ] && echo clean || echo FAILED)"
exit $status
