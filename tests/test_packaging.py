"""The installed package as a user gets it: typing stub vs. compiled module,
what the wheel holds, the glibc ceiling of the extension, the typed example."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastreap
import fastreap._core

HERE = Path(__file__).resolve().parent
PKG = Path(fastreap.__file__).resolve().parent
MAX_GLIBC = (2, 28)  # the newest manylinux policy the wheels may need


def _installed_files() -> list[str]:
    """Paths (relative to site-packages) of the installed distribution, or skip
    when fastreap runs from a source tree rather than an installed wheel."""
    try:
        dist = importlib.metadata.distribution("fastreap")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastreap is not installed (running from the source tree)")
    files = dist.files or []
    located = {Path(str(dist.locate_file(f))).resolve().parent for f in files if f.name == "__init__.py"}
    if PKG not in located:
        pytest.skip(f"the imported fastreap ({PKG}) is not the installed distribution")
    return [f.as_posix() for f in files]


def test_stub_matches_compiled_module(tmp_path: Path) -> None:
    """mypy.stubtest: every name and signature in _core.pyi matches _core."""
    if os.environ.get("CI") == "true":  # scripts/test.sh installs mypy: never skip in CI
        import mypy.stubtest  # noqa: F401
    else:
        pytest.importorskip("mypy.stubtest")
    if not (PKG / "_core.pyi").exists():
        pytest.fail(f"_core.pyi is missing next to {fastreap._core.__file__}")
    # Run outside the project so pyproject's mypy_path cannot shadow the stub
    # that sits next to the imported module.
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "fastreap._core",
            "--allowlist",
            str(HERE / "stubtest_allowlist.txt"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(PKG.parent)},
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_wheel_contents() -> None:
    """The installed wheel ships typing and cimport files, no C/Cython sources."""
    files = [f for f in _installed_files() if f.startswith("fastreap/")]
    sources = [f for f in files if f.endswith((".c", ".pyx", ".html", ".o"))]
    assert sources == []
    for need in (
        "fastreap/py.typed",
        "fastreap/_core.pyi",
        "fastreap/_csrc/handler.h",
        "fastreap/_csrc/reaper.h",
        "fastreap/_csrc/compat.h",
        "fastreap/_csrc/handler.pxd",
        "fastreap/_csrc/reaper.pxd",
    ):
        assert need in files
    assert any(re.fullmatch(r"fastreap/_core\..*\.so", f) for f in files)


def _glibc_versions_needed(so: str) -> list[tuple[int, ...]]:
    out = subprocess.run(["objdump", "-T", so], capture_output=True, text=True, check=True).stdout
    return sorted({tuple(map(int, v.split("."))) for v in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)\b", out)})


@pytest.mark.linux_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF/glibc only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_extension_glibc_ceiling() -> None:
    """No symbol of the extension needs a glibc newer than manylinux_2_28."""
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):  # musl: the name is unknown
        glibc = None
    if not glibc:
        pytest.skip("not a glibc system (musllinux wheels have no glibc symbol versions)")
    needed = _glibc_versions_needed(fastreap._core.__file__)
    assert needed, "objdump found no GLIBC symbol versions at all"
    assert max(needed) <= MAX_GLIBC, f"needs GLIBC_{'.'.join(map(str, max(needed)))}"


@pytest.mark.skipif(
    not (HERE.parent / "examples" / "typed_usage.py").exists(), reason="examples/ not shipped here"
)
def test_typed_usage_example_runs() -> None:
    """examples/typed_usage.py (the mypy --strict example) also runs cleanly."""
    r = subprocess.run(
        [sys.executable, str(HERE.parent / "examples" / "typed_usage.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("typed_usage: OK")
