"""The SIGCHLD backend of the watcher: the children beyond the pidfd budget,
every child when the kernel has no pidfd, or with ``FASTREAP_BACKEND=sigchld``.

They are noticed through fastreap's C SIGCHLD handler, which records the
sender (``si_pid``) in a lock-free ring and pokes the global wake-up
descriptor (token ``WAKE`` in the watcher's poller). ``_core.chld_wake``
(``on_ring`` for the unusual cases) reaps exactly those pids: O(1) per exit.
Without a pidfd a pid could be reused once someone else reaped it, so each
child's start time (``/proc``) is kept and compared before it is signalled
or its status taken (``same_process``).

The loss check. SIGCHLD coalesces: one delivered SIGCHLD may hide other
exits. The check asks the kernel whether any zombie is left
(``waitid(P_ALL, WNOWAIT)``): none means nothing was lost; a watched one is
reaped and the question asked again; when the zombie in front is somebody
else's (which ``WNOWAIT`` cannot look past) it asks after each SIGCHLD-path
child (``sweep``: one C loop of per-pid WNOWAIT waitids, and Python only for
the ones that have exited; ``degraded_scans``). The zombie peek walks the kernel's list of *all* our
children, so running it after every SIGCHLD made one exit cost O(children)
(0.9 ms at 10,000 live). So it is amortised: it runs at once only after
len(children)/32 exits since the last one (or when the ring overflowed), and
otherwise from a one-shot timerfd in the same poller (token ``CHECK``), once
SIGCHLDs have been quiet for 5 ms (at most 0.1 s after the first one owed).
Each exit then pays O(1) plus 1/32 of a walk per live child; a child whose
SIGCHLD was swallowed is reaped at most ~5 ms late (or 0.1 s under a steady
stream of exits). Waiters and asyncio need nothing special: the timer is just
another descriptor in the watcher's poller.

A check due by count is not run inside the exit that made it due, between
the wake-up and the waiter's return (that was latency on every exit below 32
children): it is deferred (``check_next``) to the watcher's next call
(``run_deferred``: at once when any thread next waits, when a leader goes
round again for a predicate still false, or after ``poll_now``), and the
quiet timer above is armed as well, so it also runs within the same ~5 ms
when nobody calls. A waiter for a child whose SIGCHLD was swallowed is in
``wait_until``: it goes round (or, as a follower, is woken and leads) and
runs the check before it blocks.

The wake-up itself is compiled (``_core.chld_wake``): drain the ring, check
each plain pid's start time and reap it (``reap_checked``), finish it, keep
the books above; Python runs only for owners that may reap themselves, a
lost ring slot, or no timer (``on_ring``).

Not trusting SIGCHLD. A SIGCHLD may never come: blocked in every thread,
its handler replaced by another library, or ignored (SIG_IGN). So while any
child is on this path a loss check also runs every ``_PERIOD`` seconds
whatever happens (the same timer; without a timerfd the leader's poller
wait is capped instead, ``cap``/``tick``). Each periodic check also asks
the kernel whether our handler is still the installed one: a replaced
handler is counted (``counters()["sigchld_replaced"]``), logged once on the
``fastreap`` logger, and left alone (the periodic checks keep working, each
with a sweep of every child). With the handler in place the periodic checks
sweep in slices (``_SWEEP_SLICE`` children per check), which finds children
reaped by a bare waitpid elsewhere without making any one exit wait behind a
sweep of them all.

SIG_IGN. With SIGCHLD ignored the kernel reaps every child itself: no
zombie, no status, no SIGCHLD. fastreap never replaces an inherited SIG_IGN
(that would turn the program's other children into permanent zombies); its
children on this path are then found gone by the periodic check and
reported lost, as on the pidfd path (readable pidfd, ECHILD).

All methods run with the watcher lock held.
"""

from __future__ import annotations

import os
import signal as _signal
import time
from typing import TYPE_CHECKING

from . import _core, _flags, _procfs

if TYPE_CHECKING:
    from ._children import Child
    from ._watcher import Watcher

CHECK = -2  # poller token of the loss-check timer
# The loss check waits for this much quiet after the last SIGCHLD, but never
# longer than _CHECK_MAX_AGE (or 500 times its own last cost, so that it
# stays below ~0.2% of the time).
_CHECK_QUIET = 0.005
_CHECK_MAX_AGE = 0.1
# A loss check runs at least this often while any child is on this path,
# SIGCHLD or not (faster once our handler is known to be gone).
_PERIOD = 0.25
_PERIOD_DEGRADED = 0.1
# ... and asks after every child on it (a WNOWAIT waitid each, in a C loop) at
# most this often, in slices of _SWEEP_SLICE children, one slice per periodic
# check (~0.3-1.2 ms each at 10,000 here: ~0.1-0.5% of the time, and no exit waits
# behind a sweep of 10,000). So a sweep of n children takes n / _SWEEP_SLICE
# periods (2.5 s at 10,000).
_SCAN_EVERY = 1.0
_SWEEP_SLICE = 1024


