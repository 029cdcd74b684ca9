"""Every validator of user input, in one place: each raises a clear
exception naming the argument, before anything is done."""

from __future__ import annotations

import os
import signal as _signal
from collections.abc import Iterable
from typing import Any

from . import _core, _procfs

_VALID = frozenset(int(s) for s in _signal.valid_signals())


def check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")


def check_timeout(timeout: float | None) -> float | None:
    """A timeout in seconds (None: no limit): TypeError/ValueError for a
    negative, NaN or non-number one. Returns seconds, or None."""
    t: float = _core.check_timeout(timeout)
    return None if t < 0 else t


def check_flag(flag: object) -> _core.StopFlag:
    """A StopFlag, or the process default flag for None."""
    if flag is None:
        return _core.default_flag
    if not isinstance(flag, _core.StopFlag):
        raise TypeError(f"flag must be a fastreap.StopFlag or None, not {type(flag).__name__}")
    return flag


def check_mp_context(ctx: object) -> None:
    import multiprocessing.context

    if ctx is not None and not isinstance(ctx, multiprocessing.context.BaseContext):
        raise TypeError(
            "mp_context must be a multiprocessing context (multiprocessing.get_context(...)) "
            f"or None, not {type(ctx).__name__}"
        )


def check_signal(sig: object, name: str = "signal", *, allow_zero: bool = False) -> int:
    """Validate one signal number (int or signal.Signals); return it as int."""
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"{name} must be a signal number, not {type(sig).__name__}")
    s = int(sig)
    if allow_zero and s == 0:
        return 0
    if not 0 < s < _core.NSIG:
        raise ValueError(f"{name} must be a valid signal number, got {s}")
    return s


def check_handled(signals: object) -> tuple[int, ...]:
    """Signals a handler may be installed for (no SIGKILL/SIGSTOP), deduplicated."""
    if isinstance(signals, int):
        signals = (signals,)
    if not isinstance(signals, Iterable):
        raise TypeError(
            f"signals must be a signal number or an iterable of them, not {type(signals).__name__}"
        )
    out: list[int] = []
    for sig in signals:
        s = check_signal(sig, "signals")
        if s in (_signal.SIGKILL, _signal.SIGSTOP):
            raise ValueError(f"signals: {_signal.Signals(s).name} cannot be caught")
        if s not in _VALID:  # e.g. 32 and 33, which glibc keeps for itself
            raise ValueError(f"signals: {s} is not a signal this platform lets programs handle")
        if s not in out:
            out.append(s)
    return tuple(out)


def check_pid(pid: object, name: str = "target") -> int:
    if isinstance(pid, bool) or not isinstance(pid, int):
        t = type(pid)
        if t.__module__ == "asyncio.subprocess" and t.__name__ == "Process":
            raise TypeError(
                f"{name}: asyncio.subprocess.Process is not supported: use `await process.wait()` "
                "(after fastreap.install(), called before the process is created, that wait goes "
                "through fastreap's watcher); watching process.pid instead would race asyncio's "
                "own child watcher for its exit status"
            )
        raise TypeError(
            f"{name} must be a pid, subprocess.Popen, multiprocessing.Process or Child, "
            f"not {type(pid).__name__}"
        )
    if pid <= 0:
        raise ValueError(f"{name} must be a pid > 0, got {pid} (0 and negative pids name process groups)")
    return int(pid)


def check_child(pid: int, name: str, *, ours: bool = False) -> None:
    """pid must be an unreaped child of this process. ``ours``: it is known
    to have been our child (a Popen or Process started here)."""
    try:
        _core.peek(pid)
    except ChildProcessError:
        raise not_a_child(pid, name, ours=ours) from None


def not_a_child(pid: int, name: str, *, ours: bool = False) -> ChildProcessError:
    """The error for a pid that ``waitid`` says is not our child, saying why
    where that can be told: this process itself, no such process (already
    reaped, if it was ours), or some other process's child."""
    if pid == os.getpid():
        return ChildProcessError(f"{name}: pid {pid} is this process itself, not a child of it")
    exists, ppid = _exists(pid)
    if not exists:
        if ours:
            return ChildProcessError(
                f"{name}: pid {pid} was already reaped by something else (os.waitpid or "
                "another waiter), so its exit status is lost"
            )
        return ChildProcessError(
            f"{name}: pid {pid} does not exist (if it was a child of this process, something "
            "else already reaped it: os.waitpid or another waiter)"
        )
    if ppid and ppid != os.getpid():  # 0: started by the kernel (pid 1, kthreadd)
        return ChildProcessError(f"{name}: pid {pid} is not a child of this process (its parent is {ppid})")
    return ChildProcessError(f"{name}: pid {pid} is not a child of this process")


def _exists(pid: int) -> tuple[bool, int | None]:
    """Whether pid exists (a zombie counts), and its parent where /proc says."""
    if os.path.isdir("/proc/self"):
        try:
            st = _procfs.read_stat(pid)
        except (OSError, ValueError, IndexError):
            return True, None
        return (False, None) if st is None else (True, st.ppid)
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, existence is checked
    except ProcessLookupError:
        return False, None
    except OSError:
        pass  # EPERM: it exists, owned by someone else
    return True, None


def check_mp_process(t: Any, name: str) -> None:
    """A multiprocessing.Process that this process started and has not closed."""
    if getattr(t, "_closed", False):
        raise ValueError(f"{name}: {t!r} is closed")
    if getattr(t, "_popen", None) is None:
        raise ValueError(f"{name}: {t!r} is not started")
    if t._parent_pid != os.getpid():
        raise ChildProcessError(f"{name}: {t!r} was started by another process")
