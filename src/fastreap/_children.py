"""Parent side, the public facade: watch children, wait for them without
polling, reap without stealing, stop many at once.

The machinery lives next door (docs/ARCHITECTURE.md has the map):
``_watcher`` (registry, lock, leader/follower wait) over its backends
(``_backend_pidfd``, ``_backend_sigchld``, ``_backend_kqueue``); ``_owners``
(the Popen/Process write-back); ``_status`` (ExitStatus); ``_stop``
(graceful_stop's state machine); ``_procfs``; ``_deadline``; ``_args``.
"""

from __future__ import annotations

import multiprocessing.process
import signal as _signal
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal, TypedDict, Union

from . import _core, _stop, _watcher
from ._args import (
    check_bool,
    check_child,
    check_mp_process,
    check_pid,
    check_signal,
    check_timeout,
    not_a_child,
)
from ._deadline import NEVER, Deadline
from ._owners import Owner, is_mp_process, is_popen, owner_of
from ._status import ChildLostError, ExitStatus, from_returncode
from ._stop import StopReport, StopRun

__all__ = [
    "ALL_EXITED",
    "FIRST_EXITED",
    "Child",
    "ChildLostError",
    "Counters",
    "ExitStatus",
    "ReturnWhen",
    "StopReport",
    "Target",
    "counters",
    "graceful_stop",
    "kill",
    "reap",
    "set_subreaper",
    "terminate",
    "wait",
    "watch",
]

FIRST_EXITED: Final[Literal["FIRST_EXITED"]] = "FIRST_EXITED"
ALL_EXITED: Final[Literal["ALL_EXITED"]] = "ALL_EXITED"

#: What ``wait(..., return_when=...)`` accepts: FIRST_EXITED or ALL_EXITED.
ReturnWhen = Literal["FIRST_EXITED", "ALL_EXITED"]

#: A child fastreap can watch: a pid (``int``), a ``Child``, a
#: ``subprocess.Popen``, or a started ``multiprocessing.Process`` (any
#: ``BaseProcess``: ``fastreap.Process`` too). Not an
#: ``asyncio.subprocess.Process``: asyncio's own child watcher waits for it.
Target = Union[int, "Child", "subprocess.Popen[Any]", multiprocessing.process.BaseProcess]


class Counters(TypedDict):
    """What ``fastreap.counters()`` returns; counts are since the process started."""

    signals: dict[int, int]  # signal number -> times fastreap's C handler ran for it
    reaped: int  # children the watcher reaped
    escalations: int  # children graceful_stop SIGKILLed after the grace period
    lost: int  # watched children someone else reaped (exit status unknown)
    degraded_scans: int  # SIGCHLD path: scans of every watched child (its ring overflowed)
    loss_checks: int  # SIGCHLD path: checks for children reaped behind fastreap's back
    sigchld_replaced: int  # SIGCHLD path: times its handler was found replaced by another one
    watched: int  # children watched now (not yet finished)
    pidfds: int  # pidfds the watcher holds now
    backend: str  # how exits are noticed: "pidfd", "sigchld" or "kqueue"


