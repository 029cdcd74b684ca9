"""``fastreap.install()`` / ``uninstall()``: the stdlib waits through the watcher.

What install() replaces (class attributes; uninstall() puts back the very
objects it found):

* ``subprocess.Popen._execute_child``: a child started from then on is
  watched (``fastreap.watch``) right after the clone, before ``Popen()``
  returns. ``Popen._wait`` (``wait()``, ``communicate(timeout=)``) and
  ``Popen._internal_poll`` (``poll()``, ``send_signal()``) of such a Popen go
  through its Child: event-driven (pidfd/epoll or the SIGCHLD ring), the true
  code, ``TimeoutExpired`` as before. Popens started before install() (or
  after uninstall()) keep the stdlib code. Calls from ``Popen.__del__`` and
  ``subprocess._cleanup`` (``_deadstate`` given) keep the stdlib code too:
  they may run from the garbage collector inside fastreap's own lock.
* ``multiprocessing.process.BaseProcess.start``: a fork or spawn child is
  watched right after it starts; ``popen_fork.Popen.wait`` (``join()``) and
  ``poll`` (``is_alive()``, ``exitcode``) of such a child go through the
  watcher. Forkserver children belong to the server (their exit arrives on
  the sentinel already) and are left alone.
* ``asyncio.unix_events._UnixSelectorEventLoop._make_subprocess_transport``:
  the same transport is built, but no child watcher is consulted (none is
  created, none is deprecated-warned about): the child's exit is delivered by
  fastreap: the child is watched as its Popen starts, the loop reads the
  watcher's poller through ``fastreap.aio``'s one reader per loop (shared with
  ``aio.wait``, kept across children), and a done callback calls
  ``transport._process_exited`` in the loop's next iteration, as asyncio's
  own watchers do. This is the one method every version
  3.10-3.14 shares with the same signature, including 3.14 which has no child
  watchers. Other loops (uvloop) are not touched, and on 3.10-3.13 a child
  watcher chosen explicitly with ``asyncio.set_child_watcher`` (anything but
  the default ``ThreadedChildWatcher``) is respected: the stdlib code runs.

A child reaped behind the watcher's back (``ChildLostError``) falls back to
the stdlib code, which then behaves as it always did (``Popen`` reports 0
after ECHILD).
"""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing.popen_fork
import multiprocessing.process
import os
import subprocess
import sys
import threading
from asyncio import unix_events
from typing import Any

from . import _fork, _watcher, aio
from ._children import Child, ChildLostError, watch
from ._owners import PopenOwner

__all__ = ["install", "installed", "uninstall"]

_lock = _fork.PerProcess(threading.Lock)  # a fork child makes its own on first use
_installed = False
_MISSING = object()
_saved: dict[tuple[type, str], Any] = {}
_ATTR = "_fastreap_installed_watch"  # (pid of the watching process, Child)
# Bound once: tests (CPython's test_subprocess) replace subprocess.Popen with
# subclasses; the methods patched are the real class's.
_Popen = subprocess.Popen
# Who is starting a Popen: its own caller (_PLAIN), asyncio with a child
# watcher chosen explicitly (_UNWATCHED: that watcher reaps it, fastreap must
# not watch it), or asyncio under install() (_LOOP: watched as it starts, and
# the transport takes that Child instead of watching again).
_PLAIN, _UNWATCHED, _LOOP = 0, 1, 2
_starting: contextvars.ContextVar[int] = contextvars.ContextVar("fastreap_starting", default=_PLAIN)


def _watched(obj: Any) -> Child | None:
    w = obj.__dict__.get(_ATTR)
    if w is None or w[0] != os.getpid():
        return None  # not started under install(), or we are a forked child
    c: Child = w[1]
    return c


def _orig(cls: type, name: str) -> Any:
    return _saved[(cls, name)]


# -- subprocess.Popen -------------------------------------------------------


def _popen_execute_child(self: Any, *args: Any, **kwargs: Any) -> None:
    starting = _starting.get()
    if starting != _UNWATCHED:
        # What subprocess._cleanup() does for dropped Popens (it never sees
        # ours: the watcher holds them): reap children that exited meanwhile,
        # O(ready). Also at an asyncio start, though the loop's reader would
        # reap them too: a loop iteration that starts many children runs long
        # (each start blocks until the exec), and reaping at each start hands
        # their exits to the loop an iteration sooner (measured: faster).
        _watcher.current().poll_now()
    _orig(_Popen, "_execute_child")(self, *args, **kwargs)
    if starting == _UNWATCHED:
        return
    try:
        self.__dict__[_ATTR] = (os.getpid(), _watch_new(self))
    except ChildProcessError:
        pass  # reaped by a waitpid(-1) elsewhere already: the stdlib code copes


