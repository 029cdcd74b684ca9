"""The SIGCHLD backend of the watcher: the children beyond the pidfd budget,
every child when the kernel has no pidfd, or with ``FASTREAP_BACKEND=sigchld``.

They are noticed through fastreap's C SIGCHLD handler, which records the
sender (``si_pid``) in a lock-free ring and pokes the global wake-up
descriptor (token ``WAKE`` in the watcher's poller). ``on_wake`` reaps exactly
those pids: O(1) per exit. Without a pidfd a pid could be reused once someone
else reaped it, so each child's start time (``/proc``) is kept and compared
before it is signalled or its status taken (``same_process``).

The loss check. SIGCHLD coalesces: one delivered SIGCHLD may hide other
exits. The check asks the kernel whether any zombie is left
(``waitid(P_ALL, WNOWAIT)``): none means nothing was lost; a watched one is
reaped and the question asked again; when the zombie in front is somebody
else's (which ``WNOWAIT`` cannot look past) it checks each SIGCHLD-path child
(``degraded_scans``). That call walks the kernel's list of *all* our
children, so running it after every SIGCHLD made one exit cost O(children)
(0.9 ms at 10,000 live). So it is amortised: it runs at once only after
len(children)/32 exits since the last one (or when the ring overflowed), and
otherwise from a one-shot timerfd in the same poller (token ``CHECK``), once
SIGCHLDs have been quiet for 5 ms (at most 0.1 s after the first one owed).
Each exit then pays O(1) plus 1/32 of a walk per live child; a child whose
SIGCHLD was swallowed is reaped at most ~5 ms late (or 0.1 s under a steady
stream of exits). Waiters and asyncio need nothing special: the timer is just
another descriptor in the watcher's poller.

All methods run with the watcher lock held.
"""

from __future__ import annotations

import os
import signal as _signal
import time
from typing import TYPE_CHECKING

from . import _core, _procfs

if TYPE_CHECKING:
    from ._watcher import Watcher

CHECK = -2  # poller token of the loss-check timer
# The loss check waits for this much quiet after the last SIGCHLD, but never
# longer than _CHECK_MAX_AGE (or 500 times its own last cost, so that it
# stays below ~0.2% of the time).
_CHECK_QUIET = 0.005
_CHECK_MAX_AGE = 0.1


class SigchldBackend:
    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher
        # pid -> start time (None: unknown) of every child on this path
        self.starts: dict[int, int | None] = {}
        self.installed = False  # our C handler is on SIGCHLD (kept across swaps and forks)
        self.tfd = -1  # the loss check's timer (Linux)
        self.check_owed = False
        self.owed_since = 0.0
        self.last_chld = 0.0
        self.exits_since_check = 0
        self.check_cost = 0.0
        self.loss_checks = 0
        self.degraded_scans = 0

    def _ensure(self) -> None:
        if not self.installed:
            _core.install(_signal.SIGCHLD, True, True)  # SA_RESTART: exits need not interrupt anyone
            self.installed = True
        if self.tfd < 0 and _core.IS_LINUX:
            try:
                fd = _core.timer_open()
            except OSError:  # no timerfd (seccomp, gVisor): every SIGCHLD runs the loss check
                return
            try:
                _core.poller_add_fd(self.w.poller(), fd, CHECK)
            except BaseException:
                os.close(fd)
                raise
            self.tfd = fd

    def register(self, pid: int) -> None:
        self._ensure()
        start = _procfs.start_time(pid)
        self.starts[pid] = None if start == _procfs.UNKNOWN else start

    def forget(self, pid: int) -> None:
        self.starts.pop(pid, None)

    def same_process(self, pid: int) -> bool:
        """False if pid now names another process (our child was reaped
        behind the watcher's back and the pid reused). A pidfd needs no check."""
        start = self.starts.get(pid)
        if start is None:
            return True
        now = _procfs.start_time(pid)
        return now == start or now == _procfs.UNKNOWN  # only a proven mismatch says no

    def on_wake(self) -> None:
        """The wake-up descriptor fired: a handled signal or a SIGCHLD."""
        w = self.w
        pids, overflow = _core.chld_drain()
        if not self.starts:
            return
        if pids or overflow:
            # Each delivered SIGCHLD may have swallowed others: a loss check
            # is owed. Owe it before the work below, so that an exception
            # there (Ctrl-C, a callback) cannot drop it.
            now = time.monotonic()
            self.last_chld = now
            self.exits_since_check += len(pids)
            if not self.check_owed and self.tfd >= 0:
                self.check_owed = True
                self.owed_since = now
                _core.timer_arm(self.tfd, _CHECK_QUIET)
        for pid in pids:
            if pid in self.starts:
                ringed = w.children[pid]
                if not w.try_reap(ringed) and not self.same_process(pid):
                    w.lose(ringed)  # it exited, was reaped elsewhere, and the pid is reused
        if not (pids or overflow) or not self.starts:
            return  # another signal's wake-up, or nothing left to lose
        # Run the check now when enough exits have paid for it, else the
        # timer runs it once SIGCHLDs are quiet (module docstring).
        if overflow or self.tfd < 0 or self.exits_since_check >= len(w.children) >> 5:
            self.loss_check()

    def on_check_timer(self) -> None:
        _core.timer_drain(self.tfd)
        if not self.check_owed:
            return
        now = time.monotonic()
        quiet = self.last_chld + _CHECK_QUIET
        latest = self.owed_since + max(_CHECK_MAX_AGE, 500 * self.check_cost)
        if now < quiet and now < latest:
            _core.timer_arm(self.tfd, min(quiet, latest) - now)
            return
        self.loss_check()

    def loss_check(self) -> None:
        """Reap watched zombies whose SIGCHLD was coalesced away. The debt is
        cleared only once the work is done (an exception leaves it owed)."""
        w = self.w
        self.loss_checks += 1
        t0 = time.monotonic()
        while self.starts:
            z = _core.peek_any()
            if z <= 0:
                break
            c = w.children.get(z)
            if c is None or not w.try_reap(c):
                # Somebody else's zombie in front: WNOWAIT cannot look past it.
                self.degraded_scans += 1
                for pid in list(self.starts):
                    w.try_reap(w.children[pid])
                break
        self.check_cost = time.monotonic() - t0
        self.exits_since_check = 0
        if self.check_owed:
            self.check_owed = False
            _core.timer_arm(self.tfd, 0.0)

    def take_fds(self) -> list[int]:
        """Hand over its descriptors for closing (Watcher.close)."""
        fd, self.tfd = self.tfd, -1
        return [fd]
