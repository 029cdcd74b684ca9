"""graceful_stop as a state machine, driven by two loops: the blocking one in
``_children.graceful_stop`` and the asyncio one in ``aio.graceful_stop``.

``StopRun`` validates everything first (raising before any signal), then
``begin(now)`` signals all targets at once; from then on each driver waits
until what ``step(now)`` returned (a ``Deadline``) and calls it again, until
it returns None. ``step`` never waits: it decides the next phase (grace ->
killing -> done) from what has exited, and sends the SIGKILLs when the grace
period is over. The drivers do all the waiting (``wait_blocking`` here; the
loop's readers in ``aio``).

``Members``: the other members of the process groups a ``group=True`` stop
signals, pinned with pidfds (see its docstring).
"""

from __future__ import annotations

import os
import signal as _signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _core, _procfs, _watcher
from ._args import check_bool, check_signal, check_timeout
from ._deadline import NEVER, Deadline
from ._owners import owner_of

if TYPE_CHECKING:
    from ._children import Child, Target


@dataclass
class StopReport:
    """What one ``graceful_stop``, ``terminate`` or ``kill`` call did.

    Every target is in exactly one of the four lists, in the order given:

    * ``exited``: finished without a SIGKILL from this call: on its own, from
      ``signal`` within the grace period, or before the call;
    * ``killed``: finished after this call sent it SIGKILL: every target of
      ``kill()`` (or of ``signal=SIGKILL``) still running when it was called,
      and those ``graceful_stop`` escalated to SIGKILL when the grace period
      ran out;
    * ``lost``: finished, but someone else reaped it (``os.waitpid``, another
      waiter), so its exit status is unknown (``Child.lost`` is True);
    * ``alive``: still running when the call returned. Only when nothing
      escalates: ``kill_after=False`` (``terminate(..., timeout=...)``) and
      the timeout passed. They stay watched.

    ``returncodes`` maps the pid of every target in ``exited`` and ``killed``
    (and only those) to its returncode, as ``subprocess.Popen.returncode``
    has it: the exit code, or ``-N`` if signal N ended it. A lost or alive
    target has no entry, so ``report.returncodes.get(pid)`` is None for both
    (tell them apart with ``lost`` and ``alive``).

    ``elapsed``: seconds from the first signal until the call returned.
    """

    exited: list[Child] = field(default_factory=list)
    killed: list[Child] = field(default_factory=list)
    elapsed: float = 0.0
    returncodes: dict[int, int] = field(default_factory=dict)
    alive: list[Child] = field(default_factory=list)
    lost: list[Child] = field(default_factory=list)


