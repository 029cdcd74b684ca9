"""The kqueue backend (macOS) of the watcher: EVFILT_PROC watches pids
directly in the watcher's kqueue (token: the pid), with no descriptor each.
All methods run with the watcher lock held."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _core

if TYPE_CHECKING:
    from ._watcher import Watcher


class KqueueBackend:
    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher

    def register(self, pid: int) -> None:
        try:
            _core.poller_add_pid(self.w.poller(), pid, pid)
        except ProcessLookupError:
            pass  # already exited: the check after registration reaps it

    def forget(self, pid: int) -> None:
        _core.poller_del_pid(self.w.pfd, pid)
