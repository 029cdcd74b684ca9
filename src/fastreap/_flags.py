"""Worker side: stop flags set by fastreap's C signal handler.

The handler itself is plain C (``_csrc/handler.c``); this module decides what to
install and keeps the books needed to put back exactly what was there.

Chaining policy (what else runs when a handled signal arrives):

* a foreign C handler that was installed before us (``signal.getsignal`` says
  None) is always called after ours;
* a Python-level handler set with ``signal.signal`` keeps running (we chain to
  CPython's C handler, which schedules it for the main thread), except
  Python's default SIGINT handler: handling SIGINT with fastreap means Ctrl-C
  sets the flag instead of raising KeyboardInterrupt, until ``restore_signals``;
* SIG_DFL and SIG_IGN are replaced, not called;
* with ``exit=True`` the main thread gets ``Stopped`` instead (through
  ``PyErr_SetInterruptEx``), and Python-level handlers are replaced.
"""

from __future__ import annotations

import contextlib
import signal as _signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _core
from ._args import check_bool, check_flag, check_handled
from ._core import StopFlag, stop_requested

__all__ = [
    "StopFlag",
    "Stopped",
    "default_flag",
    "graceful",
    "handle_signals",
    "restore_signals",
    "stop_requested",
]

DEFAULT_SIGNALS: tuple[int, ...] = (_signal.SIGTERM, _signal.SIGINT)


class Stopped(SystemExit):
    """Raised in the main thread when a handled stop signal arrives with
    ``exit=True``; its code is 128 + the signal number (143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal = signum

    def __repr__(self) -> str:
        return f"Stopped({_signal.Signals(self.signal).name}, code={self.code})"


@dataclass
class _Record:
    """What fastreap changed for one signal, so restore_signals can undo it."""

    flags: list[StopFlag] = field(default_factory=list)
    exit: bool = False
    py_changed: bool = False
    py_prev: Any = None


_lock = threading.RLock()
_installed: dict[int, _Record] = {}
# Signals whose handler fastreap's watcher needs (SIGCHLD on its SIGCHLD
# path): restore_signals puts back the user's part only (flags, exit mode,
# Python handler) and leaves the watcher's installation in place.
_kept: set[int] = set()


def keep(signo: int) -> None:
    """The watcher installed fastreap's handler for signo and needs it kept."""
    with _lock:
        _kept.add(signo)


def default_flag() -> StopFlag:
    """The process default stop flag (what stop_requested() reads)."""
    return _core.default_flag


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def handle_signals(
    signals: Iterable[int] | int = DEFAULT_SIGNALS,
    flag: StopFlag | None = None,
    *,
    exit: bool = False,
) -> StopFlag:
    """Install fastreap's C handler for ``signals`` (from any thread); each
    arrival sets ``flag`` (the process default flag when None). With
    ``exit=True`` the main thread also gets ``Stopped`` at its next bytecode.
    Idempotent; ``restore_signals`` undoes it."""
    sigs = check_handled(signals)
    check_bool(exit, "exit")
    flag = check_flag(flag)
    if exit and not _is_main_thread():
        # Python runs exception-raising handlers only in the main thread and
        # lets only the main thread set them (signal.signal).
        raise ValueError("exit=True must be asked for from the main thread; other threads may use exit=False")
    with _lock:
        # What this call changed, so a failure half-way (a full binding table,
        # a refused sigaction) undoes it and leaves every signal as it was.
        done: list[list[Any]] = []  # [signal, record, new, bound, upgraded]
        try:
            for s in sigs:
                rec = _installed.get(s)
                new = rec is None
                if rec is None:
                    rec = _Record()
                    rec.py_prev = _signal.getsignal(s)  # None means a foreign C handler
                    _installed[s] = rec
                step = [s, rec, new, False, False]
                done.append(step)
                if exit and not rec.exit:
                    _core.save(s)  # the original C disposition, before signal.signal touches it
                    _signal.signal(s, _raise_stopped)
                    rec.py_changed = rec.exit = True
                    step[4] = True
                if flag not in rec.flags:
                    _core.bind(s, flag)
                    rec.flags.append(flag)
                    step[3] = True
                _core.install(s, False, _chain(rec))
                _core.set_exit(s, rec.exit)
        except BaseException:
            for s, rec, new, bound, upgraded in reversed(done):
                if new:
                    del _installed[s]
                    _undo(s, rec)
                    continue
                if upgraded:
                    _core.set_exit(s, False)
                    _signal.signal(s, rec.py_prev if rec.py_prev is not None else _signal.SIG_DFL)
                    rec.py_changed = rec.exit = False
                if bound:
                    _core.unbind(s, flag)
                    rec.flags.remove(flag)
                _core.install(s, False, _chain(rec))
            _core.quiesce()
            raise
    return flag