class Members:
    """The other members of the process groups a ``group=True`` stop signals.

    They are not our children, so a bare number is never trusted after the
    moment it was checked. Each member is found in ``/proc`` while its group's
    leader (our child) is still unreaped, so the group id cannot name another
    group yet; it is then pinned with a pidfd and checked again (the pidfd
    refers to the process that had the number when it was opened: if that one
    is still alive and in the group, it is a member; if it died, the pidfd only
    ever fails with ESRCH). From then on it is signalled and waited for through
    the pidfd. Members forked after that are found again only while a leader
    is unreaped (``killpg`` under the watcher lock, atomic for the whole group)
    or, once it is gone, as children of a pinned member that is still alive.
    Without pidfds (macOS, Linux < 5.3) only the ``killpg`` part remains.
    """

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude  # the targets themselves: the watcher has them
        self.pgids: set[int] = set()
        self.fds: dict[int, int] = {}
        self.pgid_of: dict[int, int] = {}
        self.pfd = -1
        self.enabled = _core.IS_LINUX and _core.have_pidfd() and os.path.isdir("/proc")

    def fileno(self) -> int:
        """The private poller (readable when a pinned member exits)."""
        if self.pfd < 0:
            self.pfd = _core.poller_open()
        return self.pfd

    def _pin(self, pid: int, accept: Callable[[int, int], bool]) -> bool:
        try:
            fd = _core.pidfd_open(pid, 0)
        except OSError:
            return False  # gone already, or out of descriptors (killpg still covers it)
        st = _procfs.live_stat(pid)
        if st is None or not accept(st.ppid, st.pgrp):
            os.close(fd)
            return False
        try:
            _core.poller_add_fd(self.fileno(), fd, pid)
        except BaseException:
            os.close(fd)
            raise
        self.fds[pid] = fd
        self.pgid_of[pid] = st.pgrp
        return True

    def _candidates(self) -> list[tuple[int, int, int]]:
        out = []
        for pid in _procfs.pids():
            if pid in self.fds or pid in self.exclude:
                continue
            st = _procfs.live_stat(pid)
            if st is not None and st.pgrp in self.pgids:
                out.append((pid, st.ppid, st.pgrp))
        return out

    def scan_groups(self, pgids: set[int]) -> None:
        """Pin every member of ``pgids``; the caller holds the watcher lock
        and each group's leader is unreaped, so these ids are still theirs."""
        self.pgids |= pgids
        if not self.enabled or not pgids:
            return
        for pid, _ppid, pgid in self._candidates():
            if pgid in pgids:
                self._pin(pid, lambda _pp, pg: pg in pgids)

    def scan_descendants(self) -> int:
        """Pin group members whose parent is a pinned member still alive (a
        number check is safe while that parent lives); return how many."""
        if not self.enabled or not self.fds:
            return 0
        new = 0
        for pid, ppid, _pgid in self._candidates():
            pfd = self.fds.get(ppid)
            if pfd is None:
                continue

            def accept(pp: int, pg: int, ppid: int = ppid, pfd: int = pfd) -> bool:
                return pp == ppid and pg in self.pgids and _core.wait_readable(pfd, -1, 0.0) == 0

            new += self._pin(pid, accept)
        return new

    def signal(self, sig: int, skip: set[int] | frozenset[int] = frozenset()) -> None:
        """Signal every pinned member not in a group in ``skip`` (those that
        were just signalled with killpg: one signal each, not two)."""
        for pid, fd in self.fds.items():
            if self.pgid_of.get(pid) in skip:
                continue
            try:
                _core.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                pass

    def collect(self, deadline: Deadline) -> None:
        """Forget members that exited, waiting until deadline for one."""
        if not self.fds:
            return
        for pid in _core.poller_wait(self.fileno(), deadline.remaining()):
            fd = self.fds.pop(pid, -1)
            self.pgid_of.pop(pid, None)
            if fd >= 0:
                os.close(fd)  # also leaves the poller

    def collect_ready(self) -> None:
        """Forget members that exited, without waiting."""
        self.collect(_NOW)

    def wait_all(self, deadline: Deadline) -> bool:
        while self.fds:
            if deadline.passed():
                return False
            self.collect(deadline)
        return True

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.pgid_of.clear()
        if self.pfd >= 0:
            os.close(self.pfd)
            self.pfd = -1


_NOW = Deadline(0.0)  # long passed: collect without waiting
# Stop signals not followed by SIGCONT: SIGKILL acts on a stopped process
# anyway, and the job-control ones ask for a stop.
_NO_CONT = frozenset(
    {_signal.SIGKILL, _signal.SIGCONT, _signal.SIGSTOP, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU}
)
GRACE, KILLING, DONE = "grace", "killing", "done"


