"""``fastreap.Process``: a ``multiprocessing.Process`` that can be asked to stop.

The stop channel, and why it is built so:

* The parent's ``stop()`` first sets ``stop_flag`` (a ``StopFlag(shared=True)``
  living in memory shared with the child, for any start method) and then sends
  SIGTERM, pid-reuse safe through ``fastreap.watch``. In the child, SIGTERM
  (and SIGINT) are bound to both ``stop_flag`` and the process default flag,
  so ``fastreap.stop_requested()``, ``self.stop_flag`` and, with
  ``exit_on_stop=True``, ``fastreap.Stopped`` at the next bytecode all follow
  from the one signal.
* Setting ``stop_flag`` by hand (from the parent or a sibling) is seen through
  ``stop_flag`` only, not through ``stop_requested()``: the default flag is
  set by the signal. Making a memory write also set the default flag would
  need a thread in every child, and a thread is exactly what a child that
  blocks SIGTERM in its main thread must not have (the signal would be
  delivered to the thread instead). ``stop()`` always does both.
* The signal is sent only once the child has installed its handlers (a second
  shared flag, ``ready``): SIGTERM's default action would kill a child still
  starting (spawn imports for a while) with -15 instead of letting it stop.
  A child that never gets ready (stuck or crashed while starting) is killed
  at the deadline like any other.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from typing import Any

from . import _core
from ._args import check_bool, check_mp_context, check_timeout
from ._children import watch
from ._deadline import Deadline
from ._flags import DEFAULT_SIGNALS, Stopped, handle_signals

__all__ = ["Process"]


class Process(multiprocessing.Process):
    """A ``multiprocessing.Process`` whose child installs fastreap's handlers
    (SIGTERM, SIGINT) before ``run()``, and whose ``stop()`` asks it to stop,
    waits, escalates to SIGKILL after the timeout, reaps, and returns the
    exit code. Starts with ``mp_context``'s start method (fork, spawn or
    forkserver; the default context when None)."""

    def __init__(
        self,
        group: None = None,
        target: Any = None,
        name: str | None = None,
        args: Any = (),
        kwargs: Any = None,
        *,
        daemon: bool | None = None,
        exit_on_stop: bool = True,
        mp_context: multiprocessing.context.BaseContext | None = None,
    ) -> None:
        check_bool(exit_on_stop, "exit_on_stop")
        check_mp_context(mp_context)
        super().__init__(group, target, name, args, {} if kwargs is None else kwargs, daemon=daemon)
        # The name, not the context object: the Process itself is pickled for
        # spawn and forkserver, and contexts are process-wide singletons.
        self._fr_method: str | None = None if mp_context is None else mp_context.get_start_method()
        self._exit_on_stop = exit_on_stop
        self._stop_flag = _core.StopFlag(shared=True)
        self._ready = _core.StopFlag(shared=True)

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        ctx = multiprocessing.get_context(process_obj._fr_method)
        process_obj._start_method = ctx.get_start_method()
        return ctx.Process._Popen(process_obj)

    @property
    def exit_on_stop(self) -> bool:
        """Whether a stop request raises fastreap.Stopped in the child's main thread."""
        return self._exit_on_stop

    @property
    def stop_flag(self) -> _core.StopFlag:
        """The shared stop flag: set by stop() (and by SIGTERM/SIGINT in the
        child); the target may check it, wait on it or poll its fileno()."""
        return self._stop_flag

    # -- child side ------------------------------------------------------------

    def _bootstrap(self, *args: Any, **kwargs: Any) -> int:
        try:
            self._install_in_child()
            return super()._bootstrap(*args, **kwargs)  # type: ignore[misc,no-any-return]
        except Stopped as e:
            # Only a stop that lands between our set-up and the base
            # bootstrap's own try gets here; run() has not started.
            return int(e.code)  # type: ignore[arg-type]

    def _install_in_child(self) -> None:
        # A fork child inherits the parent's default flag; its own stop
        # requests start from scratch.
        _core.default_flag.clear()
        handle_signals(DEFAULT_SIGNALS, self._stop_flag)
        handle_signals(DEFAULT_SIGNALS, exit=self._exit_on_stop)
        self._ready.set()  # last: the parent signals only after this

    # -- parent side -------------------------------------------------------------

    def stop(self, timeout: float | None = 10.0) -> int:
        """Ask the child to stop (its shared flag, then SIGTERM once its
        handlers are in place), wait up to timeout seconds (None: no limit),
        SIGKILL it if still running, reap it and return its exit code
        (143 after Stopped, -9 if killed)."""
        deadline = Deadline.after(check_timeout(timeout))
        if self._closed:  # type: ignore[attr-defined]
            raise ValueError(f"stop: {self!r} is closed")
        if self._popen is None:  # type: ignore[attr-defined]
            raise ValueError(f"stop: {self!r} is not started")
        child = watch(self)  # ChildProcessError if started by another process
        if child.returncode is None:
            self._stop_flag.set()
            if self._wait_ready(deadline):
                child.terminate()
            if child.wait(deadline.seconds()) is None:
                child.kill()
        rc = child.wait()
        assert rc is not None
        self.join(0)  # reaped already: this only does join()'s bookkeeping
        return rc

    def _wait_ready(self, deadline: Deadline) -> bool:
        """Wait until the child has its handlers (True), or it exited or the
        deadline passed (False), without polling."""
        ready = self._ready
        while not ready.is_set():
            remaining = deadline.remaining()  # -1.0: forever
            if remaining == 0.0:
                return False
            if _core.wait_readable(ready.fileno(), self.sentinel, remaining) == 2:
                return ready.is_set()
        return True