def _chain(rec: _Record) -> bool:
    """Whether our handler calls the C handler that was there before it.

    ``signal.getsignal`` cannot see a C handler installed behind Python's back
    (faulthandler, ctypes, an extension): it then still reports SIG_DFL or
    SIG_IGN. So chain to whatever *function* the kernel had (the C layer
    already skips real SIG_DFL/SIG_IGN), except CPython's own handler when it
    would run the wrong Python-level handler: the default SIGINT handler
    (Ctrl-C sets the flag instead of raising), or any Python handler in
    exit mode (Stopped replaces it)."""
    py_handler = callable(rec.py_prev)
    return not (py_handler and (rec.exit or rec.py_prev is _signal.default_int_handler))


def _undo(s: int, rec: _Record) -> None:
    # Put back only what is still ours: a handler installed since (signal.signal,
    # a C library) stays, Python-level one included.
    ours = _core.handler_installed(s)
    if s in _kept:
        # The watcher's installation is not the user's: drop the user's part
        # only (flags, exit mode, Python handler) and keep the watcher's.
        if rec.py_changed and ours:
            _core.set_exit(s, False)
            prev = rec.py_prev if rec.py_prev is not None else _signal.SIG_DFL
            _signal.signal(s, prev)
        for f in rec.flags:
            _core.unbind(s, f)
        _core.set_exit(s, False)
        if ours:
            _core.install(s, True, True)  # SA_RESTART, as the watcher installs it
        return
    if rec.py_changed and ours:
        prev = rec.py_prev if rec.py_prev is not None else _signal.SIG_DFL
        _signal.signal(s, prev)
    _core.restore(s, ours)
    for f in rec.flags:
        _core.unbind(s, f)


def restore_signals(signals: Iterable[int] | int | None = None) -> None:
    """Put back exactly the dispositions fastreap replaced (all, or those named)."""
    with _lock:
        sigs = list(_installed) if signals is None else [s for s in check_handled(signals) if s in _installed]
        if not _is_main_thread() and any(_installed[s].py_changed for s in sigs):
            raise ValueError("these signals were handled with exit=True; restore them from the main thread")
        for s in sigs:
            _undo(s, _installed.pop(s))
        _core.quiesce()


@contextlib.contextmanager
def graceful(signals: Iterable[int] | int = DEFAULT_SIGNALS, *, exit: bool = False) -> Iterator[StopFlag]:
    """Handle ``signals`` inside the block (yielding the default flag) and
    restore, on the way out, those that were not handled before it."""
    sigs = check_handled(signals)
    check_bool(exit, "exit")
    with _lock:
        before = set(_installed)
    flag = handle_signals(sigs, exit=exit)
    try:
        yield flag
    finally:
        restore_signals([s for s in sigs if s not in before])


def handled_signals() -> dict[int, int]:
    """Signal number -> how many times fastreap's handler has run for it."""
    return {s: _core.signal_count(s) for s in range(1, _core.NSIG) if _core.signal_count(s)}


def after_fork_in_child() -> None:
    """A fresh books lock in the child (called by ``_fork``, after ``_core``'s)."""
    global _lock
    _lock = threading.RLock()
