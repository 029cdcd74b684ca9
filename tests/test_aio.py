"""fastreap.aio: wait_for_stop, wait, graceful_stop on the running loop."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import subprocess
import threading
import time
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import fastreap
import fastreap.aio as aio
from fastreap import _core, _procfs, _watcher

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sh(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sh", "-c", code])


def stubborn() -> subprocess.Popen[bytes]:
    """A child that ignores SIGTERM, returned once it does."""
    p = subprocess.Popen(["/bin/sh", "-c", 'trap "" TERM; echo; exec sleep 60'], stdout=subprocess.PIPE)
    assert p.stdout is not None
    p.stdout.readline()
    p.stdout.close()
    return p


def polite() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sleep", "60"])


def _exit7() -> None:
    os._exit(7)


def no_reader(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """fd has no reader left on loop (remove_reader says whether it removed one)."""
    return fd < 0 or not loop.remove_reader(fd)


def watcher_fd() -> int:
    return _watcher.current().pfd


async def no_watcher_reader(loop: asyncio.AbstractEventLoop) -> bool:
    """The loop's reader on the watcher is gone once the loop has had no wait
    for aio._IDLE seconds (the idle timer was armed before this sleep's, so
    it has run by the time this one does)."""
    await asyncio.sleep(aio._IDLE * 3)
    return no_reader(loop, watcher_fd())


# ---- wait_for_stop -------------------------------------------------------------


def test_wait_for_stop_from_a_thread_and_the_loop() -> None:
    async def main() -> None:
        f = fastreap.StopFlag()
        threading.Timer(0.05, f.set).start()
        assert await aio.wait_for_stop(f) is f
        g = fastreap.StopFlag()
        asyncio.get_running_loop().call_later(0.05, g.set)
        assert await asyncio.wait_for(aio.wait_for_stop(g), 30) is g
        assert no_reader(asyncio.get_running_loop(), g.fileno())

    run(main())


def test_wait_for_stop_shared_flag_set_by_a_child() -> None:
    async def main() -> None:
        f = fastreap.StopFlag(shared=True)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the forked child
            f.set()
            os._exit(0)
        await aio.wait_for_stop(f)
        assert await aio.wait(pid) == 0

    run(main())


def test_wait_for_stop_default_flag_and_many_waiters() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiters = [asyncio.ensure_future(aio.wait_for_stop()) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in waiters)
        loop.call_soon(_core.default_flag.set)
        done = await asyncio.gather(*waiters)
        assert all(d is _core.default_flag for d in done)
        assert no_reader(loop, _core.default_flag.fileno())

    try:
        run(main())
    finally:
        _core.default_flag.clear()


def test_wait_for_stop_cancel_leaves_no_reader() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        f = fastreap.StopFlag()
        a = asyncio.ensure_future(aio.wait_for_stop(f))
        b = asyncio.ensure_future(aio.wait_for_stop(f))
        await asyncio.sleep(0.01)
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        f.set()  # the other waiter still hears it: the shared reader survived a's exit
        assert await asyncio.wait_for(b, 30) is f
        assert no_reader(loop, f.fileno())

    run(main())


def test_wait_for_stop_bad_flag() -> None:
    with pytest.raises(TypeError, match="flag"):
        run(aio.wait_for_stop(3))  # type: ignore[arg-type]


# ---- wait ---------------------------------------------------------------------


def test_wait_targets() -> None:
    async def main() -> None:
        p = sh("sleep 0.1; exit 3")
        assert await aio.wait(p) == 3
        assert p.returncode == 3
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 4"], os.environ)
        assert await aio.wait(pid) == 4
        c = fastreap.watch(sh("kill -9 $$"))
        assert await aio.wait(c) == -9
        pr = multiprocessing.get_context("fork").Process(target=_exit7)
        pr.start()
        assert await aio.wait(pr) == 7
        assert pr.exitcode == 7
        pr.join()
        assert await aio.wait(p) == 3  # already reaped: at once
        assert await no_watcher_reader(asyncio.get_running_loop())

    run(main())


def test_wait_many_at_once_no_threads() -> None:
    async def main() -> None:
        threads = threading.active_count()
        kids = [sh(f"sleep 0.{i % 3}; exit {i}") for i in range(20)]
        got = await asyncio.gather(*(aio.wait(k) for k in kids))
        assert got == list(range(20))
        assert threading.active_count() == threads
        assert await no_watcher_reader(asyncio.get_running_loop())

    run(main())


def test_wait_while_another_thread_waits() -> None:
    # A blocking wait in another thread leads the watcher; the loop still
    # hears the exit (through the done callback) and gets the true code.
    async def main() -> None:
        p = sh("sleep 0.2; exit 9")
        t = threading.Thread(target=fastreap.watch(p).wait)
        t.start()
        try:
            assert await asyncio.wait_for(aio.wait(p), 30) == 9
        finally:
            t.join()

    run(main())


def test_wait_cancel_leaves_child_and_no_reader() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        p = polite()
        task = asyncio.ensure_future(aio.wait(p))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await no_watcher_reader(loop)
        c = fastreap.watch(p)
        assert c.is_alive() and c not in _watcher.current().callbacks
        c.kill()
        assert await aio.wait(p) == -9

    run(main())


def test_wait_one_reader_and_one_subscription_per_loop() -> None:
    # Back-to-back waits reuse the loop's one reader on the watcher (no
    # add/remove on the loop's selector per wait), and several waits on one
    # child make one subscription on the watcher, ended by the child's exit.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        added: list[int] = []
        add_reader = loop.add_reader

        def counting_add_reader(fd: Any, cb: Any, *args: Any) -> None:
            added.append(fd)
            add_reader(fd, cb, *args)

        loop.add_reader = counting_add_reader  # type: ignore[method-assign]
        for i in range(5):
            assert await aio.wait(sh(f"sleep 0.02; exit {i}")) == i
        p = polite()
        try:
            waits = [asyncio.ensure_future(aio.wait(p)) for _ in range(3)]
            await asyncio.sleep(0.01)
            c = fastreap.watch(p)
            assert len(_watcher.current().callbacks[c]) == 1
        finally:
            p.kill()
        assert await asyncio.wait_for(asyncio.gather(*waits), 30) == [-9, -9, -9]
        assert added == [watcher_fd()]
        assert c not in _watcher.current().callbacks
        assert await no_watcher_reader(loop)

    run(main())


def test_wait_closed_loop_keeps_nothing() -> None:
    # A loop closed while its watcher reader idles is not kept alive by it.
    refs: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        refs.append(weakref.ref(asyncio.get_running_loop()))
        p = polite()
        asyncio.get_running_loop().call_later(0.05, p.kill)
        assert await asyncio.wait_for(aio.wait(p), 30) == -9

    run(main())
    gc.collect()
    assert refs[0]() is None
    assert len(aio._waits) == 0


def test_wait_left_pending_on_a_closed_loop(caplog: pytest.LogCaptureFixture) -> None:
    # A loop closed with a wait still pending: the child's later exit, reaped
    # in the same thread, must not try to wake it (no error from the done
    # callback), and the abandoned wait's cleanup must not raise either.
    loop = asyncio.new_event_loop()
    p = polite()
    try:
        task = loop.create_task(aio.wait(p))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert not task.done()
        loop.close()
    finally:
        p.kill()
    with caplog.at_level("ERROR", logger="fastreap"):
        assert fastreap.watch(p).wait() == -9
    assert not [r for r in caplog.records if r.name == "fastreap"]
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    del task
    gc.collect()


def test_wait_loops_in_threads_hear_each_others_reaps() -> None:
    # Two loops in two threads wait on the same children: whichever loop's
    # reader reaps one, the other hears of it (call_soon_threadsafe).
    shared = [polite() for _ in range(3)]
    got: dict[str, list[int]] = {}
    started = threading.Barrier(3)

    def runner(name: str) -> None:
        async def main() -> None:
            own = sh("sleep 0.05; exit 5")
            waits = asyncio.gather(aio.wait(own), *(aio.wait(s) for s in shared))
            await asyncio.sleep(0.01)
            started.wait(30)
            got[name] = await asyncio.wait_for(waits, 30)

        asyncio.run(main())

    threads = [threading.Thread(target=runner, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    try:
        started.wait(30)
    finally:
        for s in shared:
            s.kill()
        for t in threads:
            t.join(60)
    assert got == {"a": [5, -9, -9, -9], "b": [5, -9, -9, -9]}
    assert [s.returncode for s in shared] == [-9, -9, -9]


def test_wait_beside_asyncio_subprocess_under_install() -> None:
    # Under fastreap.install() an asyncio subprocess reads the watcher through
    # the same loop reader as aio.wait: its end must not take the reader away
    # from a wait still running (that wait would never hear its child).
    async def main() -> None:
        loop = asyncio.get_running_loop()
        p = polite()
        try:
            waiting = asyncio.ensure_future(aio.wait(p))
            await asyncio.sleep(0.01)
            sp = await asyncio.create_subprocess_exec("/bin/sh", "-c", "exit 3")
            assert await asyncio.wait_for(sp.wait(), 30) == 3
            await asyncio.sleep(0.01)
        finally:
            p.kill()
        assert await asyncio.wait_for(waiting, 30) == -9
        assert await no_watcher_reader(loop)

    fastreap.install()
    try:
        run(main())
    finally:
        fastreap.uninstall()


def test_wait_bad_input() -> None:
    async def main() -> None:
        p = polite()
        try:
            with pytest.raises(TypeError, match="one pid"):
                await aio.wait([p])  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="pid > 0"):
                await aio.wait(0)
            with pytest.raises(ChildProcessError, match="not a child"):
                await aio.wait(1)
        finally:
            p.kill()
            await aio.wait(p)

    run(main())


def test_wait_lost() -> None:
    async def main() -> None:
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "sleep 0.1"], os.environ)
        c = fastreap.watch(pid)
        os.waitpid(pid, 0)
        with pytest.raises(fastreap.ChildLostError):
            await aio.wait(c)

    run(main())


def test_wait_pending_when_its_loop_is_closed_keeps_nothing_alive() -> None:
    # A task awaiting aio.wait() when its loop is closed without cancelling
    # it; the child is then reaped by a blocking wait here: nothing keeps the
    # closed loop alive (its _Waits entry is keyed weakly by the loop).
    p = polite()
    loop = asyncio.new_event_loop()
    ref = weakref.ref(loop)
    task = loop.create_task(aio.wait(p))
    loop.run_until_complete(asyncio.sleep(0.05))  # the task now waits on the child
    assert not task.done()
    loop.close()
    p.kill()
    assert fastreap.watch(p).wait() == -9
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    del task, loop
    gc.collect()
    assert ref() is None
    assert len(aio._waits) == 0


# ---- graceful_stop --------------------------------------------------------------


def test_graceful_stop_mixed() -> None:
    async def main() -> None:
        threads = threading.active_count()
        hard = [stubborn() for _ in range(3)]
        soft = [polite() for _ in range(3)]
        tick = 0

        async def ticker() -> None:
            nonlocal tick
            while True:
                await asyncio.sleep(0.01)
                tick += 1

        t = asyncio.ensure_future(ticker())
        r = await aio.graceful_stop([*hard, *soft], 0.5)
        t.cancel()
        assert tick > 5  # the loop kept running while we waited
        assert threading.active_count() == threads
        assert isinstance(r, fastreap.StopReport)
        assert sorted(c.pid for c in r.killed) == sorted(h.pid for h in hard)
        assert sorted(c.pid for c in r.exited) == sorted(s.pid for s in soft)
        assert r.returncodes == {**{h.pid: -9 for h in hard}, **{s.pid: -15 for s in soft}}
        assert r.elapsed < 3 * 0.5 * 2  # one shared deadline
        assert await no_watcher_reader(asyncio.get_running_loop())

    run(main())


def test_graceful_stop_returns_when_all_exited_and_kill_after_false() -> None:
    async def main() -> None:
        t0 = time.monotonic()
        r = await aio.graceful_stop([polite(), polite()], 60)
        assert time.monotonic() - t0 < 30 and r.killed == [] and len(r.exited) == 2
        hard = stubborn()
        r = await aio.graceful_stop([hard], 0.2, kill_after=False)
        assert [c.pid for c in r.alive] == [hard.pid] and r.killed == []
        r = await aio.graceful_stop([hard], 0.0)
        assert r.returncodes == {hard.pid: -9}

    run(main())


def test_graceful_stop_group() -> None:
    async def main() -> None:
        leader = subprocess.Popen(
            ["/bin/sh", "-c", 'trap "" TERM; sleep 60 & echo $!; wait'],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert leader.stdout is not None
        member = int(leader.stdout.readline())
        leader.stdout.close()
        r = await aio.graceful_stop([leader], 0.3, group=True)
        assert r.returncodes == {leader.pid: -9}
        st = _procfs.read_stat(member)
        assert st is None or st.zombie  # gone altogether, or a zombie: stopped

    run(main())


def test_graceful_stop_cancel_kills_and_reaps() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        hard = [stubborn() for _ in range(3)]
        task = asyncio.ensure_future(aio.graceful_stop(hard, 60))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [h.returncode for h in hard] == [-9, -9, -9]  # reaped, no zombie
        assert await no_watcher_reader(loop)

    run(main())


def test_graceful_stop_bad_target_before_any_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    good = polite()
    sent: list[Any] = []
    monkeypatch.setattr(os, "kill", lambda *a: sent.append(a))
    monkeypatch.setattr(_core, "pidfd_send_signal", lambda *a: sent.append(a))
    try:
        with pytest.raises(ValueError, match="pid > 0"):
            run(aio.graceful_stop([good, -1]))
        with pytest.raises(ValueError, match="timeout"):
            run(aio.graceful_stop([good], -1))
        assert sent == []
    finally:
        monkeypatch.undo()
        good.kill()
        good.wait()
