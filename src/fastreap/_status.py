"""How a child ended: ``ExitStatus``.

The kernel reports an end in three encodings: a wait status (``wait4``,
``waitid`` with rusage: when fastreap reaps), a siginfo (``waitid`` peeks:
``si_code`` + ``si_status``) and, when a Popen or Process reaped it, a
returncode (-N for signal N). A reaped wait status is decoded where it is
reaped, in C: ``_core`` builds the ExitStatus itself (``set_status_type``
below), with the same fields ``_decode`` gives. ``_decode`` turns a
returncode and a core flag into the fields for the other two; their small
translators only say which returncode the kernel meant.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _core


class ChildLostError(ChildProcessError):
    """A watched child was reaped by someone else (``os.waitpid``, another
    library): it is gone and its exit status is unknown."""


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended (with rusage from ``wait4`` when fastreap reaped it)."""

    pid: int
    returncode: int
    exit_code: int | None
    signal: int | None
    core_dumped: bool = False
    user_time: float | None = None
    system_time: float | None = None
    max_rss: int | None = None


def _decode(
    pid: int,
    returncode: int,
    core: bool = False,
    utime: float | None = None,
    stime: float | None = None,
    maxrss: int | None = None,
) -> ExitStatus:
    if returncode < 0:
        return ExitStatus(pid, returncode, None, -returncode, core, utime, stime, maxrss)
    return ExitStatus(pid, returncode, returncode, None, False, utime, stime, maxrss)


def from_returncode(pid: int, rc: int) -> ExitStatus:
    """What a Popen/Process found (no rusage, no core flag)."""
    return _decode(pid, rc)


def from_siginfo(pid: int, si_code: int, si_status: int) -> ExitStatus:
    """A ``waitid`` peek (``_core.peek``)."""
    if si_code == _core.CLD_EXITED_:
        return _decode(pid, si_status)
    return _decode(pid, -si_status, si_code == _core.CLD_DUMPED_)


# The reaping calls of _core (reap_one, reap_batch, reap_checked) build
# ExitStatus objects themselves, in C: no decoding left to Python per exit.
_core.set_status_type(ExitStatus)

# The watcher's "not exited after all" (identity-compared, never exposed).
RUNNING = ExitStatus(0, 0, 0, None)
