"""fastreap for asyncio: wait for a stop request or a child, stop many children.

Everything runs on the running loop through ``loop.add_reader``; no thread is
started. A stop flag's ``fileno()`` is readable while it is set; the watcher's
poller (epoll or kqueue) is readable when a watched child may have exited, and
reading it means ``poll_now()``: reap what is ready, without blocking.

Each loop has one reader on the watcher's poller (``_Waits``), shared by all
its waits and kept across back-to-back waits: it goes ``_IDLE`` seconds after
the last wait on that loop ends (or with the loop). A batch of exits costs one
wake-up and one ``poll_now``, which resolves the futures of exactly the
children that finished (a dict child -> futures per loop; each child is
subscribed on the watcher once per loop, and a finished child's subscription
ends with it). A child reaped in another thread (a blocking waiter, another
loop) is handed to the loop with ``call_soon_threadsafe``. Stop flags and
graceful_stop's group descriptors share one reader per descriptor (``_Mux``).
Every waiter removes its part when it finishes or is cancelled, so no reader,
descriptor or callback is left behind.
"""

from __future__ import annotations

import asyncio
import signal as _signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from . import _children, _core, _stop, _watcher
from ._args import check_flag
from ._children import Child, ChildLostError, StopReport, Target
from ._deadline import NEVER, Deadline
from ._stop import StopRun

__all__ = ["graceful_stop", "wait", "wait_for_stop"]


class _Mux:
    """One asyncio reader per (loop, descriptor), shared by its subscribers:
    the one callback itself while there is only one distinct callback (the
    usual case: the watcher's ``poll_now``, which aio waits and asyncio
    subprocesses under ``fastreap.install()`` share), a fan-out once there are
    several. Holds its loop weakly (``_muxes`` is keyed weakly), so a loop
    closed with a reader in place is not kept alive by it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref: Callable[[], asyncio.AbstractEventLoop | None] = weakref.ref(loop)
        self.subs: dict[int, dict[Callable[[], Any], int]] = {}

    def add(self, fd: int, cb: Callable[[], Any]) -> None:
        subs = self.subs.get(fd)
        if subs is None:
            self._loop().add_reader(fd, cb)
            self.subs[fd] = {cb: 1}
        elif cb in subs:
            subs[cb] += 1
        else:
            if len(subs) == 1:  # a second distinct callback: fan out from now on
                self._loop().add_reader(fd, self._dispatch, fd)
            subs[cb] = 1

    def remove(self, fd: int, cb: Callable[[], Any]) -> None:
        subs = self.subs.get(fd)
        if subs is None or cb not in subs:
            return
        subs[cb] -= 1
        if subs[cb] == 0:
            del subs[cb]
        if not subs:
            del self.subs[fd]
            loop = self._loop()
            if not loop.is_closed():
                loop.remove_reader(fd)
            if not self.subs:
                _muxes.pop(loop, None)

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self.loop_ref()
        assert loop is not None  # called from the loop, or by a waiter on it
        return loop

    def _dispatch(self, fd: int) -> None:
        for cb in list(self.subs.get(fd, ())):
            cb()


_muxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mux] = weakref.WeakKeyDictionary()


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


_IDLE = 0.05  # seconds a loop keeps its watcher reader after its last wait


class _Waits:
    """One loop's waits on children: one reader per watcher poller (while a
    wait runs, and ``_IDLE`` seconds after), and the futures of each awaited
    child, resolved by that child's one done callback. Holds its loop only
    weakly (``_waits`` is keyed weakly by loop): a loop closed while its
    reader idles takes reader and state with it."""

    __slots__ = (
        "futs",
        "idle_since",
        "loop_ref",
        "on_finish",
        "queue",
        "queued",
        "readers",
        "thread",
        "timing",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_ref: Callable[[], asyncio.AbstractEventLoop | None] = weakref.ref(loop)
        self.thread = threading.get_ident()
        self.futs: dict[Child, list[asyncio.Future[None]]] = {}
        self.readers: dict[_watcher.Watcher, list[int]] = {}  # watcher -> [its fd, waits using it]
        self.timing = False  # an idle timer is armed (its handle is not kept: it holds the loop)
        self.idle_since = 0.0
        self.queue: deque[Child] = deque()  # finished in another thread, for the loop to resolve
        self.queued = False
        self.on_finish = self._finished  # the one done callback (same object to unsubscribe)

    # -- the reader ------------------------------------------------------------

    def acquire(self, loop: asyncio.AbstractEventLoop, w: _watcher.Watcher) -> None:
        """One more wait on this loop uses w's reader (added if it has none)."""
        r = self.readers.get(w)
        if r is None:
            fd = w.fileno()
            _mux(loop).add(fd, w.poll_now)
            self.readers[w] = [fd, 1]
        else:
            r[1] += 1

    def release(self, loop: asyncio.AbstractEventLoop, w: _watcher.Watcher) -> None:
        """A wait that used w's reader is over. The last one leaves the reader
        for _IDLE seconds (a next wait then costs no epoll_ctl on the loop's
        selector), or removes it at once if w is retired (fork, swap)."""
        r = self.readers[w]
        r[1] -= 1
        if r[1]:
            return
        if w is not _watcher.current() or w.closed or loop.is_closed():
            self._remove(loop, w)
        else:
            self.idle_since = loop.time()
            if not self.timing:
                self.timing = True
                loop.call_later(_IDLE, self._idle, loop)

    def _remove(self, loop: asyncio.AbstractEventLoop, w: _watcher.Watcher) -> None:
        fd = self.readers.pop(w)[0]
        m = _muxes.get(loop)
        if m is not None:
            m.remove(fd, w.poll_now)
        if not self.readers and not self.futs:
            _waits.pop(loop, None)

    def _idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timing = False
        left = self.idle_since + _IDLE - loop.time()
        for w, r in list(self.readers.items()):
            if r[1] == 0:
                if left > _IDLE / 10:  # waits came and went meanwhile: idle for less than _IDLE
                    self.timing = True
                    loop.call_later(left, self._idle, loop)
                    return
                self._remove(loop, w)

    # -- the children ----------------------------------------------------------

    def _finished(self, c: Child) -> None:
        """Done callback of every child awaited on this loop: in the reaping
        thread, with the watcher lock held. In the loop's thread (its reader's
        poll_now, or any other call there) its futures are resolved at once;
        from another thread the loop is asked to resolve them. Nothing once
        the loop is closed (a wait left pending when it was) but dropping its
        futures: they hold the closed loop, which is a weak key here."""
        loop = self.loop_ref()
        if loop is None or loop.is_closed():
            self.futs.pop(c, None)
            return
        if threading.get_ident() == self.thread:
            self.resolve(c)
            return
        self.queue.append(c)  # before reading `queued`: see _drain
        if not self.queued:
            self.queued = True
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                pass  # closed meanwhile: nobody is left to wake

    def _drain(self) -> None:
        # `queued` is cleared first: a child queued after the loop below has
        # found the queue empty sees it cleared and schedules another drain.
        self.queued = False
        q = self.queue
        while q:
            self.resolve(q.popleft())

    def resolve(self, c: Child) -> None:
        futs = self.futs.pop(c, None)
        if futs:
            for f in futs:
                if not f.done():
                    f.set_result(None)


