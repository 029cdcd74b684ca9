"""fastreap.install() / uninstall(): subprocess, multiprocessing and asyncio
children wait through fastreap's watcher."""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.popen_fork
import multiprocessing.process
import os
import signal
import subprocess
import sys
import threading
import time
from asyncio import unix_events
from collections.abc import Iterator

import pytest

import fastreap
from fastreap import _install


@pytest.fixture
def installed() -> Iterator[None]:
    fastreap.install()
    try:
        yield
    finally:
        fastreap.uninstall()


_PATCHED = [
    (subprocess.Popen, "_execute_child"),
    (subprocess.Popen, "_wait"),
    (subprocess.Popen, "_internal_poll"),
    (multiprocessing.process.BaseProcess, "start"),
    (multiprocessing.popen_fork.Popen, "wait"),
    (multiprocessing.popen_fork.Popen, "poll"),
    (unix_events._UnixSelectorEventLoop, "_make_subprocess_transport"),  # type: ignore[attr-defined]
]


def _snapshot() -> list[object]:
    return [cls.__dict__[name] for cls, name in _PATCHED]


def _reaped() -> int:
    return int(fastreap.counters()["reaped"])


def _exit5() -> None:
    os._exit(5)


def _sleep() -> None:
    time.sleep(60)


# ---- install / uninstall themselves -----------------------------------------


def test_install_uninstall_idempotent_and_restores_the_very_originals() -> None:
    before = _snapshot()
    fastreap.uninstall()  # not installed: no-op
    assert _snapshot() == before
    fastreap.install()
    fastreap.install()
    try:
        after = _snapshot()
        assert all(a is not b for a, b in zip(after, before, strict=True))
        assert _install.installed()
    finally:
        fastreap.uninstall()
    fastreap.uninstall()
    now = _snapshot()
    assert all(a is b for a, b in zip(now, before, strict=True))
    assert not _install.installed()