def _watch_new(p: Any) -> Child:
    """``watch(p)`` for a Popen this process has just started: no
    returncode, no lost child on it, and a pid nobody else has watched. The
    checks watch() makes for any target are skipped; anything unusual (a
    stale entry under its pid, an error) takes watch() itself."""
    w = _watcher.current()
    pid = p.pid
    with w.lock:
        if pid not in w.children and not w.closed:
            c = Child(pid, PopenOwner(p), w)
            try:
                w.add(c)  # registers it, and reaps it if it has exited already
            except (ChildProcessError, ProcessLookupError):
                pass  # nothing registered: watch() finds out what happened
            else:
                return c
    return watch(p)


def _popen_wait(self: Any, timeout: float | None) -> int:
    c = _watched(self)
    if c is not None and self.returncode is None:
        try:
            # The stdlib treats a negative timeout as 0 (TimeoutExpired at once).
            rc = c.wait(None if timeout is None else max(0.0, timeout))
        except ChildLostError:
            pass
        else:
            if rc is None:
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
            if self.returncode is None:  # pragma: no cover - the watcher writes it back first
                self.returncode = rc
            return rc
    r: int = _orig(_Popen, "_wait")(self, timeout)
    return r


def _popen_internal_poll(self: Any, _deadstate: Any = None, *args: Any, **kwargs: Any) -> int | None:
    c = _watched(self) if _deadstate is None else None
    if c is not None and self.returncode is None and not c.lost:
        c.is_alive()  # reaps it (and writes returncode back) if it has exited
        if not c.lost:
            return self.returncode
    r: int | None = _orig(_Popen, "_internal_poll")(self, _deadstate, *args, **kwargs)
    return r


# -- multiprocessing --------------------------------------------------------


def _mp_start(self: Any) -> None:
    _orig(multiprocessing.process.BaseProcess, "start")(self)
    p = self._popen
    if not isinstance(p, multiprocessing.popen_fork.Popen):
        return
    try:
        from multiprocessing import popen_forkserver

        if isinstance(p, popen_forkserver.Popen):
            return  # the server's child: its sentinel already reports the exit
    except ImportError:  # pragma: no cover
        pass
    try:
        p.__dict__[_ATTR] = (os.getpid(), watch(self))
    except ChildProcessError:
        pass


def _mp_wait(self: Any, timeout: float | None = None) -> int | None:
    c = _watched(self)
    if c is not None and self.returncode is None:
        try:
            c.wait(None if timeout is None else max(0.0, timeout))  # join(-1) means join(0)
        except ChildLostError:
            pass
        else:
            return self.returncode
    r: int | None = _orig(multiprocessing.popen_fork.Popen, "wait")(self, timeout)
    return r


def _mp_poll(self: Any, flag: int = os.WNOHANG) -> int | None:
    c = _watched(self)
    if c is not None and self.returncode is None:
        try:
            if flag & os.WNOHANG:
                c.is_alive()
            else:
                c.wait()
        except ChildLostError:
            pass
        if not c.lost:
            return self.returncode
    r: int | None = _orig(multiprocessing.popen_fork.Popen, "poll")(self, flag)
    return r


# -- asyncio ----------------------------------------------------------------


async def _make_subprocess_transport(
    self: Any,
    protocol: Any,
    args: Any,
    shell: bool,
    stdin: Any,
    stdout: Any,
    stderr: Any,
    bufsize: int,
    extra: Any = None,
    **kwargs: Any,
) -> Any:
    if _user_watcher():
        token = _starting.set(_UNWATCHED)
        try:
            return await _orig(unix_events._UnixSelectorEventLoop, "_make_subprocess_transport")(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs
            )
        finally:
            _starting.reset(token)
    waiter = self.create_future()
    token = _starting.set(_LOOP)
    try:
        transp = unix_events._UnixSubprocessTransport(  # type: ignore[attr-defined]
            self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs
        )
    finally:
        _starting.reset(token)
    _deliver_exit(self, transp)
    try:
        await waiter
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        transp.close()
        await transp._wait()
        raise
    return transp


# asyncio's default child watchers (ThreadedChildWatcher and, from 3.12 where
# pidfds work, PidfdChildWatcher): asyncio puts one of them on the policy at
# its first subprocess, which is no choice of the user's. 3.14 has none.
_DEFAULT_WATCHERS: tuple[type, ...] = tuple(
    c
    for c in (
        getattr(unix_events, n, None)
        for n in (
            ("ThreadedChildWatcher", "PidfdChildWatcher")
            if sys.version_info >= (3, 12)
            else ("ThreadedChildWatcher",)
        )
    )
    if isinstance(c, type)
)


