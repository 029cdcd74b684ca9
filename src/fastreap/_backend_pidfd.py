"""The pidfd + epoll backend (Linux >= 5.3) of the watcher.

Each watched child gets a pidfd registered in the watcher's epoll instance
(token: its pid); epoll reports only the ready ones, so one exit costs O(1)
whatever the number of live children.

Descriptor budget: pidfds are descriptors, and a program may watch 10,000
children under ``RLIMIT_NOFILE`` 1,024. So pidfds are used only up to a budget
(a quarter of the soft limit, at most 16,384; ``FASTREAP_PIDFD_BUDGET``
overrides it) and are moved to numbers at or above a floor (1,024 when the
limit allows, otherwise the top quarter), which keeps the low numbers that
``select()`` users and the program need free. Children beyond the budget go
to the SIGCHLD backend, and so do those that come while fewer than a quarter
of the limit is free (the program's reserve: counted in ``/proc/self/fd``
now and then, see ``register``), or when ``pidfd_open`` finds no descriptor.

The pidfds live in ``Watcher.pidfd_of`` (pid -> fd), which also names the
signal-only pidfd of a fork-server child; this backend counts and closes the
ones it registered. All methods run with the watcher lock held.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import _core

if TYPE_CHECKING:
    from ._watcher import Watcher


def _free_fds(soft: int) -> int:
    """How many descriptors are free under the soft limit (one listing of
    /proc/self/fd: ~20-50 us at a few hundred open; done only now and then)."""
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    except OSError:
        return 0  # out of descriptors (or no /proc): assume none to spare
    return soft - used


def _pidfd_budget() -> tuple[int, int]:
    env = os.environ.get("FASTREAP_PIDFD_BUDGET")
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    budget = min(soft // 4, 16384) if env is None else max(0, int(env))
    floor = 1024 if soft >= 1024 + budget else max(0, soft - budget)
    return budget, floor


class PidfdBackend:
    def __init__(self, watcher: Watcher, enabled: bool) -> None:
        self.w = watcher
        self.enabled = enabled
        self.budget, self.floor = _pidfd_budget()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.soft = 1 << 20 if soft == resource.RLIM_INFINITY or soft > 1 << 20 else soft
        # The program's reserve: no pidfd is taken while fewer than a quarter
        # of the limit is free. Counting is O(open descriptors), so it is
        # done again only after ``unchecked`` more pidfds: half the slack
        # above the reserve seen at the last count.
        self.reserve = self.soft // 4
        self.unchecked = 0
        self.count = 0  # pidfds registered in the poller
        # pidfds of children finished by another thread while a leader blocks
        # in epoll: kept registered (and readable) so the leader wakes up and
        # sees the news; closed by the leader when it returns.
        self.deferred: list[int] = []

    def _room(self) -> bool:
        """May one more pidfd be taken (budget, and the program's reserve)?"""
        if not self.enabled or self.count >= self.budget:
            return False
        if self.unchecked <= 0:
            slack = _free_fds(self.soft) - self.reserve
            if slack <= 0:
                return False  # keep the reserve for the program: the SIGCHLD path takes it
            self.unchecked = max(1, slack // 2)
        self.unchecked -= 1
        return True

    def register(self, pid: int) -> bool:
        """Watch pid through a pidfd if the budget allows; False: not taken."""
        if not self._room():
            return False
        try:
            fd = _core.pidfd_open(pid, self.floor)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.EINVAL):
                raise
            return False  # over the limit after all: the SIGCHLD path takes it
        try:
            _core.poller_add_fd(self.w.poller(), fd, pid)
        except BaseException:
            os.close(fd)
            raise
        self.w.pidfd_of[pid] = fd
        self.count += 1
        return True

    def register_peek(self, pid: int) -> tuple[int, int] | bool | None:
        """Registration and the is-it-our-child check in one C call
        (pidfd_open, a WNOWAIT peek through it, epoll_ctl): False if not
        taken (budget, disabled, out of descriptors, already gone: the
        caller takes the slow path), else the peek: None while it runs,
        (si_code, si_status) once it has exited. ChildProcessError (nothing
        registered) if it is not our child."""
        if not self._room():
            return False
        try:
            fd, peeked = _core.watch_pidfd(self.w.poller(), pid, self.floor, pid)
        except ChildProcessError:
            raise
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE, errno.EINVAL, errno.ESRCH):
                raise
            return False
        self.w.pidfd_of[pid] = fd
        self.count += 1
        return peeked

    def open_for_signals(self, pid: int) -> None:
        """A pidfd that only signals pid safely (a fork-server child), not polled."""
        if self.enabled:
            try:
                self.w.pidfd_of[pid] = _core.pidfd_open(pid, self.floor)
            except OSError:
                pass

    def forget(self, pid: int) -> bool:
        """Close pid's polled pidfd (later, if a leader is in epoll); False if it had none."""
        # Forget the number before closing it (here and in close_deferred):
        # closing releases the GIL, and a fork landing in that window must
        # not find a closed (or reused) number in our books, which the
        # child's Watcher.close() would then close.
        fd = self.w.pidfd_of.pop(pid, -1)
        if fd < 0:
            return False
        self.count -= 1
        if self.w.leading:
            self.deferred.append(fd)
        else:
            _core.poller_close_fd(self.w.pfd, fd)
        return True

    def take(self, pids: list[int]) -> list[int]:
        """Take the pidfds of pids out of the books (the batch reap closes them)."""
        pop = self.w.pidfd_of.pop
        fds = [pop(pid) for pid in pids]
        self.count -= len(fds)
        return fds

    def give_back(self, pid: int, fd: int) -> None:
        """Undo take() for one the batch did not reap; arm it again."""
        self.w.pidfd_of[pid] = fd
        self.count += 1
        self.rearm((pid,))

    def rearm(self, tokens: Iterable[int]) -> None:
        """Arm the oneshot registration of each still-watched pid in tokens."""
        w = self.w
        for tok in tokens:
            fd = w.pidfd_of.get(tok, -1)
            c = w.children.get(tok)
            if fd < 0 or c is None or c._done() or w.pfd < 0:
                continue
            try:
                _core.poller_rearm(w.pfd, fd, tok)
            except OSError:
                pass  # not in the poller (a fork-server child's signal-only pidfd)

    def close_deferred(self) -> None:
        while self.deferred:
            _core.poller_close_fd(self.w.pfd, self.deferred.pop())
