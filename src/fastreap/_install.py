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
  fastreap (a reader on the watcher's poller while the child runs, and a done
  callback that calls ``transport._process_exited`` one loop iteration later,
  as 3.10/3.11's watcher callback does). This is the one method every version
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

__all__ = ["install", "installed", "uninstall"]

_lock = _fork.PerProcess(threading.Lock)  # a fork child makes its own on first use
_installed = False
_MISSING = object()
_saved: dict[tuple[type, str], Any] = {}
_ATTR = "_fastreap_installed_watch"  # (pid of the watching process, Child)
# Bound once: tests (CPython's test_subprocess) replace subprocess.Popen with
# subclasses; the methods patched are the real class's.
_Popen = subprocess.Popen
# Set while asyncio's own code (an explicitly chosen child watcher) starts a
# child: that watcher reaps it, fastreap must not watch it.
_unwatched: contextvars.ContextVar[bool] = contextvars.ContextVar("fastreap_unwatched", default=False)


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
    # What subprocess._cleanup() does for dropped Popens (it never sees ours:
    # the watcher holds them): reap children that exited meanwhile, O(ready).
    _watcher.current().poll_now()
    _orig(_Popen, "_execute_child")(self, *args, **kwargs)
    if _unwatched.get():
        return
    try:
        self.__dict__[_ATTR] = (os.getpid(), watch(self))
    except ChildProcessError:
        pass  # reaped by a waitpid(-1) elsewhere already: the stdlib code copes


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
        token = _unwatched.set(True)
        try:
            return await _orig(unix_events._UnixSelectorEventLoop, "_make_subprocess_transport")(
                self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs
            )
        finally:
            _unwatched.reset(token)
    waiter = self.create_future()
    transp = unix_events._UnixSubprocessTransport(  # type: ignore[attr-defined]
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter=waiter, extra=extra, **kwargs
    )
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


def _user_watcher() -> bool:
    """3.10-3.13: a child watcher other than the defaults was chosen
    (``asyncio.set_child_watcher``): respect it. The defaults are
    ThreadedChildWatcher and, from 3.12 where pidfds work, PidfdChildWatcher:
    asyncio puts one of them on the policy at its first subprocess, which is
    no choice of the user's. 3.14 has none."""
    policy = asyncio.events._event_loop_policy  # type: ignore[attr-defined]
    w = getattr(policy, "_watcher", None)
    names = (
        ("ThreadedChildWatcher", "PidfdChildWatcher")
        if sys.version_info >= (3, 12)
        else ("ThreadedChildWatcher",)
    )
    defaults = tuple(c for c in (getattr(unix_events, n, None) for n in names) if c)
    return w is not None and bool(defaults) and type(w) not in defaults


def _deliver_exit(loop: asyncio.AbstractEventLoop, transp: Any) -> None:
    """Call transp._process_exited(returncode) in the loop once fastreap has
    reaped the child; read the watcher's poller from the loop meanwhile."""
    proc = transp._proc
    try:
        c = watch(proc)
    except ChildProcessError:
        # Reaped elsewhere before we could watch it: what asyncio's own
        # watchers report for a child they cannot wait for.
        loop.call_soon(transp._process_exited, proc.returncode if proc.returncode is not None else 255)
        return
    w = _watcher.current()
    wfd = w.fileno()
    aio._mux(loop).add(wfd, w.poll_now)

    def unsubscribe() -> None:
        aio._mux(loop).remove(wfd, w.poll_now)

    def exited() -> None:
        unsubscribe()
        rc = c.returncode if not c.lost else (proc.returncode if proc.returncode is not None else 255)
        if not loop.is_closed():
            transp._process_exited(rc)

    def on_done(_c: Child) -> None:
        # In whichever thread reaped it, with the watcher lock held: hand
        # off, and let one loop iteration pass first so the pipes' last data
        # is read before the exit is reported (as 3.10/3.11 do).
        if loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(loop.call_soon, exited)
        except RuntimeError:
            pass  # the loop closed meanwhile

    c.add_done_callback(on_done)


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