def _user_watcher() -> bool:
    """3.10-3.13: a child watcher other than the defaults was chosen
    (``asyncio.set_child_watcher``): respect it."""
    if not _DEFAULT_WATCHERS:
        return False
    w = getattr(asyncio.events._event_loop_policy, "_watcher", None)  # type: ignore[attr-defined]
    return w is not None and type(w) not in _DEFAULT_WATCHERS


class _LoopExit:
    """Delivers one asyncio child's exit: ``transp._process_exited(rc)`` in
    its loop once fastreap has reaped the child. Meanwhile the loop reads the
    watcher's poller through aio's one reader per loop (shared with
    ``aio.wait``, kept ``aio._IDLE`` s after the last user: a next child
    costs no epoll_ctl on the loop's selector)."""

    __slots__ = ("child", "loop", "proc", "transp", "w", "waits")

    def __init__(self, loop: Any, transp: Any, child: Child) -> None:
        self.loop = loop
        self.transp = transp
        self.proc = transp._proc
        self.child = child
        self.w = child._watcher
        self.waits = aio._loop_waits(loop)
        self.waits.acquire(loop, self.w)
        if not _watcher.Watcher.subscribe(child, self.on_done):
            self.on_done(child)  # finished already

    def on_done(self, _c: Child) -> None:
        # In whichever thread reaped it, with the watcher lock held: hand off
        # to the loop's next iteration, as asyncio's own watchers do (3.12's
        # PidfdChildWatcher from its reader, 3.10/3.11's ThreadedChildWatcher
        # from its thread: one call_soon_threadsafe). From the loop's own
        # thread (its reader, or a Popen start's poll_now: the usual cases) no
        # wake-up write is needed: the loop runs what is scheduled before it
        # sleeps again.
        loop = self.loop
        if loop.is_closed():
            return
        if loop._thread_id == threading.get_ident():
            loop.call_soon(self.exited)
            return
        try:
            loop.call_soon_threadsafe(self.exited)
        except RuntimeError:
            pass  # the loop closed meanwhile

    def exited(self) -> None:
        loop = self.loop
        self.waits.release(loop, self.w)
        c = self.child
        if c._status is not None:
            rc = c._status.returncode
        else:  # lost: what asyncio's own watchers report for a child they cannot wait for
            rc = self.proc.returncode if self.proc.returncode is not None else 255
        if not loop.is_closed():
            self.transp._process_exited(rc)


def _deliver_exit(loop: asyncio.AbstractEventLoop, transp: Any) -> None:
    """Call transp._process_exited(returncode) in the loop once fastreap has
    reaped the child (watched by _popen_execute_child as it started)."""
    proc = transp._proc
    w = proc.__dict__.get(_ATTR)  # set just now, in this process, by _popen_execute_child
    c = None if w is None else w[1]
    if c is None:
        try:
            c = watch(proc)
        except ChildProcessError:
            # Reaped elsewhere before we could watch it: what asyncio's own
            # watchers report for a child they cannot wait for.
            loop.call_soon(transp._process_exited, proc.returncode if proc.returncode is not None else 255)
            return
    _LoopExit(loop, transp, c)


# -- install / uninstall ----------------------------------------------------

_PATCHES: list[tuple[type, str, Any]] = [
    (_Popen, "_execute_child", _popen_execute_child),
    (_Popen, "_wait", _popen_wait),
    (_Popen, "_internal_poll", _popen_internal_poll),
    (multiprocessing.process.BaseProcess, "start", _mp_start),
    (multiprocessing.popen_fork.Popen, "wait", _mp_wait),
    (multiprocessing.popen_fork.Popen, "poll", _mp_poll),
    (unix_events._UnixSelectorEventLoop, "_make_subprocess_transport", _make_subprocess_transport),
]


def install() -> None:
    """From now on, ``subprocess.Popen``, ``multiprocessing.Process`` (fork,
    spawn) and asyncio subprocesses started in this process wait through
    fastreap's watcher (see the module docstring for exactly what changes).
    Children started before are left alone. Idempotent and thread-safe;
    undone by ``uninstall()``."""
    global _installed
    with _lock.get():
        if _installed:
            return
        for cls, name, _fn in _PATCHES:
            _saved[(cls, name)] = cls.__dict__.get(name, _MISSING)
        for cls, name, fn in _PATCHES:
            setattr(cls, name, fn)
        _installed = True


def uninstall() -> None:
    """Put back exactly the stdlib methods install() replaced (a no-op when
    not installed). Children started meanwhile stay watched, and their
    Popen/Process objects keep working through the stdlib code."""
    global _installed
    with _lock.get():
        if not _installed:
            return
        for cls, name, _fn in _PATCHES:
            orig = _saved[(cls, name)]
            if orig is _MISSING:  # pragma: no cover - every patched name is defined on its class
                delattr(cls, name)
            else:
                setattr(cls, name, orig)
        _installed = False


def installed() -> bool:
    """Whether install() is in effect."""
    return _installed
