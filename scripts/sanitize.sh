#!/usr/bin/env bash
# Build fastreap with AddressSanitizer + UndefinedBehaviorSanitizer
# (FASTREAP_DEBUG_BUILD=1, see setup.py) into a throwaway venv and run the
# test suite under it.
#   bash scripts/sanitize.sh [PYTHON] [pytest args...]
# PYTHON defaults to python3; pytest args default to the whole suite.
#
# The interpreter itself is not instrumented, so libasan (and libubsan) are
# LD_PRELOADed. Every process started by the tests inherits the environment,
# so child interpreters (tests/programs/*.py, multiprocessing children,
# `fastreap run`) are checked too. Each sanitizer writes its reports to
# its own file in a temporary log directory (log_path), which catches
# reports from children whose stderr the tests capture; the run fails if
# pytest fails or if any report file exists or the output shows a report.
# Leak detection is off: CPython does not free everything at exit.
# disable_coredump=0: ASan turns core dumps off by default, and a test
# checks that a core-dumping child is reported as such.
# faulthandler_timeout=0: pytest's faulthandler_timeout starts a watchdog
# thread before each test and ends it after; this libasan (GCC 12's) does
# not take its allocator locks around fork(), and that thread holds them
# while ASan sets it up (its first allocations) and tears it down (it gives
# its allocator cache and quarantine back). A fork child that runs Python
# (multiprocessing's fork start method, os.fork in the tests) forked at that
# moment blocks forever the first time it needs that lock (a malloc that
# refills its cache of a size class, a free that drains its quarantine); its
# first such malloc is often CPython's own at-fork code. Seen in CI as
# test_shared_flag_set_in_parent_wakes_waiting_child[fork] hanging; LLVM 18's
# ASan takes those locks at fork (llvm/llvm-project#75290). pytest-timeout
# (timeout in pyproject.toml, SIGALRM: no thread) still stops a hung test and
# prints every thread's stack.
set -uo pipefail
cd "$(dirname "$0")/.."
top=$PWD
PY=${1:-python3}
[ $# -gt 0 ] && shift
[ $# -eq 0 ] && set -- -q

CC=${CC:-gcc}
asan=$("$CC" -print-file-name=libasan.so)
ubsan=$("$CC" -print-file-name=libubsan.so)
if [ ! -e "$asan" ] || [ ! -e "$ubsan" ]; then
    echo "sanitize: $CC has no libasan.so/libubsan.so" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/fastreap-san.XXXXXX")
keep=${KEEP:-0}
cleanup() { [ "$keep" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
logs="$work/logs"
mkdir -p "$logs"

echo "sanitize: building an ASan+UBSan fastreap in $work"
# A copy of the tracked tree: the build never touches the worktree.
mkdir -p "$work/src-copy"
git ls-files -z | xargs -0 cp --parents -t "$work/src-copy" || exit 2
"$PY" -m venv "$work/venv" || exit 2
vpy="$work/venv/bin/python"
"$vpy" -m pip install -q --disable-pip-version-check pytest pytest-timeout hypothesis psutil "mypy==2.4.1" "Cython>=3.1" "setuptools>=77" || exit 2
FASTREAP_DEBUG_BUILD=1 "$vpy" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps "$work/src-copy" ||
    exit 2
# The extension really is instrumented.
so=$(ls "$("$vpy" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')"/fastreap/_core*.so) || exit 2
if ! ldd "$so" | grep libasan >/dev/null || ! nm -D "$so" | grep __ubsan_handle >/dev/null; then
    echo "sanitize: $so is not built with ASan+UBSan" >&2
    exit 2
fi

# abort_on_error: a report kills the process (SIGABRT), so it cannot be missed;
# log_path: one file per reporting process (name.PID).
export ASAN_OPTIONS="detect_leaks=0:disable_coredump=0:abort_on_error=1:halt_on_error=1:symbolize=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_string_checks=1:log_path=$logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"

# Only Python interpreters get the sanitizer runtimes: venv/bin/python*
# become wrappers that preload them, and sitecustomize takes them out of
# os.environ again, so what the interpreter starts (10,000 /bin/sleep
# children in one test) runs plain while every child interpreter, which
# starts through sys.executable (the wrapper), is checked. Preloading into
# every process ran the machine out of memory.
preload="$asan $ubsan"
real=$(readlink -f "$work/venv/bin/python")
for f in "$work"/venv/bin/python*; do
    rm -f "$f"
    printf '#!/bin/bash\nexport LD_PRELOAD="%s${LD_PRELOAD:+ $LD_PRELOAD}"\nexec -a "$0" %s "$@"\n' \
        "$preload" "$real" >"$f"
    chmod +x "$f"
done
site=$("$real" -c 'import sysconfig, sys; print(sysconfig.get_path("purelib", vars={"base": sys.argv[1]}))' "$work/venv")
cat >"$site/sitecustomize.py" <<EOF
# fastreap sanitize.sh: the runtimes are loaded; do not pass them on.
import os
_pre = [p for p in os.environ.get("LD_PRELOAD", "").split() if p not in "$preload".split()]
if _pre:
    os.environ["LD_PRELOAD"] = " ".join(_pre)
else:
    os.environ.pop("LD_PRELOAD", None)
EOF
# Check that: this interpreter and a child interpreter have libasan mapped,
# a non-Python child does not.
"$vpy" - <<'EOF' || {
import os, subprocess, sys
import fastreap
asan = lambda pid="self": "libasan" in open(f"/proc/{pid}/maps").read()
assert asan() and "LD_PRELOAD" not in os.environ
subprocess.run([sys.executable, "-c", "assert 'libasan' in open('/proc/self/maps').read()"], check=True)
subprocess.run(["sh", "-c", "! grep -q libasan /proc/$$/maps"], check=True)
EOF
    echo "sanitize: the wrapped interpreter does not start" >&2
    exit 2
}
# And that a report is caught: a child interpreter frees a block twice
# (through ctypes, so libasan's free interceptor sees it).
probe="$work/probe-logs"
mkdir -p "$probe"
if ASAN_OPTIONS="${ASAN_OPTIONS/log_path=$logs/log_path=$probe}" "$vpy" -c '
import ctypes, subprocess, sys
subprocess.run([sys.executable, "-c", "import ctypes; c = ctypes.CDLL(None); c.malloc.restype = ctypes.c_void_p; p = c.malloc(8); c.free(ctypes.c_void_p(p)); c.free(ctypes.c_void_p(p))"])
' 2>/dev/null; ! grep -q "double-free" "$probe"/asan.* 2>/dev/null; then
    echo "sanitize: the self-check double free was not reported; reports would be missed" >&2
    exit 2
fi
echo "sanitize: self-check: a double free in a child interpreter is reported"
pytest_opts=(-p no:cacheprovider -o faulthandler_timeout=0)
# And that a test runs with no other thread in the process (see faulthandler_timeout
# above): the suite's own configuration, a test of its own, no conftest.
mkdir -p "$work/thread-check"
cat >"$work/thread-check/test_alone.py" <<'EOF'
import os


def test_no_thread_but_the_main_one():
    assert os.listdir("/proc/self/task") == [str(os.getpid())], os.listdir("/proc/self/task")
EOF
if ! (cd "$work/thread-check" && "$vpy" -m pytest "${pytest_opts[@]}" -c "$top/pyproject.toml" \
    --rootdir "$work/thread-check" -q test_alone.py) >"$work/thread-check.log" 2>&1; then
    cat "$work/thread-check.log" >&2
    echo "sanitize: a test does not run alone in its process; a fork child may deadlock in ASan's allocator" >&2
    exit 2
fi
echo "sanitize: self-check: a test runs with no other thread in the process"
echo "sanitize: running pytest ${pytest_opts[*]} $* (interpreters preload $preload)"
start=$(date +%s)
# From tests/, so `import fastreap` is the instrumented install, not src/.
(cd "$top/tests" && "$vpy" -m pytest "${pytest_opts[@]}" "$@") 2>&1 |
    tee "$work/pytest.log"
rc=${PIPESTATUS[0]}
echo "sanitize: pytest exit $rc after $(($(date +%s) - start)) s"

status=0
[ "$rc" -eq 0 ] || status=1
if compgen -G "$logs/*" >/dev/null; then
    echo "sanitize: sanitizer reports written by $(ls "$logs" | wc -l) process(es):" >&2
    for f in "$logs"/*; do
        echo "----- $f" >&2
        head -n 60 "$f" >&2
    done
    status=1
fi
if grep -Eq "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$work/pytest.log"; then
    echo "sanitize: sanitizer report in the pytest output" >&2
    status=1
fi
echo "sanitize: $([ $status -eq 0 ] && echo clean || echo FAILED)"
exit $status
