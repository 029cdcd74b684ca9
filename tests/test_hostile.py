"""Hostile environments (issue 12): handlers clobbered by others, shared-flag
hardening, and system calls refused as on old kernels, under seccomp or gVisor.

Fault injection: the ``faultshim`` fixture builds tests/programs/faultshim.c
with the system C compiler (``cc``, or $CC) into a temporary directory, once
per session, and gives its path; tests run a child interpreter with
``LD_PRELOAD=<path>`` and ``FASTREAP_FAULT="name=ERRNO,..."``, for example
``waitid_pidfd=ENOSYS,memfd_create=EPERM,timerfd_create=ENOSYS,pidfd_open=ENOSYS``.
The shim fails the named calls whether they come through the libc wrapper
(``os.memfd_create``, ``timerfd_create``) or through ``syscall()`` by number
(fastreap's pidfd_open and rusage waitid); the names it knows are listed at
the top of faultshim.c. Without a compiler (or off Linux) these tests are
skipped with the reason.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import fastreap

PROGRAMS = Path(__file__).parent / "programs"
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux-only (memfd, eventfd, /proc)"
)


@pytest.fixture(scope="session")
def faultshim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not sys.platform.startswith("linux"):
        pytest.skip("the fault-injection shim is Linux-only (LD_PRELOAD, syscall numbers)")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) to build the fault-injection shim")
    out = tmp_path_factory.mktemp("faultshim") / "faultshim.so"
    r = subprocess.run(
        [cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(PROGRAMS / "faultshim.c"), "-ldl"],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"could not build the fault-injection shim: {r.stderr.strip()[:500]}")
    yield str(out)


def run(
    scenario: str, *args: str, shim: str | None = None, fault: str = "", **env: str
) -> tuple[int, dict, str]:
    """Run programs/hostile.py SCENARIO; return (returncode, last RESULT, stdout+stderr)."""
    e = dict(os.environ, **env)
    if shim is not None:
        # Keep a preload the sanitizer build needs (libasan first).
        e["LD_PRELOAD"] = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), shim) if p)
        e["FASTREAP_FAULT"] = fault
    p = subprocess.run(
        [sys.executable, str(PROGRAMS / "hostile.py"), scenario, *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=120,
    )
    res: dict = {}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
    return p.returncode, res, p.stdout + p.stderr


# ------------------------------------------------- 12.1: restore what is ours


@pytest.mark.parametrize("exit", [False, True])
def test_restore_leaves_a_newer_python_handler(exit: bool) -> None:
    rc, res, out = run("restore_python", "exit" if exit else "")
    assert rc == 0, out  # -SIGUSR1 when restore put back SIG_DFL over the Python handler
    assert res == {"got": [10], "handler_is_ours": False}


def test_restore_leaves_a_newer_c_handler() -> None:
    rc, _, out = run("restore_ctypes")
    assert rc == 10, out  # the C handler (_exit(signo)) ran; -10 if restore clobbered it


# ------------------------------------------------ 12.4, 12.5: shared flags


@linux_only
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_rebuilt_shared_flag_is_close_on_exec(method: str) -> None:
    rc, res, out = run("grandchild_fds", method)
    assert rc == 0, out
    assert res == {"exitcode": 0, "set": True}, out
    fds = [line for line in out.splitlines() if line.startswith("FD ")]
    assert fds, out  # the grandchild listed its descriptors
    leaked = [line for line in fds if "memfd:fastreap-flag" in line or "eventfd" in line]
    assert leaked == [], out


@linux_only
def test_shared_flag_memfd_is_sealed() -> None:
    def flag_memfds() -> set[int]:
        out = set()
        for n in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{n}").startswith("/memfd:fastreap-flag"):
                    out.add(int(n))
            except OSError:
                pass
        return out

    before = flag_memfds()
    f = fastreap.StopFlag(shared=True)
    memfds = sorted(flag_memfds() - before)
    assert len(memfds) == 1
    fd = memfds[0]
    size = os.fstat(fd).st_size
    for length in (size + 4096, 0):  # grow first: without seals a shrink would SIGBUS us below
        with pytest.raises(PermissionError) as ei:
            os.ftruncate(fd, length)
        assert ei.value.errno == errno.EPERM
    assert os.fstat(fd).st_size == size
    f.set()
    assert f.wait(1) and f.is_set()
    f.clear()
    assert not f.is_set()
    del f


# -------------------------------------------------- 12.11: C review points


def test_install_checks_signo_before_reading_tables() -> None:
    rc, res, out = run("install_bad_signo")  # an out-of-bounds read segfaults here
    assert rc == 0, out
    assert res == {"errnos": [errno.EINVAL] * 4}


@linux_only
@pytest.mark.parametrize("fault", ["", "dup3=EMFILE", "eventfd=EMFILE"])
def test_wake_reopen_in_fork_child(faultshim: str, fault: str) -> None:
    """A fork child's first use replaces the wake-up descriptors it shares
    with its parent (same numbers, new eventfds); if that fails, it keeps the
    parent's and leaks nothing."""
    rc, res, out = run("reopen_fails", fault, shim=faultshim)
    assert rc == 0, out
    assert res["after"] == res["before"], out
    assert res["same"] and res["flag_ok"], out
    if res["ids"]:  # the kernel names eventfds in fdinfo (Linux >= 5.18)
        assert res["kept"] == ([False, False] if fault == "" else [True, True]), out