def test_install_uninstall_from_many_threads() -> None:
    before = _snapshot()
    barrier = threading.Barrier(8)

    def flip(i: int) -> None:
        barrier.wait()
        for _ in range(200):
            fastreap.install() if i % 2 else fastreap.uninstall()

    ts = [threading.Thread(target=flip, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    fastreap.install()
    fastreap.uninstall()
    assert all(a is b for a, b in zip(_snapshot(), before, strict=True))


# ---- subprocess ---------------------------------------------------------------


@pytest.mark.usefixtures("installed")
def test_popen_wait_timeout_goes_through_the_watcher(backend: str) -> None:
    r0 = _reaped()
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 0.3; exit 4"])
    with pytest.raises(subprocess.TimeoutExpired) as ei:
        p.wait(timeout=0.01)
    assert ei.value.timeout == 0.01 and ei.value.cmd == p.args
    assert p.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(timeout=-1)  # as the stdlib: expired at once
    assert p.wait(timeout=10) == 4
    assert p.returncode == 4 and p.poll() == 4
    assert _reaped() == r0 + 1  # fastreap reaped it (with rusage), not waitpid in Popen


@pytest.mark.usefixtures("installed")
def test_popen_true_codes_and_signals(backend: str) -> None:
    for code in (0, 1, 255):
        assert subprocess.run(["/bin/sh", "-c", f"exit {code}"]).returncode == code
    p = subprocess.Popen(["/bin/sleep", "60"])
    p.kill()
    assert p.wait() == -signal.SIGKILL


@pytest.mark.usefixtures("installed")
def test_popen_communicate_timeout_with_pipes(backend: str) -> None:
    p = subprocess.Popen(
        ["/bin/sh", "-c", "read x; echo got $x; sleep 0.5; echo bye; exit 3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    with pytest.raises(subprocess.TimeoutExpired):
        p.communicate(b"hi\n", timeout=0.05)
    out, _ = p.communicate(timeout=10)
    assert out == b"got hi\nbye\n" and p.returncode == 3


def test_popen_started_before_install_is_left_alone(backend: str) -> None:
    # A fresh watcher (the backend fixture): its counters see only this test's children.
    r0 = _reaped()
    p = subprocess.Popen(["/bin/sh", "-c", "exit 6"])
    fastreap.install()
    try:
        assert p.wait(10) == 6
        assert _reaped() == r0  # the first one stayed the stdlib's
        assert fastreap.counters()["watched"] == 0
        q = subprocess.Popen(["/bin/sh", "-c", "exit 7"])
        # the second one is watched (and may be reaped by now already)
        assert fastreap.counters()["watched"] + _reaped() - r0 == 1
    finally:
        fastreap.uninstall()
    assert q.wait(10) == 7  # and its Popen works after uninstall()
    fastreap.watch(q).wait(10)


@pytest.mark.usefixtures("installed")
def test_popen_concurrent_waiters_all_see_the_code(backend: str) -> None:
    p = subprocess.Popen(["/bin/sh", "-c", "sleep 0.2; exit 9"])
    got: list[int] = []
    ts = [threading.Thread(target=lambda: got.append(p.wait())) for _ in range(4)]
    for t in ts:
        t.start()
    c = fastreap.watch(p)
    assert c.wait(10) == 9
    for t in ts:
        t.join(10)
    assert got == [9] * 4 and not c.lost


# ---- multiprocessing ----------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.usefixtures("installed")
def test_process_join_timeout_through_the_watcher(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    r0 = _reaped()
    p = ctx.Process(target=_sleep)
    p.start()
    p.join(0.05)
    assert p.exitcode is None and p.is_alive()
    p.join(-1)  # the stdlib's join(0), not an error
    assert p.exitcode is None
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    q = ctx.Process(target=_exit5)
    q.start()
    q.join()
    assert q.exitcode == 5 and not q.is_alive()
    assert _reaped() == r0 + 2


@pytest.mark.usefixtures("installed")
def test_forkserver_processes_are_left_to_multiprocessing() -> None:
    ctx = multiprocessing.get_context("forkserver")
    q = ctx.Process(target=_exit5)
    q.start()
    q.join(30)
    assert q.exitcode == 5
    assert "_fastreap_installed_watch" not in q._popen.__dict__  # type: ignore[union-attr]


# ---- asyncio --------------------------------------------------------------------


@pytest.mark.usefixtures("installed")
def test_asyncio_subprocess_watched_by_fastreap(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_watcher(*a: object) -> object:
        raise AssertionError("asyncio's child watcher must not be used")

    monkeypatch.setattr(asyncio.events, "get_child_watcher", no_watcher, raising=False)
    r0 = _reaped()

    async def main() -> None:
        p = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            "read x; echo out $x; echo err >&2; exit 3",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await p.communicate(b"1\n")
        assert (out, err, p.returncode) == (b"out 1\n", b"err\n", 3)
        s = await asyncio.create_subprocess_shell("kill -9 $$")
        assert await s.wait() == -signal.SIGKILL
        many = [await asyncio.create_subprocess_exec("/bin/sh", "-c", f"exit {i}") for i in range(20)]
        assert await asyncio.gather(*(m.wait() for m in many)) == list(range(20))

    asyncio.run(main())
    assert _reaped() == r0 + 22


@pytest.mark.usefixtures("installed")
def test_asyncio_child_reaped_by_another_thread(backend: str) -> None:
    # Its exit reaches the loop from the thread that reaped it (a blocking
    # wait on the same child), not only from the loop's own reader.
    async def main() -> None:
        p = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "read x; exit 4", stdin=asyncio.subprocess.PIPE
        )
        popen = p._transport.get_extra_info("subprocess")  # type: ignore[attr-defined]
        c = fastreap.watch(popen)
        got: list[int | None] = []
        t = threading.Thread(target=lambda: got.append(c.wait(60)))
        t.start()
        await asyncio.sleep(0.05)  # let the thread lead the wait
        assert p.stdin is not None
        p.stdin.write(b"x\n")
        await p.stdin.drain()
        assert await asyncio.wait_for(p.wait(), 60) == 4
        await asyncio.get_running_loop().run_in_executor(None, t.join, 60)
        assert got == [4] and popen.returncode == 4

    asyncio.run(main())


@pytest.mark.usefixtures("installed")
def test_asyncio_children_watched_once_as_they_start(backend: str) -> None:
    # The Child made when the Popen started is the one asyncio's exit comes from.
    async def main() -> None:
        p = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "read x; exit 6", stdin=asyncio.subprocess.PIPE
        )
        popen = p._transport.get_extra_info("subprocess")  # type: ignore[attr-defined]
        c = popen.__dict__[_install._ATTR][1]
        assert fastreap.watch(popen) is c  # running (reading stdin): still the watcher's
        await p.communicate(b"x\n")
        assert p.returncode == 6
        assert c.returncode == 6

    asyncio.run(main())


@pytest.mark.usefixtures("installed")
def test_asyncio_wait_for_timeout_then_kill() -> None:
    async def main() -> None:
        p = await asyncio.create_subprocess_exec("/bin/sleep", "60")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(p.wait(), 0.05)
        p.terminate()
        assert await p.wait() == -signal.SIGTERM

    asyncio.run(main())


@pytest.mark.usefixtures("installed")
def test_asyncio_spawn_failure_leaves_nothing() -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="the child-watcher API is deprecated from 3.12")
@pytest.mark.usefixtures("installed")
def test_asyncio_no_deprecation_warning() -> None:
    import warnings

    async def main() -> None:
        p = await asyncio.create_subprocess_exec("/bin/true")
        await p.wait()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(main())
