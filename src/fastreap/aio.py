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
from functools import partial
from typing import Any

from . import _children, _core, _stop, _watcher
from ._args import check_flag
from ._children import Child, ChildLostError, StopReport, Target
from ._deadline import NEVER, Deadline
from ._stop import StopRun

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
    flag = check_flag(flag)
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


async def _until(
    pred: Callable[[], bool],
    children: Iterable[Child],
    deadline: Deadline = NEVER,
    extra: tuple[tuple[int, Callable[[], Any]], ...] = (),
) -> None:
    """The one asyncio wait: until pred() or the deadline. Woken by each of
    ``children`` finishing (in whichever thread reaps it), by the watcher's
    descriptor (read means ``poll_now``) and by ``extra`` (descriptor,
    callback) pairs; every part is removed again, also on cancellation."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    w = _watcher.current()
    mux = _mux(loop)

    def check() -> None:
        if pred():
            _resolve(fut)

    def on_done(_c: Child) -> None:
        _in_loop(loop, check)

    subscribed = [c for c in children if w.subscribe(c, on_done)]
    added: list[tuple[int, Callable[[], Any]]] = []
    timer = None
    try:
        wfd = w.fileno()
        mux.add(wfd, w.poll_now)
        added.append((wfd, w.poll_now))
        for fd, cb in extra:

            def on_readable(cb: Callable[[], Any] = cb) -> None:
                cb()
                check()

            mux.add(fd, on_readable)
            added.append((fd, on_readable))
        if deadline.at is not None:
            timer = loop.call_later(deadline.remaining(), _resolve, fut)
        check()
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        for fd, cb in reversed(added):
            mux.remove(fd, cb)
        for c in subscribed:
            w.unsubscribe(c, on_done)


async def wait(child: Target) -> int:
    """Wait until ``child`` (a pid, Popen, Process or Child) exits; reap it and
    return its returncode. ChildLostError if someone else reaped it.
    Cancelling leaves the child running and watched."""
    if isinstance(child, (list, tuple, set, frozenset)):
        raise TypeError(
            "child must be one pid, subprocess.Popen, multiprocessing.Process or Child, "
            "not a collection (use asyncio.gather, or fastreap.aio.graceful_stop)"
        )
    c = _children.as_children([child], "child")[0]
    if c.returncode is None and not c.lost:
        await _until(partial(_watcher.Watcher.done, c), [c])
    if c.lost:
        raise ChildLostError(f"pid {c.pid} was reaped by someone else; its exit status is unknown")
    rc = c.returncode
    assert rc is not None
    return rc


async def _wait_run(run: StopRun, deadline: Deadline) -> None:
    """The asyncio driver's wait: until every target (and pinned group
    member) has exited, or deadline."""
    members = run.members
    extra = ((members.fileno(), members.collect_ready),) if members is not None and members.fds else ()
    await _until(run.all_exited, run.pending(), deadline, extra)


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
    run = StopRun(targets, timeout, signal, kill_after, group)
    try:
        d: Deadline | None = run.begin(time.monotonic())
        try:
            while d is not None:
                await _wait_run(run, d)
                d = run.step(time.monotonic())
        except asyncio.CancelledError:
            if run.kill_after:
                run.escalate()
                # SIGKILLed: they die within moments; reap them now rather
                # than leave zombies behind the cancelled task.
                _stop.wait_blocking(run, NEVER)
            raise
        return run.report()
    finally:
        run.close()