# --------------------------------------------- 12.7, 12.8, 12.9: fallbacks


@pytest.mark.parametrize("err", ["ENOSYS", "EPERM", "EINVAL"])
def test_waitid_p_pidfd_refused_falls_back_to_the_pid(faultshim: str, err: str) -> None:
    if not fastreap._core.have_pidfd():
        pytest.skip("no pidfd on this kernel: P_PIDFD is never tried")
    rc, res, out = run("wait_one", shim=faultshim, fault=f"waitid_pidfd={err}", FASTREAP_BACKEND="pidfd")
    assert rc == 0, out
    assert res == {"code": 7, "code2": 3, "popen": 7, "zombie": None, "backend": "pidfd"}, out


def test_sigchld_path_without_timerfd(faultshim: str) -> None:
    rc, res, out = run(
        "wait_one",
        "sleep 0.2; exit 7",
        shim=faultshim,
        fault="timerfd_create=ENOSYS",
        FASTREAP_BACKEND="sigchld",
    )
    assert rc == 0, out
    assert res == {"code": 7, "code2": 3, "popen": 7, "zombie": None, "backend": "sigchld"}, out


def test_signal_just_before_a_wait_still_interrupts_it(faultshim: str) -> None:
    """A signal that lands after a wait's last look for pending signals and
    before the wait starts (widened here to 2 ms by the shim; the alarm fires
    in it) interrupts the wait at once: the main thread waits with signals
    blocked up to the wait, which unblocks them atomically (ppoll,
    epoll_pwait). Before, each of these waits (none has a timeout) hung."""
    env = dict(os.environ, FASTREAP_WAIT_DELAY_US="2000")
    env["LD_PRELOAD"] = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), faultshim) if p)
    p = subprocess.Popen(
        [sys.executable, str(PROGRAMS / "hostile.py"), "wait_race"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:  # a wait that the signal did not interrupt
            p.kill()
            p.communicate()
    res = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    assert p.returncode == 0 and res == [
        {"wait_readable": "interrupted", "flag_wait": "interrupted", "child_wait": "interrupted"}
    ], out


@pytest.mark.parametrize("err", ["ENOSYS", "EPERM"])
def test_shared_flag_without_memfd(faultshim: str, err: str) -> None:
    rc, res, out = run("shared_flag", shim=faultshim, fault=f"memfd_create={err}")
    assert rc == 0, out
    assert res["forked"] and res["spawned"] and res["spawned_code"] == 0, out
    assert res["process_code"] is not None and res["process_code"] != -9, out
    assert not any("memfd" in k for k in res["fd_kinds"]), out  # the fallback was taken


def test_no_pidfd_and_no_timerfd_takes_the_sigchld_path(faultshim: str) -> None:
    """A kernel before 5.3 (or a sandbox) with no timerfd either: auto picks
    the SIGCHLD path and it works (covers the shim's syscall() interception)."""
    rc, res, out = run(
        "wait_one",
        "sleep 0.2; exit 7",
        shim=faultshim,
        fault="pidfd_open=ENOSYS,timerfd_create=ENOSYS",
        FASTREAP_BACKEND="auto",
    )
    assert rc == 0, out
    assert res == {"code": 7, "code2": 3, "popen": 7, "zombie": None, "backend": "sigchld"}, out
