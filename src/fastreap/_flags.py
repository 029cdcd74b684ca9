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
  ``PyErr_SetInterruptEx``), and Python-level handlers are replaced. One
  ``Stopped`` per ``handle_signals(exit=True)`` call: later signals only set
  the flag, so they cannot abort the cleanup the first one started.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal as _signal
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _core, _fork
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


_books = _fork.PerProcess(threading.RLock)  # the lock over the books below, per process
_installed: dict[int, _Record] = {}
# Signals whose handler fastreap's watcher needs (SIGCHLD on its SIGCHLD
# path): restore_signals puts back the user's part only (flags, exit mode,
# Python handler) and leaves the watcher's installation in place.
_kept: set[int] = set()


def keep(signo: int) -> None:
    """The watcher installed fastreap's handler for signo and needs it kept."""
    with _books.get():
        _kept.add(signo)


def default_flag() -> StopFlag:
    """The process default stop flag (what stop_requested() reads)."""
    return _core.default_flag


# ------------------------------------------------------- raising Stopped
#
# One handled signal raises one Stopped; later ones, while that Stopped is on
# its way (being raised, caught, cleaned up after, or propagating to the
# exit), only set the flag and count: a second SIGTERM must not abort the
# cleanup the first one started (Ctrl-C's KeyboardInterrupt would). The latch
# is re-armed by every handle_signals(..., exit=True) call, and in a forked
# child: it holds the fork generation it was spent in (None: armed).
# To force a stuck cleanup, a supervisor escalates to SIGKILL.
_raised_in: int | None = None
# The deferred raise, while one is pending (see _defer): frame, tool id, signal.
_deferred: tuple[Any, int, int] | None = None
_MONITORING_NAME = "fastreap"


def _raise_stopped(signum: int, frame: Any) -> None:
    global _raised_in
    _core.kick_disarm()  # we run: the main thread needs no more kicks
    if _deferred is not None:  # a deferred raise that never happened: raise now
        raise Stopped(_cancel_deferred())
    gen = _fork.generation()
    if _raised_in == gen:
        return
    _raised_in = gen
    _core.kick_enable(False)  # later signals raise nothing: nothing to kick for
    if frame is not None and _defer(signum, frame):
        return
    raise Stopped(signum)


_kick_hooked = False


def _kick_hooks() -> None:
    """Once exit mode is first asked for: switch kicks off when the interpreter
    exits (atexit runs before CPython puts SIG_DFL back for every signal that
    has a Python handler, ours included: a kick landing after that would kill
    the process), and give a fork child its own kick timers (they are per
    process; the forking thread is the child's main thread). Only processes
    that use exit mode pay for the at-fork hook (see _fork)."""
    global _kick_hooked
    if _kick_hooked:
        return
    _kick_hooked = True
    atexit.register(_core.kick_enable, False)
    os.register_at_fork(after_in_child=_kick_after_fork)


def _kick_after_fork() -> None:
    for s, rec in list(_installed.items()):
        if rec.exit:
            _core.kick_setup(s)


def _loop_escapes_try(frame: Any) -> bool:
    """Whether an exception raised now would skip a try that encloses the loop.

    CPython 3.13 compiles the back edge of ``while <test>:`` (its
    JUMP_BACKWARD) outside the exception-table range of an enclosing try
    (python/cpython#130279), and that jump is where a tight loop checks for
    signals: a Stopped raised there leaves the frame without running its
    ``except`` and ``finally``. It does so when the jump's own offset has
    another handler than its target, the top of the loop."""
    code = frame.f_code
    offset = frame.f_lasti
    raw = code.co_code
    import dis  # only on this rare path: a Stopped raised at a backward jump

    if not 0 <= offset < len(raw) or raw[offset] != dis.opmap.get("JUMP_BACKWARD", -1):
        return False
    for ins in dis.get_instructions(code):
        if ins.offset == offset:
            target: int = ins.argval
            break
    else:  # pragma: no cover - the instruction is always there
        return False
    handler = _handler_at(code, target)
    return handler is not None and handler != _handler_at(code, offset)