class StopRun:
    """One graceful_stop (see the module docstring)."""

    def __init__(
        self,
        targets: Iterable[Target] | Target,
        timeout: float | None,
        sig: int,
        kill_after: bool,
        group: bool,
    ) -> None:
        from ._children import validate, watch

        self.timeout = check_timeout(timeout)
        self.sig = check_signal(sig, "signal")
        check_bool(kill_after, "kill_after")
        check_bool(group, "group")
        items = validate(targets)
        if group:
            own = os.getpgrp()
            for t in items:
                if _target_done(t):
                    continue  # its pid may name someone else by now
                pid = t if isinstance(t, int) else t.pid
                try:
                    pgid = os.getpgid(pid)
                except ProcessLookupError:
                    continue
                if pgid == own:
                    raise ValueError(
                        f"targets: pid {pid} is in this process's own process group; group=True "
                        "would signal this process too (start it with start_new_session=True "
                        "or process_group=0)"
                    )
        self.kids = [watch(t) for t in items]
        self._running = list(self.kids)  # popped from the end as they finish (see kids_exited)
        self.kill_after = kill_after
        self.group = group
        self.members = Members({c.pid for c in self.kids}) if group else None
        self.killed: list[Child] = []  # escalated to SIGKILL
        self.sigkilled: list[Child] = []  # running when signal=SIGKILL (kill()) was sent
        self.escalated = False
        self.phase = GRACE
        self.start = 0.0
        self.deadline = NEVER

    # -- the machine ---------------------------------------------------------

    def begin(self, now: float) -> Deadline:
        """Signal every target at once; return the end of the grace period."""
        self.start = now
        self.deadline = Deadline(None if self.timeout is None else now + self.timeout)
        if self.sig == _signal.SIGKILL:
            self.sigkilled = self.pending()
        self._signal(self.kids, self.sig)
        return self.deadline

    def step(self, now: float) -> Deadline | None:
        """Advance on what has exited by now: the deadline to wait until
        next, or None when the run is over (then ``report()``)."""
        if self.phase == GRACE:
            if self.all_exited():
                self.phase = DONE
            elif self.deadline.passed(now):
                if self.kill_after:
                    self.escalate()
                    self.phase = KILLING
                else:
                    self.phase = DONE
            else:
                return self.deadline
        if self.phase == KILLING:
            if not self.all_exited():
                return NEVER
            self.phase = DONE
        return None

    def kids_exited(self) -> bool:
        """Every target finished; O(len(kids)) over a whole run, however often asked."""
        running = self._running
        while running and running[-1]._done():
            running.pop()
        return not running

    def all_exited(self) -> bool:
        """Every target and every pinned group member gone."""
        return self.kids_exited() and (self.members is None or not self.members.fds)

    # -- signals (the only I/O it does itself) -------------------------------

    def _signal(self, kids: list[Child], sig: int) -> None:
        # A stopped (SIGSTOPped) child would only act on the stop signal once
        # continued: follow it with SIGCONT, as systemd does.
        sigs = (sig,) if sig in _NO_CONT else (sig, _signal.SIGCONT)
        w = _watcher.current()
        if self.members is None:
            if all(c._watcher is w for c in kids):
                with w.lock:
                    for s in sigs:
                        w.signal_many(kids, s)  # the pidfd ones in one C loop
            else:
                for c in kids:
                    for s in sigs:
                        c.send_signal(s)
            return
        own = os.getpgrp()
        with w.lock:
            # Under the lock no watched child is reaped, so each unreaped
            # leader keeps its group id from naming anyone else's group.
            live = [c for c in kids if not c._done() and not w.closed]
            groups: dict[int, int] = {}
            for c in live:
                try:
                    groups[c.pid] = os.getpgid(c.pid)
                except ProcessLookupError:
                    pass
            pgids = {g for g in groups.values() if g != own}
            self.members.scan_groups(pgids)
            for c in live:
                g = groups.get(c.pid, own)
                if g == own:  # never our own group (checked up front; it may have moved)
                    for s in sigs:
                        w.send_locked(c, s)
            for g in pgids:
                for s in sigs:
                    try:
                        os.killpg(g, s)
                    except ProcessLookupError:
                        pass
        for s in sigs:
            self.members.signal(s, skip=pgids)

    def pending(self) -> list[Child]:
        return [c for c in self.kids if not c._done()]

    def escalate(self) -> None:
        """SIGKILL what is still running (leaders and pinned members)."""
        first, self.escalated = not self.escalated, True
        late = self.pending()
        if late:
            self._signal(late, _signal.SIGKILL)
            if first:
                w = _watcher.current()
                with w.lock:
                    w.escalations += len(late)
                self.killed = late
        elif self.members is not None:
            self.members.signal(_signal.SIGKILL)
        if self.members is not None:
            for _ in range(16):  # members forking while we kill: bounded
                if not self.members.scan_descendants():
                    break
                self.members.signal(_signal.SIGKILL)

    def report(self) -> StopReport:
        """Sort the targets into StopReport's four lists (see its docstring)."""
        killed = {id(c) for c in self.killed}
        killed.update(id(c) for c in self.sigkilled)
        r = StopReport(elapsed=time.monotonic() - self.start)
        for c in self.kids:
            if c._lost:
                r.lost.append(c)
            elif c._status is None:
                r.alive.append(c)
            else:
                (r.killed if id(c) in killed else r.exited).append(c)
                r.returncodes[c.pid] = c._status.returncode
        return r

    def close(self) -> None:
        if self.members is not None:
            self.members.close()


def wait_blocking(run: StopRun, deadline: Deadline) -> None:
    """The blocking driver's wait: targets first, then pinned members."""
    _watcher.current().wait_until(run.kids_exited, deadline)
    if run.members is not None and run.kids_exited():
        run.members.wait_all(deadline)


def drive_blocking(run: StopRun) -> StopReport:
    d: Deadline | None = run.begin(time.monotonic())
    while d is not None:
        wait_blocking(run, d)
        d = run.step(time.monotonic())
    return run.report()


def _target_done(t: Any) -> bool:
    from ._children import Child

    if isinstance(t, Child):
        return t._done()
    if isinstance(t, int):
        c = _watcher.current().children.get(t)
        return c is not None and c._done()
    return owner_of(t).returncode() is not None
