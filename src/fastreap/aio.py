"""fastreap for asyncio: wait for a stop request or a child, stop many children.

Everything runs on the running loop through ``loop.add_reader``; no thread is
started. A stop flag's ``fileno()`` is readable while it is set; the watcher's
poller (epoll or kqueue) is readable when a watched child may have exited, and
reading it means ``poll_now()``: reap what is ready, without blocking. Several
waiters on one descriptor share one reader (asyncio keeps a single callback
per descriptor), and every waiter removes its part when it finishes or is
cancelled, so no reader, descriptor or callback is left behind.
"""

from __future__ import annotations

import asyncio
import signal as _signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import _children, _core
from ._children import ALL_EXITED, Child, ChildLostError, StopReport, Target

__all__ = ["graceful_stop", "wait", "wait_for_stop"]


class _Mux:
    """One asyncio reader per (loop, descriptor), fanned out to subscribers.
    Kept only while something is subscribed (no reference to a finished loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.subs: dict[int, dict[Callable[[], Any], int]] = {}

    def add(self, fd: int, cb: Callable[[], Any]) -> None:
        subs = self.subs.get(fd)
        if subs is None:
            self.loop.add_reader(fd, self._dispatch, fd)
            subs = self.subs[fd] = {}
        subs[cb] = subs.get(cb, 0) + 1

    def remove(self, fd: int, cb: Callable[[], Any]) -> None:
        subs = self.subs.get(fd)
        if subs is None or cb not in subs:
            return
        subs[cb] -= 1
        if subs[cb] == 0:
            del subs[cb]
        if not subs:
            del self.subs[fd]
            if not self.loop.is_closed():
                self.loop.remove_reader(fd)
            if not self.subs:
                _muxes.pop(self.loop, None)

    def _dispatch(self, fd: int) -> None:
        for cb in list(self.subs.get(fd, ())):
            cb()


_muxes: dict[asyncio.AbstractEventLoop, _Mux] = {}


def _mux(loop: asyncio.AbstractEventLoop) -> _Mux:
    m = _muxes.get(loop)
    if m is None:
        m = _muxes[loop] = _Mux(loop)
    return m


def _resolve(fut: asyncio.Future[Any], value: Any = None) -> None:
    if not fut.done():
        fut.set_result(value)


def _in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """Run fn(*args) in the loop: at once from its own thread (done callbacks
    run in whichever thread reaps), else through call_soon_threadsafe."""
    if getattr(loop, "_thread_id", None) == threading.get_ident():
        fn(*args)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(fn, *args)


async def wait_for_stop(flag: _core.StopFlag | None = None) -> _core.StopFlag:
    """Wait until ``flag`` (the process default flag when None) is set; return it."""
    if flag is None:
        flag = _core.default_flag
    elif not isinstance(flag, _core.StopFlag):
        raise TypeError(f"flag must be a fastreap.StopFlag or None, not {type(flag).__name__}")
    if flag.is_set():
        return flag
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    fd = flag.fileno()

    def on_readable() -> None:
        if flag.is_set():
            _resolve(fut)
        else:
            # Readable while clear: a stale wake-up (a racing clear(), or a
            # poke from across a fork). wait() drains it and re-pokes if the
            # flag was set meanwhile, so level-triggered readiness cannot spin.
            if flag.wait(0.001):
                _resolve(fut)

    _mux(loop).add(fd, on_readable)
    try:
        await fut
    finally:
        _mux(loop).remove(fd, on_readable)
    return flag


def _watcher_reader(loop: asyncio.AbstractEventLoop) -> tuple[int, Callable[[], None], Callable[[], None]]:
    """Subscribe the loop to the watcher's poller; return (fd, callback, unsubscribe)."""
    w = _children._watcher
    w._check_open()
    with w.lock:
        pfd = w._poller()
    cb = w.poll_now
    _mux(loop).add(pfd, cb)
    return pfd, cb, lambda: _mux(loop).remove(pfd, cb)


async def wait(child: Target) -> int:
    """Wait until ``child`` (a pid, Popen, Process or Child) exits; reap it and
    return its returncode. ChildLostError if someone else reaped it.
    Cancelling leaves the child running and watched."""
    if isinstance(child, (list, tuple, set, frozenset)):
        raise TypeError(
            "child must be one pid, subprocess.Popen, multiprocessing.Process or Child, "
            "not a collection (use asyncio.gather, or fastreap.aio.graceful_stop)"
        )
    c = _children._as_children([child], "child")[0]
    if c.returncode is None and not c.lost:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def on_done(_c: Child) -> None:
            _in_loop(loop, _resolve, fut)

        c.add_done_callback(on_done)
        _fd, _cb, unsubscribe = _watcher_reader(loop)
        try:
            await fut
        finally:
            c.remove_done_callback(on_done)
            unsubscribe()
    if c.lost:
        raise ChildLostError(f"pid {c.pid} was reaped by someone else; its exit status is unknown")
    rc = c.returncode
    assert rc is not None
    return rc


async def _wait_run(run: _children._StopRun, deadline: float | None) -> None:
    """Until every target (and pinned group member) has exited, or deadline."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    pending = set(run.pending())
    members = run.members

    def check() -> None:
        if not pending and (members is None or not members.fds):
            _resolve(fut)

    def on_done_in_loop(c: Child) -> None:
        pending.discard(c)
        check()

    def on_done(c: Child) -> None:
        _in_loop(loop, on_done_in_loop, c)

    def on_members() -> None:
        assert members is not None
        members.collect(0.0)
        check()

    for c in list(pending):
        c.add_done_callback(on_done)
    unsubscribe: Callable[[], None] | None = None
    mfd = -1
    timer = None
    try:
        _fd, _cb, unsubscribe = _watcher_reader(loop)
        if members is not None and members.fds:
            mfd = members.fileno()
            _mux(loop).add(mfd, on_members)
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), _resolve, fut)
        check()
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        if mfd >= 0:
            _mux(loop).remove(mfd, on_members)
        if unsubscribe is not None:
            unsubscribe()
        for c in run.kids:
            c.remove_done_callback(on_done)


async def graceful_stop(
    targets: Iterable[Target] | Target,
    timeout: float | None = 10.0,
    *,
    signal: int = _signal.SIGTERM,
    kill_after: bool = True,
    group: bool = False,
) -> StopReport:
    """fastreap.graceful_stop on the running loop: signal every target at once,
    wait until one shared deadline, SIGKILL the rest (``kill_after``), reap
    every one. Bad targets raise before anything is signalled. If cancelled,
    the targets still running are SIGKILLed and reaped before CancelledError
    propagates (with ``kill_after=False`` they are left running, watched)."""
    run = _children._StopRun(targets, timeout, signal, kill_after, group)
    try:
        run.begin()
        try:
            await _wait_run(run, run.deadline)
            if run.kill_after and (run.pending() or (run.members is not None and run.members.fds)):
                run.escalate()
                await _wait_run(run, None)
        except asyncio.CancelledError:
            if run.kill_after:
                run.escalate()
                # SIGKILLed: they die within moments; reap them now rather
                # than leave zombies behind the cancelled task.
                _children.wait(run.kids, None, ALL_EXITED)
                if run.members is not None:
                    run.members.wait_all(None)
            raise
        return run.report()
    finally:
        run.close()