def sigchld_ignored() -> bool:
    """SIGCHLD is SIG_IGN (inherited or set by the program): the kernel
    auto-reaps every child. (A SIG_IGN set from C behind Python's back is
    not seen here.)"""
    return _signal.getsignal(_signal.SIGCHLD) is _signal.SIG_IGN


class SigchldBackend:
    def __init__(self, watcher: Watcher) -> None:
        self.w = watcher
        # pid -> start time (None: unknown) of every child on this path
        self.starts: dict[int, int | None] = {}
        # Those of them with an owner that may reap them itself (a Popen, a
        # Process): the periodic check asks only these (a plain pid's owner
        # never knows a returncode), so its cost does not grow with them all.
        self.owned: set[int] = set()
        self.installed = False  # our C handler is on SIGCHLD (kept across swaps and forks)
        self.tfd = -1  # the loss check's timer (Linux)
        self.check_owed = False
        # The owed check is due by count (or the ring overflowed): it runs at
        # the watcher's next call (run_deferred) or from the timer, whichever
        # comes first, not inside the exit that made it due (module docstring).
        self.check_next = False
        self.owed_since = 0.0
        self.last_chld = 0.0
        self.exits_since_check = 0
        self.check_cost = 0.0
        self.loss_checks = 0
        self.degraded_scans = 0
        self.no_timer = False  # timer_open failed (no timerfd): cap the poller wait instead
        # When the timer fires (monotonic), None while disarmed. It is set
        # again only to fire sooner: one that fires early finds nothing due
        # and is armed for the rest (on_check_timer), so a check after every
        # exit costs no timerfd call.
        self.armed_at: float | None = None
        self.due = 0.0  # when the next periodic loss check is due (0: none scheduled)
        self.replaced = 0  # times our SIGCHLD handler was found replaced
        self.gone = False  # our handler is not installed right now (replaced, or SIG_IGN kept)
        self.ignored = False  # SIGCHLD was SIG_IGN when we would have installed
        self.scan_due = 0.0  # when the next sweep of every child may start
        self.sweep_left: list[int] = []  # the pids the sweep under way has yet to ask

    def prepare(self) -> None:
        """Open what this path needs (the timer) ahead of need, so that it can
        take over with no descriptor free. Never raises for a missing timerfd."""
        if self.tfd >= 0 or self.no_timer or not _core.IS_LINUX:
            return
        try:
            fd = _core.timer_open()
        except (OSError, NotImplementedError):
            # No timerfd (seccomp, gVisor) or no descriptor left: the loss
            # checks then run from the leader's capped poller wait.
            self.no_timer = True
            return
        try:
            _core.poller_add_fd(self.w.poller(), fd, CHECK)
        except BaseException:
            os.close(fd)
            raise
        self.tfd = fd

    def _ensure(self) -> None:
        if not self.installed:
            if sigchld_ignored():
                # Keep the program's auto-reaping (module docstring).
                self.ignored = self.gone = True
            else:
                _core.install(_signal.SIGCHLD, True, True)  # SA_RESTART: exits need not interrupt anyone
                _flags.keep(_signal.SIGCHLD)
                self.installed = True
                self.ignored = self.gone = False
        self.prepare()

    def register(self, pid: int, direct: bool = True) -> None:
        self._ensure()
        start = _procfs.start_time(pid)
        self.starts[pid] = None if start == _procfs.UNKNOWN else start
        if not direct:
            self.owned.add(pid)
        if self.due == 0.0:
            self._schedule(time.monotonic())

    def _schedule(self, now: float) -> None:
        """The next periodic loss check, one period from now."""
        period = _PERIOD_DEGRADED if self.gone else _PERIOD
        self.due = now + period
        # Armed whether or not a check is owed: an owed check's sooner firing
        # keeps (_arm only moves it sooner), and a debt whose timer already
        # fired must not leave the periodic check unarmed (no SIGCHLD may come).
        self._arm(now, self.due)

    def _arm(self, now: float, at: float) -> None:
        """Have the timer fire by ``at`` (no call if it fires by then already)."""
        if self.tfd < 0 or (self.armed_at is not None and self.armed_at <= at):
            return
        _core.timer_arm(self.tfd, max(at - now, 1e-6))
        self.armed_at = at

    def cap(self, remaining: float) -> float:
        """Without a timer, how long the leader may block in the poller (-1.0: forever)."""
        if self.tfd >= 0 or not self.starts:
            return remaining
        left = max(0.0, self.due - time.monotonic())
        return left if remaining < 0 else min(remaining, left)

    def tick(self) -> None:
        """Without a timer, run the periodic loss check once due."""
        if self.tfd < 0 and self.starts and time.monotonic() >= self.due:
            self.loss_check()

    def _check_handler(self) -> None:
        """Is our handler still installed? Report a replacement once."""
        if not self.installed:
            return
        ok = _core.handler_installed(_signal.SIGCHLD)  # asks the kernel
        if ok:
            self.gone = False
        elif not self.gone:
            self.gone = True
            self.replaced += 1
            import logging  # only here: its at-fork hook would run in every fork child

            logging.getLogger("fastreap").warning(
                "fastreap: its SIGCHLD handler was replaced (another library or signal.signal); "
                "children on the SIGCHLD path are now found by periodic checks, up to %.1f s late",
                _PERIOD_DEGRADED,
            )

    def forget(self, pid: int) -> None:
        self.starts.pop(pid, None)
        self.owned.discard(pid)

    def same_process(self, pid: int) -> bool:
        """False if pid now names another process (our child was reaped
        behind the watcher's back and the pid reused). A pidfd needs no check."""
        start = self.starts.get(pid)
        if start is None:
            return True
        now = _procfs.start_time(pid)
        return now == start or now == _procfs.UNKNOWN  # only a proven mismatch says no

    def on_ring(self, pids: list[int], overflow: bool) -> None:
        """Act on the SIGCHLD senders drained from the ring (``overflow``: some
        were lost). ``_core.chld_wake`` is this, compiled, for the usual case
        (plain pids, nothing lost, a timer): keep the two in step."""
        w = self.w
        if not self.starts or not (pids or overflow):
            return  # nothing on this path, or another signal's wake-up
        # Each delivered SIGCHLD may have swallowed others: a loss check is
        # owed. Owe it before the work below, so that an exception there
        # (Ctrl-C, a callback) cannot drop it. It is due at once when enough
        # exits have paid for it (run at the watcher's next call: run_deferred),
        # else from the timer once SIGCHLDs are quiet (module docstring).
        now = time.monotonic()
        self.last_chld = now
        self.exits_since_check += len(pids)
        now_check = overflow or self.tfd < 0 or self.exits_since_check >= len(w.children) >> 5
        owed = self.check_owed
        if not owed and self.tfd >= 0:
            self.check_owed = True
            self.owed_since = now
        if now_check:
            self.check_next = True
        try:
            self.reap_ringed(pids)
        except BaseException:
            self.arm_quiet(now)  # the check stays owed: the timer runs it
            raise
        if not self.starts:
            self._settled()  # nothing left on this path that a lost SIGCHLD could hide
        elif self.tfd < 0:
            self.loss_check()  # no timer to back a deferred check: now
        elif not owed:
            self.arm_quiet(now)

    def arm_quiet(self, now: float) -> None:
        """Have the timer run the owed check once SIGCHLDs are quiet (or the
        periodic check is due, if sooner)."""
        self._arm(now, now + (min(_CHECK_QUIET, max(0.0, self.due - now)) or 1e-6))

    def run_deferred(self) -> None:
        """Run a loss check that is due by count (check_next), if any."""
        if not self.check_next:
            return
        self.loss_check()
        if self.starts and self.armed_at is not None and self.armed_at < self.due:
            # Its backstop (the quiet timer) is not needed now: move it to
            # the periodic check, rather than be woken for nothing.
            now = time.monotonic()
            _core.timer_arm(self.tfd, max(self.due - now, 1e-6))
            self.armed_at = self.due

    def reap_ringed(self, pids: list[int]) -> None:
        """Reap the SIGCHLD senders that are ours on this path. Plain pids
        (``Owner.direct``) in one C call that checks each start time and
        reaps (``reap_checked``); the others through try_reap."""
        if not pids:
            return
        w = self.w
        starts = self.starts
        direct: dict[int, Child] = {}
        for pid in pids:
            if pid not in starts:
                continue
            ringed = w.children[pid]
            if ringed._owner.direct:
                direct[pid] = ringed  # once, though the ring may name it twice
            elif not w.try_reap(ringed) and not self.same_process(pid):
                w.lose(ringed)  # it exited, was reaped elsewhere, and the pid is reused
        if not direct:
            return
        got = _core.reap_checked(list(direct), [starts[pid] for pid in direct])
        for c, r in zip(direct.values(), got, strict=True):
            if r is None:
                w.lose(c)  # reaped elsewhere (and maybe the pid reused): not ours to take
            elif r is not False:
                w.finish(c, r)

    def _settled(self) -> None:
        """No child is left on this path: no loss check is owed (a debt kept
        with nothing to run it for would stop register() from scheduling the
        next child's periodic checks)."""
        self.check_owed = False
        self.check_next = False
        self.exits_since_check = 0

    def on_check_timer(self) -> None:
        _core.timer_drain(self.tfd)
        self.armed_at = None
        if not self.starts:
            self.due = 0.0
            self._settled()
            return
        now = time.monotonic()
        if self.check_next:
            pass  # due by count (deferred to here or the watcher's next call): now
        elif self.check_owed and now < self.due:
            quiet = self.last_chld + _CHECK_QUIET
            latest = self.owed_since + max(_CHECK_MAX_AGE, 500 * self.check_cost)
            if now < quiet and now < latest:
                self._arm(now, min(quiet, latest, self.due))
                return
        elif now < self.due:
            self._arm(now, self.due)
            return
        self.loss_check()

    def _periodic(self, now: float) -> None:
        """What the zombie peek below cannot see: children reaped by someone
        else (a Popen.wait() or Process.join() in another thread; its
        returncode tells, no system call), and each child asked (sweep):
        every time when no SIGCHLD is coming (handler replaced, SIG_IGN:
        auto-reaped), else in slices, one per periodic check (reaped by a
        bare waitpid elsewhere)."""
        self._check_handler()
        if self.gone:
            self.sweep_left = []
            self.sweep()
            return
        self._owned_check()
        if not self.sweep_left:
            if now < self.scan_due:
                return
            self.sweep_left = list(self.starts)
            self.scan_due = now + _SCAN_EVERY
            self.degraded_scans += 1
        part = self.sweep_left[-_SWEEP_SLICE:]
        self._ask(part)
        del self.sweep_left[-len(part) :]  # after: an exception (Ctrl-C) leaves them to ask again

    def _owned_check(self) -> None:
        """Children whose owner reaped them itself (its returncode says so)."""
        w = self.w
        for pid in list(self.owned):
            c = w.children.get(pid)
            if c is not None and c._owner.returncode() is not None:
                w.try_reap(c)

    def _ask(self, pids: list[int]) -> None:
        """Ask after each of pids as try_reap would, without its Python for
        the running ones: one C loop of WNOWAIT waitids (GIL released,
        nothing reaped) names those that have exited or are no longer our
        children, and only those still on this path go through try_reap
        (which checks the start time before taking a status, and writes
        back or reports lost). A pid finished meanwhile is skipped; one
        reused by a new child of ours is that child's, asked as such."""
        w = self.w
        starts = self.starts
        for pid in _core.scan_exited(pids):
            if pid in starts:
                w.try_reap(w.children[pid])

    def sweep(self) -> None:
        """Ask after every child on this path now: owners' returncodes, then
        one C loop (_ask). A running child costs one system call."""
        self.degraded_scans += 1
        self._owned_check()
        self._ask(list(self.starts))

    def loss_check(self) -> None:
        """Reap watched zombies whose SIGCHLD was coalesced away. The debt is
        cleared only once the work is done (an exception leaves it owed)."""
        w = self.w
        self.loss_checks += 1
        t0 = time.monotonic()
        # SIGCHLDs ringed since the last drain are covered by this check:
        # take them now, so no debt is left behind for them.
        self.reap_ringed(_core.chld_drain()[0])
        if t0 >= self.due:
            self._periodic(t0)
        while self.starts:
            z = _core.peek_any()
            if z <= 0:
                break
            c = w.children.get(z)
            if c is None or not w.try_reap(c):
                # Somebody else's zombie in front: WNOWAIT cannot look past it.
                self.sweep()
                break
        now = time.monotonic()
        self.check_cost = now - t0
        self.exits_since_check = 0
        self.check_owed = False
        self.check_next = False
        if self.starts:
            self._schedule(now)
        else:
            # Nothing left on this path. The timer is left as it is: it
            # fires at most once more and finds nothing (on_check_timer),
            # which costs less than disarming it here and arming it again
            # for the next child (two timerfd calls per exit at one child).
            self.due = 0.0

    def take_fds(self) -> list[int]:
        """Hand over its descriptors for closing (Watcher.close)."""
        fd, self.tfd = self.tfd, -1
        return [fd]