# loop -> its _Waits. Weak: a loop closed with an idle reader is not kept alive.
_waits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waits] = weakref.WeakKeyDictionary()


def _loop_waits(loop: asyncio.AbstractEventLoop) -> _Waits:
    st = _waits.get(loop)
    if st is None:
        st = _waits[loop] = _Waits(loop)
    else:
        st.thread = threading.get_ident()  # a loop may be run from another thread later
    return st


async def _wait_child(c: Child) -> None:
    """Until c has finished (reaped, by whichever thread, or lost)."""
    loop = asyncio.get_running_loop()
    st = _loop_waits(loop)
    w = c._watcher  # the one that reaps it
    st.acquire(loop, w)
    try:
        futs = st.futs.get(c)
        if futs is None:
            if not _watcher.Watcher.subscribe(c, st.on_finish):
                return  # finished meanwhile
            futs = st.futs[c] = []
        fut: asyncio.Future[None] = loop.create_future()
        futs.append(fut)
        try:
            await fut
        finally:
            if not fut.done() or fut.cancelled():
                # Cancelled: take our future out; the last one on this loop
                # ends the child's subscription (it stays watched).
                cur = st.futs.get(c)
                if cur is not None and fut in cur:
                    cur.remove(fut)
                    if not cur:
                        del st.futs[c]
                        _watcher.Watcher.unsubscribe(c, st.on_finish)
    finally:
        st.release(loop, w)


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
    st = _loop_waits(loop)

    def check() -> None:
        if pred():
            _resolve(fut)

    def on_done(_c: Child) -> None:
        _in_loop(loop, check)

    subscribed = [c for c in children if w.subscribe(c, on_done)]
    added: list[tuple[int, Callable[[], Any]]] = []
    timer = None
    reading = False
    try:
        st.acquire(loop, w)
        reading = True
        for fd, cb in extra:

            def on_readable(cb: Callable[[], Any] = cb) -> None:
                cb()
                check()

            _mux(loop).add(fd, on_readable)
            added.append((fd, on_readable))
        if deadline.at is not None:
            timer = loop.call_later(deadline.remaining(), _resolve, fut)
        check()
        await fut
    finally:
        if timer is not None:
            timer.cancel()
        for fd, cb in reversed(added):
            m = _muxes.get(loop)
            if m is not None:
                m.remove(fd, cb)
        if reading:
            st.release(loop, w)
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
    if not c._done():
        await _wait_child(c)
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