def _handler_at(code: Any, offset: int) -> int | None:
    """The handler covering the instruction at byte ``offset``, from
    ``co_exceptiontable`` (varints of 6 bits, 64 = more; offsets in code units)."""
    table: Iterator[int] = iter(code.co_exceptiontable)

    def varint() -> int:
        b = next(table)
        v = b & 63
        while b & 64:
            b = next(table)
            v = (v << 6) | (b & 63)
        return v

    try:
        while True:
            start = varint() * 2
            end = start + varint() * 2
            target = varint() * 2
            varint()  # depth and lasti
            if start <= offset < end:
                return target
    except StopIteration:
        return None


def _defer(signum: int, frame: Any) -> bool:
    """Raise Stopped at the frame's next instruction instead of this one, when
    this one is a loop's back edge outside the loop's try (see
    _loop_escapes_try). The next instruction is the top of the loop, inside the
    try: a one-shot sys.monitoring INSTRUCTION callback on that code object
    raises there. False when it cannot (no sys.monitoring before 3.12, no free
    tool id): the caller raises at once, as CPython would."""
    global _deferred
    mon = getattr(sys, "monitoring", None)
    if mon is None or not _loop_escapes_try(frame):
        return False
    tool = next((t for t in (4, 3) if mon.get_tool(t) is None), None)
    if tool is None:
        return False
    try:
        mon.use_tool_id(tool, _MONITORING_NAME)
    except ValueError:  # taken since get_tool, by another thread
        return False

    def at_next_instruction(code: object, offset: int) -> None:
        if _deferred is None or sys._getframe(1) is not _deferred[0]:
            return  # the same code run by another frame or thread
        raise Stopped(_cancel_deferred())

    mon.register_callback(tool, mon.events.INSTRUCTION, at_next_instruction)
    mon.set_local_events(tool, frame.f_code, mon.events.INSTRUCTION)
    _deferred = (frame, tool, signum)
    # The frame executes the jump, then the top of the loop: nothing runs in
    # between but the rest of this signal check. Should another Python
    # handler raise there, the next handled signal raises instead. (No
    # _thread.interrupt_main here to make sure: the eval-breaker check right
    # after that call would run this handler again, here, before the jump.)
    return True


def _cancel_deferred() -> int:
    """Drop the pending deferred raise; return its signal."""
    global _deferred
    assert _deferred is not None
    frame, tool, signum = _deferred
    _deferred = None
    mon: Any = getattr(sys, "monitoring")  # noqa: B009 - absent before 3.12
    if mon.get_tool(tool) == _MONITORING_NAME:
        mon.set_local_events(tool, frame.f_code, 0)
        mon.register_callback(tool, mon.events.INSTRUCTION, None)
        mon.free_tool_id(tool)
    return signum


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
    ``exit=True`` the main thread also gets ``Stopped`` at its next bytecode,
    once: later arrivals only set the flag until the next
    ``handle_signals(exit=True)`` call re-arms it. Idempotent otherwise;
    ``restore_signals`` undoes it."""
    sigs = check_handled(signals)
    check_bool(exit, "exit")
    flag = check_flag(flag)
    if exit and not _is_main_thread():
        # Python runs exception-raising handlers only in the main thread and
        # lets only the main thread set them (signal.signal).
        raise ValueError("exit=True must be asked for from the main thread; other threads may use exit=False")
    global _raised_in
    with _books.get():
        if exit:
            _raised_in = None  # re-arm: the next handled signal raises Stopped again
            _kick_hooks()
            _core.kick_enable(True)
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
                if exit:
                    # Once per process (a fork child makes its own); best
                    # effort, none off Linux: see kick_setup.
                    _core.kick_setup(s)
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
        _core.set_exit(s, False)  # first: no kick may land on what signal.signal puts back
        prev = rec.py_prev if rec.py_prev is not None else _signal.SIG_DFL
        _signal.signal(s, prev)
    _core.restore(s, ours)
    for f in rec.flags:
        _core.unbind(s, f)


def restore_signals(signals: Iterable[int] | int | None = None) -> None:
    """Put back exactly the dispositions fastreap replaced (all, or those named)."""
    with _books.get():
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
    with _books.get():
        before = set(_installed)
    flag = handle_signals(sigs, exit=exit)
    try:
        yield flag
    finally:
        restore_signals([s for s in sigs if s not in before])


def handled_signals() -> dict[int, int]:
    """Signal number -> how many times fastreap's handler has run for it."""
    return {s: _core.signal_count(s) for s in range(1, _core.NSIG) if _core.signal_count(s)}
