"""``fastreap.spawn`` and ``fastreap.run_all``: children watched from birth.

``spawn`` starts a real ``subprocess.Popen`` and watches it before the object
is returned, i.e. before any other thread can hold it (and so call its
``wait()``/``poll()``). On Linux the watch takes the pidfd at that moment.
What is left unprotected is the few microseconds between the clone inside
``Popen`` and ``pidfd_open``: CPython offers no ``CLONE_PIDFD`` (nor a
``clone3`` path) in ``subprocess``, so a thread that reaps *any* child in that
window (``os.wait()``, ``os.waitpid(-1, ...)``, ``fastreap.reap()``) can take
the status; ``spawn`` then raises ``ChildLostError`` rather than guess.

``run_all`` fans commands out over ``spawn`` with a concurrency cap and yields
``(index, ExitStatus)`` as each finishes.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from . import _core, _watcher
from ._children import Child, ChildLostError, ExitStatus, graceful_stop, watch
from ._deadline import Deadline
from ._flags import stop_requested

__all__ = ["run_all", "spawn"]

# How long run_all lets the children it stops (timeout, Ctrl-C, stop flag,
# early close) exit on SIGTERM before SIGKILL: graceful_stop's default.
_STOP_GRACE = 10.0


def spawn(args: Any, **popen_kwargs: Any) -> Child:
    """Start ``subprocess.Popen(args, **popen_kwargs)`` and return its Child,
    watched from birth (``Child.popen`` is the Popen: pipes, ``communicate()``
    and the rest work as usual; its ``wait()``/``returncode`` stay true)."""
    p: subprocess.Popen[Any] = subprocess.Popen(args, **popen_kwargs)
    try:
        return watch(p)
    except ChildProcessError:
        # Reaped by a waitpid(-1) elsewhere between the clone and our watch.
        raise ChildLostError(
            f"spawn: pid {p.pid} was reaped by another waiter (os.wait(), os.waitpid(-1), "
            "fastreap.reap()) before it could be watched; its exit status is unknown"
        ) from None
    except BaseException:
        # Ctrl-C (or any error) before the caller got its Child: nobody else
        # could stop this child, so stop it here (nothing half-done).
        p.kill()
        p.wait()
        raise


def _check_command(i: int, cmd: object) -> Any:
    if isinstance(cmd, (str, bytes, os.PathLike)):
        return cmd
    if isinstance(cmd, Sequence):
        if not cmd:
            raise ValueError(f"commands[{i}] is empty")
        for a in cmd:
            if not isinstance(a, (str, bytes, os.PathLike)):
                raise TypeError(
                    f"commands[{i}] must hold str, bytes or path-like arguments, not {type(a).__name__}"
                )
        return list(cmd)
    raise TypeError(
        f"commands[{i}] must be a str, bytes, path-like or a sequence of arguments, not {type(cmd).__name__}"
    )


def run_all(
    commands: Iterable[Any],
    max_concurrent: int = 64,
    timeout: float | None = None,
) -> Iterator[tuple[int, ExitStatus]]:
    """Run every command (``Popen`` args: a program path or an argument list;
    stdio inherited), at most ``max_concurrent`` at a time, and yield
    ``(index, ExitStatus)`` as each one finishes (in finishing order).

    ``timeout`` (seconds, from the first ``next()``) bounds the whole run: on
    expiry the running children are stopped with ``graceful_stop`` (SIGTERM,
    SIGKILL after 10 s), the rest are never started, and ``TimeoutError`` is
    raised. Ctrl-C (``KeyboardInterrupt``) or any exception stops the running
    ones the same way and propagates; the process default stop flag
    (``fastreap.handle_signals``) stops them and ends the iteration quietly;
    so does closing the generator early (``break``, ``close()``). A command
    that cannot start (``FileNotFoundError``...) raises after the same stop.
    All arguments are checked before anything starts."""
    if isinstance(commands, (str, bytes)) or not isinstance(commands, Iterable):
        raise TypeError(f"commands must be an iterable of commands, not {type(commands).__name__}")
    cmds = [_check_command(i, c) for i, c in enumerate(commands)]
    if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int):
        raise TypeError(f"max_concurrent must be an int, not {type(max_concurrent).__name__}")
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
    t = _core.check_timeout(timeout)
    return _run_all(cmds, max_concurrent, None if t < 0 else t)


def _run_all(cmds: list[Any], cap: int, timeout: float | None) -> Iterator[tuple[int, ExitStatus]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    running: dict[Child, int] = {}
    finished: collections.deque[Child] = collections.deque()
    on_done = finished.append  # runs in whichever thread reaps: a deque append is atomic
    nxt = 0
    try:
        while True:
            while nxt < len(cmds) and len(running) < cap and not stop_requested():
                c = spawn(cmds[nxt])
                running[c] = nxt
                nxt += 1
                c.add_done_callback(on_done)
            if not running or stop_requested():
                return
            if not finished:
                # Wakes on a child's exit and on a handled signal (the C
                # handler pokes the watcher's wake-up descriptor).
                _watcher.current().wait_until(lambda: bool(finished) or stop_requested(), Deadline(deadline))
                if not finished and not stop_requested():
                    raise TimeoutError(
                        f"run_all: {len(running) + len(cmds) - nxt} of {len(cmds)} commands did not "
                        f"finish within timeout={timeout} s; the running ones were stopped "
                        "(graceful_stop), the others never started"
                    )
            while finished:
                c = finished.popleft()
                idx = running.pop(c)
                st = c.status
                if st is None:
                    raise ChildLostError(
                        f"run_all: commands[{idx}] (pid {c.pid}) was reaped by someone else; "
                        "its exit status is unknown"
                    )
                yield idx, st
    finally:
        if running:
            graceful_stop(list(running), _STOP_GRACE)
