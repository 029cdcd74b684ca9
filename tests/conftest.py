"""Guards, fixtures and the report header for fastreap's test suite."""

from __future__ import annotations

import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastreap
from fastreap import _core, _procfs, _watcher

PROGRAMS = Path(__file__).parent / "programs"


def pytest_report_header(config: pytest.Config) -> list[str]:
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    return [
        f"fastreap {fastreap.__version__} from {os.path.dirname(fastreap.__file__)}",
        f"backend: {fastreap.counters()['backend']} (FASTREAP_BACKEND={_watcher.BACKEND}), "
        f"kernel {platform.release()}, GIL {'enabled' if gil else 'disabled'}",
    ]


def _open_fds() -> set[int]:
    """Open descriptors; the directory listing's own fd (closed by now) is dropped."""
    out = set()
    for n in os.listdir("/proc/self/fd" if sys.platform.startswith("linux") else "/dev/fd"):
        try:
            os.fstat(int(n))
        except OSError:
            continue
        out.add(int(n))
    return out


def _live_children() -> set[int]:
    """Pids of this process's children (running or zombie), from /proc."""
    return set(_procfs.children_of(os.getpid()))


def _exempt_children() -> set[int]:
    """Long-lived helpers multiprocessing starts once per session."""
    out: set[int] = set()
    from multiprocessing import forkserver, resource_tracker

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        out.add(pid)
    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    if pid:
        out.add(pid)
    return out


def _exempt_fds() -> set[int]:
    """Process-lifetime descriptors: fastreap's singletons and multiprocessing's helpers."""
    out = _watcher.current().own_fds()  # its poller and the SIGCHLD path's loss-check timer
    gw = _core.global_wake_fd()
    out.add(gw)
    from multiprocessing import forkserver, resource_tracker

    for fd in (
        getattr(forkserver._forkserver, "_forkserver_alive_fd", None),
        getattr(resource_tracker._resource_tracker, "_fd", None),
    ):
        if isinstance(fd, int):
            out.add(fd)
    return out


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child (zombie or running) or a new open descriptor."""
    # Open the singletons up front so they are not counted as leaks.
    _core.global_wake_fd()
    _core.default_flag.fileno()
    fds_before = _open_fds()
    kids_before = _live_children()
    yield
    deadline = time.monotonic() + 2.0
    leaked: set[int] = set()
    while True:
        leaked = _live_children() - kids_before - _exempt_children()
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)  # a child killed at the very end may take a moment to become reapable
    problems = []
    if leaked:
        for pid in leaked:  # clean up so one failure does not cascade
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        problems.append(f"left child processes behind: {sorted(leaked)}")
    new_fds = _open_fds() - fds_before - _exempt_fds()
    # Descriptors may be closed by garbage collection of cycles.
    if new_fds:
        import gc

        gc.collect()
        new_fds = _open_fds() - fds_before - _exempt_fds()
    if new_fds:
        desc = {}
        for fd in new_fds:
            try:
                desc[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                desc[fd] = "?"
        problems.append(f"left open descriptors behind: {desc}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(params=["pidfd", "sigchld"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on the pidfd+epoll watcher and on the SIGCHLD-ring watcher."""
    if request.param == "pidfd" and not _watcher.Watcher().pidfd.enabled:
        pytest.skip("no pidfd on this kernel")
    with _watcher.swapped(use_pidfd=request.param == "pidfd"):
        yield request.param


@pytest.fixture
def sigchld_watcher() -> Iterator[_watcher.Watcher]:
    """A fresh process-wide watcher that puts every child on the SIGCHLD path."""
    with _watcher.swapped(use_pidfd=False) as w:
        yield w


@pytest.fixture(params=["fork", "spawn", "forkserver"])
def mp_context(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    """A multiprocessing context for each start method."""
    return multiprocessing.get_context(request.param)


def run_program(name: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    """Start tests/programs/<name> in a child interpreter, text mode, stdout piped."""
    return subprocess.Popen(
        [sys.executable, str(PROGRAMS / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


def read_line(p: subprocess.Popen[str]) -> str:
    """One line of p.stdout ('' at EOF), read a byte at a time and never past
    it: a buffered read could swallow later output that communicate(), which
    reads the descriptor directly, would then never see."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf = bytearray()
    while not buf.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            break
        buf += b
    return buf.decode()


def wait_ready(p: subprocess.Popen[str], word: str = "READY") -> str:
    """Read lines from p.stdout until one starts with word; return that line."""
    while True:
        line = read_line(p)
        if not line:
            err = p.stderr.read() if p.stderr else ""
            raise AssertionError(f"program ended before {word}: {err}")
        if line.startswith(word):
            return line.strip()