class Child:
    """A watched child process. Signalling is pid-reuse safe (pidfd where the
    kernel has one; otherwise kill() while the unreaped pid cannot be reused)
    and becomes a silent no-op once the child is reaped."""

    __slots__ = ("__weakref__", "_lost", "_owner", "_status", "_watcher", "pid")

    def __init__(self, pid: int, owner: Owner, watcher: _watcher.Watcher) -> None:
        if not isinstance(watcher, _watcher.Watcher):
            # A hand-made Child could name any pid (pid 1, the parent): only
            # watch(), which checks that pid is our child, makes them.
            raise TypeError("Child objects are made by fastreap.watch(target), not directly")
        self.pid = pid
        self._owner = owner  # who else wants its status (_owners)
        self._watcher = watcher  # the one that watches it (its pidfd, start time, callbacks)
        self._status: ExitStatus | None = None
        self._lost = False

    def _done(self) -> bool:
        return self._status is not None or self._lost

    def _finish(self, status: ExitStatus | None) -> None:
        """It ended (status) or was lost (None); called once, by its watcher
        (lock held) or by watch() for a target already finished."""
        if status is None:
            self._lost = True
        else:
            self._status = status

    def _refresh(self) -> None:
        if not self._done() and not self._watcher.closed:
            if self._watcher.lock.owned():
                return  # a signal handler inside fastreap's own code: what is known so far
            with self._watcher.lock:
                self._watcher.try_reap(self)

    @property
    def status(self) -> ExitStatus | None:
        """How it ended, or None while it runs."""
        self._refresh()
        return self._status

    @property
    def returncode(self) -> int | None:
        """None while running; the exit code, or -N if signal N killed it."""
        self._refresh()
        return None if self._status is None else self._status.returncode

    # h-spawner (issue 13): the Popen behind fastreap.spawn()/watch(popen).
    @property
    def popen(self) -> subprocess.Popen[Any] | None:
        """The ``subprocess.Popen`` it watches (``fastreap.spawn``,
        ``watch(popen)``), else None."""
        t = getattr(self._owner, "target", None)
        return t if is_popen(t) else None

    @property
    def lost(self) -> bool:
        """True if someone else reaped it and its status is unknown."""
        return self._lost

    def is_alive(self) -> bool:
        """Whether it still runs (reaps it if it has exited)."""
        self._refresh()
        return not self._done()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait (without polling, GIL released) until it exits; return its
        returncode, or None on timeout. ChildLostError if someone else reaped it."""
        deadline = NEVER if timeout is None else Deadline.after(check_timeout(timeout))
        if self._watcher.closed and not self._done():
            raise ChildProcessError(f"pid {self.pid} is a child of the parent process, not of this one")
        self._watcher.wait_until(self._done, deadline)
        if self._lost:
            raise ChildLostError(f"pid {self.pid} was reaped by someone else; its exit status is unknown")
        return None if self._status is None else self._status.returncode

    def send_signal(self, sig: int) -> None:
        """Send sig to the child (pid-reuse safe); nothing once it is reaped."""
        sig = check_signal(sig, "sig", allow_zero=True)
        with self._watcher.lock:
            self._watcher.send_locked(self, sig)

    def terminate(self) -> None:
        """SIGTERM (pid-reuse safe)."""
        self.send_signal(_signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (pid-reuse safe)."""
        self.send_signal(_signal.SIGKILL)

    def add_done_callback(self, fn: Callable[[Child], None]) -> None:
        """Call fn(child) once it is reaped (at once if it already is), in the
        thread that reaps it, with fastreap's watcher lock held: keep it short
        and hand work off (``loop.call_soon_threadsafe``, ``queue.put``,
        ``Event.set``) rather than calling fastreap from it. An exception it
        raises is logged (logger ``fastreap``) and does not stop the others."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        if not self._watcher.subscribe(self, fn):
            fn(self)

    def remove_done_callback(self, fn: Callable[[Child], None]) -> None:
        self._watcher.unsubscribe(self, fn)

    def __repr__(self) -> str:
        state = (
            "lost"
            if self._lost
            else ("running" if self._status is None else f"returncode={self._status.returncode}")
        )
        return f"<fastreap.Child pid={self.pid} {state}>"


def _lost_child(owner: Owner, w: _watcher.Watcher) -> Child | None:
    """The Child of a Popen/Process that someone else reaped (its own
    returncode never got set, and its pid may have been reused since)."""
    c = owner.lost_child()
    if isinstance(c, Child) and c._lost and c._watcher is w:
        return c
    return None


def watch(target: Target) -> Child:
    """Watch a child: an ``int`` pid, a ``subprocess.Popen``, a started
    ``multiprocessing.Process`` (or a Child, returned as is)."""
    w = _watcher.current()
    if isinstance(target, Child):
        return target
    owner = owner_of(target)  # the one place the kind of target is decided
    if owner.target is None:
        pid = check_pid(target)
    else:
        owner.check("target")
        pid = owner.target.pid
    w.check_open()
    with w.lock:
        existing = w.children.get(pid)
        if existing is not None:
            return existing
        existing = _lost_child(owner, w)
        if existing is not None:
            return existing  # its pid may name another child of ours by now
        child = Child(pid, owner, w)
        rc = owner.returncode()
        if rc is not None:
            child._finish(from_returncode(pid, rc))
            return child
        try:
            w.add(child)  # also reaps it if it has exited already: nothing would announce that
        except (ChildProcessError, ProcessLookupError):
            # Reaped already: by its owner racing us (Popen.wait() in another
            # thread: ECHILD from the peek, ESRCH from pidfd_open)? Its
            # returncode, read under its lock, is then the true code.
            rc = owner.found()
            if rc is None:
                raise not_a_child(pid, "target", ours=owner.target is not None) from None
            child._finish(from_returncode(pid, rc))
            return child
        return child


def validate(targets: Iterable[Target] | Target, name: str = "targets") -> list[Any]:
    """Check every target (raising a clear error naming ``name``) without
    watching or signalling any: the first half of "nothing half-done"."""
    if isinstance(targets, (int, Child)) or is_popen(targets) or is_mp_process(targets):
        targets = [targets]
    if not isinstance(targets, Iterable) or isinstance(targets, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of children, not {type(targets).__name__}")
    items = list(targets)
    w = _watcher.current()
    for t in items:
        if isinstance(t, Child):
            if t._watcher.closed and not t._done():
                raise ChildProcessError(f"{name}: {t!r} is a child of the parent process, not of this one")
            continue
        if is_popen(t):
            if t.returncode is None and t.pid not in w.children and _lost_child(owner_of(t), w) is None:
                check_child(t.pid, name, ours=True)
            continue
        if is_mp_process(t):
            check_mp_process(t, name)
            continue
        pid = check_pid(t, name)
        if pid not in w.children:
            check_child(pid, name)
    return items


def as_children(targets: Iterable[Target] | Target, name: str = "targets") -> list[Child]:
    """Validate every item, then watch each: nothing half-done."""
    return _as_children(targets, name)[0]


def _as_children(
    targets: Iterable[Target] | Target, name: str
) -> tuple[list[Child], _watcher.Watcher | None]:
    """as_children, and the one open watcher every child belongs to (None
    if they are not all one open watcher's, or none were given)."""
    if isinstance(targets, (list, set, tuple, frozenset)):
        # The hot case (wait() in a loop over Child objects): each needs
        # only the check validate() makes for a Child; anything else (or a
        # check that fails, to raise its error) takes the general path.
        # Children of a watcher already found open skip its check: one
        # ``closed`` look per watcher, not per child.
        kids = list(targets)
        first: _watcher.Watcher | None = None
        last: _watcher.Watcher | None = None  # the last watcher found open
        sole = True
        for t in kids:
            if type(t) is not Child:
                break
            tw = t._watcher
            if tw is last:
                continue
            if first is None:
                first = tw
            elif tw is not first:
                sole = False
            if tw.closed:
                if not t._done():
                    break
                sole = False
                last = None  # each of its children is checked
                continue
            last = tw
        else:
            return kids, first if sole else None
    kids = [watch(t) for t in validate(targets, name)]
    w = kids[0]._watcher if kids else None
    return kids, w if w is not None and not w.closed and all(c._watcher is w for c in kids) else None


def wait(
    children: Iterable[Target],
    timeout: float | None = None,
    return_when: ReturnWhen = FIRST_EXITED,
) -> tuple[set[Child], set[Child]]:
    """Wait until the first (FIRST_EXITED) or all (ALL_EXITED) of ``children``
    have exited, or timeout seconds pass; return ``(done, pending)`` sets.
    Event-driven (never sleeps in a loop), GIL released while blocked."""
    if return_when not in (FIRST_EXITED, ALL_EXITED):
        raise ValueError(f"return_when must be FIRST_EXITED or ALL_EXITED, got {return_when!r}")
    deadline = NEVER if timeout is None else Deadline.after(check_timeout(timeout))
    kids, sole = _as_children(children, "children")
    if kids:
        w = _watcher.current()
        if return_when == FIRST_EXITED:
            # The result sets are made before blocking: when one exit of
            # ours (the only finish in w since we started, with every child
            # w's) ends the wait, that child just moves across.
            pending = set(kids)
            ours = sole is w
            start = w.finished
            seen = -1
            hit: Child | None = None

            def pred() -> bool:
                # Scan only when some child has finished since the last look.
                nonlocal seen, hit
                if hit is None and w.finished != seen:
                    seen = w.finished
                    for c in kids:
                        if c._status is not None or c._lost:
                            hit = c
                            break
                return hit is not None

            w.wait_until(pred, deadline)
            if hit is not None and w.finished == start + 1 and ours:
                pending.discard(hit)
                return {hit}, pending
        else:
            pending_kids = list(kids)

            def pred() -> bool:
                # One running child is enough to say no; each finished one is
                # popped once: O(len(kids)) over the whole wait.
                while pending_kids and pending_kids[-1]._done():
                    pending_kids.pop()
                return not pending_kids

            w.wait_until(pred, deadline)
    done = {c for c in kids if c._status is not None or c._lost}
    return done, set(kids) - done


def reap() -> list[ExitStatus]:
    """Reap every exited child of this process: the supervisor / PID-1 opt-in
    that steals. Not from a live owner: the status of a child that a
    ``subprocess.Popen`` or ``multiprocessing.Process`` still owns is taken
    through the watcher under that object's lock and written back to it (so
    its ``wait()``/``join()`` keep their true code); see ``_live_owners`` for
    what cannot be protected."""
    w = _watcher.current()
    # Watched children first, by the non-stealing path (Popen locks respected).
    w.poll_now()
    out: list[ExitStatus] = []
    owners: dict[int, Any] | None = None
    hold: set[int] | None = None
    making: list[Any] = []
    waited: set[int] = set()
    while True:
        z = _core.peek_any()  # a zombie, left waitable
        if z <= 0:
            break
        with w.lock:
            c = w.children.get(z)
        if c is None:
            if owners is None or z not in owners:
                owners, hold, making = _live_owners()  # only when a zombie is neither watched nor known
            target = owners.pop(z, None)
            if target is not None:
                try:
                    c = watch(target)
                except (ChildProcessError, ValueError, TypeError):
                    c = None  # reaped by its owner meanwhile, or no longer watchable
                else:
                    owners[z] = None  # seen: never stolen below, even if it got away
        if c is not None:
            with w.lock:
                w.try_reap(c)
            if c._status is not None:
                out.append(c._status)
            if not c._done():
                break  # cannot happen (it was a zombie); never spin
            continue
        if (owners is not None and z in owners) or (hold is not None and z in hold):
            break  # a child whose owner cannot take it here: leave it (to it, or the next call)
        if making and z not in waited:
            # Some Popen is being made (fork done, pid not yet set): the
            # zombie may be its child. Wait (bounded) until each of them has
            # its pid, then look again. Objects copied from a parent
            # mid-construction never finish: one bounded pause per zombie.
            waited.add(z)
            _await_pids(making, _MAKING_WAIT)
            owners = None
            continue
        with w.lock:
            r = _core.reap_one(z)  # None: someone else reaped it since the peek
        if r:
            out.append(r)
    return out


def _await_pids(making: list[Any], limit: float) -> None:
    """Sleep (up to ``limit`` seconds, in short steps) until every Popen in
    ``making`` has its ``pid`` set, or has finished."""
    deadline = time.monotonic() + limit
    step = 0.0005
    while True:
        late = [
            o
            for o in making
            if not isinstance(getattr(o, "pid", None), int) and getattr(o, "returncode", None) is None
        ]
        left = deadline - time.monotonic()
        if not late or left <= 0:
            break
        time.sleep(min(step, left))
        step = min(step * 2, 0.01)
    # Never waited for again: a Popen whose construction failed before its
    # fork (kept alive by a traceback), or one copied into a fork child
    # mid-construction, would otherwise cost every reap() this pause.
    for o in late:
        _stale.add(o)


# How long reap() lets a Popen that is being made (fork done, pid not yet set)
# finish, before taking an unknown zombie: far longer than the microseconds it
# needs, so that a loaded machine's scheduling delay does not lose its status.
_MAKING_WAIT = 0.5
# Popens that once outlasted _MAKING_WAIT without a pid (weakly held).
_stale: weakref.WeakSet[Any] = weakref.WeakSet()


def _live_owners() -> tuple[dict[int, Any], set[int], list[Any]]:
    """pid -> the live Popen / multiprocessing Process that owns it; the
    pids never to steal though no owner can take them (a fork
    ``multiprocessing`` Popen whose Process is not yet in ``_children``);
    and the Popens being made right now (between fork and ``self.pid``).

    Found through ``multiprocessing.process._children`` (every started,
    unjoined Process), ``subprocess._active`` (Popens dropped while running),
    and a scan of the garbage collector's objects for ``Popen`` instances
    (paid once per ``reap()`` call, only when a zombie is not watched). Not
    protected: a Popen whose maker does not set its pid within
    ``_MAKING_WAIT`` (it is not waited for again), children made with
    ``os.fork``/``os.posix_spawn`` by other code, objects the collector does
    not track."""
    import gc
    import multiprocessing.process as mpp

    from ._owners import _Popen

    mp_popen = getattr(sys.modules.get("multiprocessing.popen_fork"), "Popen", None)
    out: dict[int, Any] = {}
    hold: set[int] = set()
    making: list[Any] = []
    for p in list(getattr(mpp, "_children", ())):
        popen = getattr(p, "_popen", None)
        if popen is not None and popen.returncode is None and isinstance(p.pid, int):
            out[p.pid] = p
    # The collector's list holds every tracked object while it lives: filter
    # it in C, in one call (no bytecode runs, so no other thread runs while
    # it is alive). Held longer, it would keep alive objects that other
    # threads are dropping, memoryviews among them (their exporters then
    # fail to resize: BufferError).
    popens: list[Any] = list(filter(_Popen.__instancecheck__, gc.get_objects()))
    mp_popens: list[Any] = (
        [] if mp_popen is None else list(filter(mp_popen.__instancecheck__, gc.get_objects()))
    )
    for o in popens:  # (attributes read with getattr: __init__ may not have set them yet)
        if getattr(o, "returncode", None) is None:
            if isinstance(getattr(o, "pid", None), int):
                out.setdefault(o.pid, o)
            elif o not in _stale:
                making.append(o)  # being made (its child may be the zombie), or failed
    for o in mp_popens:
        if getattr(o, "returncode", None) is None:
            pid = getattr(o, "pid", None)
            if isinstance(pid, int):
                if pid not in out:
                    hold.add(pid)
            elif o not in _stale:
                making.append(o)
    for o in list(getattr(subprocess, "_active", None) or ()):
        if isinstance(o, _Popen) and o.returncode is None and isinstance(o.pid, int):
            out.setdefault(o.pid, o)
    return out, hold, making


def set_subreaper(on: bool = True) -> None:
    """Become (or stop being) the reaper of orphaned descendants
    (Linux ``PR_SET_CHILD_SUBREAPER``); NotImplementedError elsewhere."""
    check_bool(on, "on")
    _core.set_subreaper(on)


def graceful_stop(
    targets: Iterable[Target] | Target,
    timeout: float | None = 10.0,
    *,
    signal: int = _signal.SIGTERM,
    kill_after: bool = True,
    group: bool = False,
) -> StopReport:
    """Signal every target at once, wait for all until one shared deadline
    (returning as soon as all have exited), SIGKILL those still running
    (``kill_after``), reap every one. Every target is checked first: a bad
    one raises before anything is signalled. ``group=True`` signals each
    target's process group and waits for (and kills) its other members too.
    ``targets``: one ``fastreap.Target`` (pid, Child, Popen, started
    multiprocessing Process) or an iterable of them. Returns a StopReport
    (each target in exactly one of exited/killed/lost/alive)."""
    run = StopRun(targets, timeout, signal, kill_after, group)
    try:
        return _stop.drive_blocking(run)
    finally:
        run.close()


def terminate(targets: Iterable[Target] | Target, timeout: float | None = None) -> StopReport:
    """SIGTERM every target now, then wait (up to timeout; None: until they
    exit) and reap. Never escalates: see graceful_stop for that."""
    return graceful_stop(targets, timeout, kill_after=False)


def kill(targets: Iterable[Target] | Target) -> StopReport:
    """SIGKILL every target now, then reap."""
    return graceful_stop(targets, None, signal=_signal.SIGKILL, kill_after=False)


def counters() -> Counters:
    """What fastreap has done in this process (a ``fastreap.Counters`` dict):
    ``signals`` (signal number -> times its handler ran), ``reaped``,
    ``escalations`` (SIGKILLs after a grace period), ``lost`` (children
    someone else reaped), ``degraded_scans`` and ``loss_checks`` (SIGCHLD
    path), ``watched`` and ``pidfds`` (now), ``backend`` ("pidfd", "sigchld"
    or "kqueue")."""
    from ._flags import handled_signals

    w = _watcher.current()
    return {
        "signals": handled_signals(),
        "reaped": w.reaped,
        "escalations": w.escalations,
        "lost": w.lost,
        "degraded_scans": w.sigchld.degraded_scans,
        "loss_checks": w.sigchld.loss_checks,
        "sigchld_replaced": w.sigchld.replaced,
        "watched": len(w.children),
        "pidfds": w.pidfd.count,
        "backend": w.backend,
    }
