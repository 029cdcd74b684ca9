"""The one reader of Linux ``/proc``: a pid's stat fields, its start time,
the children of a process. Everything answers None / [] where there is no
``/proc`` (macOS) or the pid is gone."""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

from . import _core

UNKNOWN = -1  # start_time could not read it (EMFILE, ENOMEM...): proves nothing
_GONE = (errno.ENOENT, errno.ESRCH)


class Stat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` that fastreap uses."""

    state: str  # R, S, D, Z (zombie), X (dead)...
    ppid: int
    pgrp: int
    start_time: int  # clock ticks since boot (field 22)

    @property
    def zombie(self) -> bool:
        """Exited (a zombie or dead): no longer running."""
        return self.state in ("Z", "X", "x")


def _parse(data: bytes) -> Stat:
    fields = data[data.rindex(b")") + 2 :].split()  # the name may hold spaces and ')'
    return Stat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))


def read_stat(pid: int | str) -> Stat | None:
    """The stat of pid, or None if it is gone. Other OSErrors (EMFILE,
    ENOMEM...) and an unparsable line (ValueError, IndexError) propagate."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    try:
        data = os.read(fd, 4096)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    finally:
        os.close(fd)
    return _parse(data)


def live_stat(pid: int) -> Stat | None:
    """The stat of a running (non-zombie) pid; None if gone, exited or unreadable."""
    try:
        st = read_stat(pid)
    except OSError:
        return None
    return None if st is None or st.zombie else st


def start_time(pid: int) -> int | None:
    """The start time of pid (clock ticks since boot), None if it is gone or
    there is no /proc, UNKNOWN if /proc could not be read. Tells a reused pid
    apart on the SIGCHLD path, where no pidfd pins the process."""
    if not _core.IS_LINUX:
        return None
    try:
        return _core.start_time(pid)  # the same reader reap_checked uses, in C
    except OSError:
        return UNKNOWN


def pids() -> list[int]:
    """Every pid in /proc ([] without /proc)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()]


def children_of(pid: int | str = "self") -> list[int]:
    """The direct children of pid (running or zombie), from every thread's
    ``task/<tid>/children``; [] without /proc."""
    task = f"/proc/{pid}/task"
    kids: list[int] = []
    try:
        tids = os.listdir(task)
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"{task}/{tid}/children") as f:
                kids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return kids
