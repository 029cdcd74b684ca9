"""Parent side: watch children, wait for them without polling, reap without stealing.

How exits are noticed (one process-wide ``_Watcher``):

* **pidfd + epoll** (Linux >= 5.3). Each watched child gets a pidfd registered in
  one epoll instance; epoll reports only the ready ones, so one exit costs
  O(1) whatever the number of live children.
* **Descriptor budget.** Pidfds are descriptors, and a program may watch 10,000
  children under ``RLIMIT_NOFILE`` 1,024. So pidfds are used only up to a budget
  (a quarter of the soft limit, at most 16,384) and are moved to numbers at or
  above a floor (1,024 when the limit allows, otherwise the top quarter), which
  keeps the low numbers that ``select()`` users and the program need free.
* **SIGCHLD for the rest.** Children beyond the budget (or every child when the
  kernel has no pidfd, or with ``FASTREAP_BACKEND=sigchld``) are noticed through
  fastreap's C SIGCHLD handler, which records the sender (``si_pid``) in a
  lock-free ring and pokes the watcher's wake-up descriptor. The watcher reaps
  exactly those pids: O(1) per exit.
* **The loss check.** SIGCHLD coalesces: one delivered SIGCHLD may hide other
  exits. The check asks the kernel whether any zombie is left
  (``waitid(P_ALL, WNOWAIT)``): none means nothing was lost; a watched one is
  reaped and the question asked again; when the zombie in front is somebody
  else's (which ``WNOWAIT`` cannot look past) it checks each SIGCHLD-path child
  (``degraded_scans``). That call walks the kernel's list of *all* our
  children, so running it after every SIGCHLD made one exit cost O(children)
  (0.9 ms at 10,000 live). So it is amortised: it runs at once only after
  len(children)/32 exits since the last one (or when the ring overflowed), and
  otherwise from a one-shot timerfd in the same epoll set, once SIGCHLDs have
  been quiet for 5 ms (at most 0.1 s after the first one owed). Each exit
  then pays O(1) plus 1/32 of a walk per live child; a child whose SIGCHLD
  was swallowed is reaped at most ~5 ms late (or 0.1 s under a steady stream
  of exits). Waiters and asyncio need nothing special: the timer is just
  another descriptor in the watcher's epoll.
* **kqueue** EVFILT_PROC on macOS watches pids directly, with no descriptor each.

Never stealing: only watched pids are reaped, and before reaping a child of a
``subprocess.Popen`` or ``multiprocessing.Process`` the status is written back
into that object (under Popen's ``_waitpid_lock``, which ``Popen.wait()`` holds
while it blocks), so their own ``wait()``/``poll()``/``exitcode`` stay true.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import signal as _signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard, Union

from . import _core
from ._flags import check_signal

__all__ = [
    "ALL_EXITED",
    "FIRST_EXITED",
    "Child",
    "ChildLostError",
    "ExitStatus",
    "StopReport",
    "counters",
    "graceful_stop",
    "kill",
    "reap",
    "set_subreaper",
    "terminate",
    "wait",
    "watch",
]

_log = logging.getLogger("fastreap")

FIRST_EXITED = "FIRST_EXITED"
ALL_EXITED = "ALL_EXITED"

_WAKE = -1  # poller token of the global wake-up descriptor
_CHECK = -2  # poller token of the loss-check timer (SIGCHLD path)
# The SIGCHLD path's loss check (see _Watcher.on_wake) waits for this much
# quiet after the last SIGCHLD, but never longer than _CHECK_MAX_AGE (or 500
# times its own last cost, so that it stays below ~0.2% of the time).
_CHECK_QUIET = 0.005
_CHECK_MAX_AGE = 0.1


def _backend() -> str:
    b = os.environ.get("FASTREAP_BACKEND", "auto")
    if b not in ("auto", "pidfd", "sigchld"):
        raise ValueError(f"FASTREAP_BACKEND must be auto, pidfd or sigchld, not {b!r}")
    return b


BACKEND = _backend()


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

    @classmethod
    def _from_wait(
        cls,
        pid: int,
        status: int,
        utime: float | None = None,
        stime: float | None = None,
        maxrss: int | None = None,
    ) -> ExitStatus:
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return cls(pid, -sig, None, sig, os.WCOREDUMP(status), utime, stime, maxrss)
        code = os.WEXITSTATUS(status)
        return cls(pid, code, code, None, False, utime, stime, maxrss)

    @classmethod
    def _from_siginfo(cls, pid: int, si_code: int, si_status: int) -> ExitStatus:
        if si_code == _core.CLD_EXITED_:
            return cls(pid, si_status, si_status, None)
        return cls(pid, -si_status, None, si_status, si_code == _core.CLD_DUMPED_)

    @classmethod
    def _from_returncode(cls, pid: int, rc: int) -> ExitStatus:
        if rc < 0:
            return cls(pid, rc, None, -rc)
        return cls(pid, rc, rc, None)


# Bound once: tests and users monkeypatch subprocess.Popen, and a real Popen
# must still be recognised (CPython's test_subprocess does exactly that).
_Popen = subprocess.Popen
Target = Union[int, "Child", "subprocess.Popen[Any]", Any]


class _Watcher:
    """The process-wide registry of watched children (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.leading = False
        self.closed = False
        # pidfds of children finished by another thread while a leader blocks
        # in epoll: kept registered (and readable) so the leader wakes up and
        # sees the news; closed by the leader when it returns.
        self.deferred: list[int] = []
        self.pfd = -1
        self.children: dict[int, Child] = {}
        self.sigchld_path: set[int] = set()
        self.pidfds = 0
        self.budget, self.floor = _pidfd_budget()
        self.use_pidfd = BACKEND != "sigchld" and _core.IS_LINUX and _core.have_pidfd()
        self.sigchld_installed = False
        self.reaped = 0
        self.escalations = 0
        self.lost = 0
        self.degraded_scans = 0
        self.followers = 0  # threads in cond.wait() behind the leader
        self.finished = 0  # children finished (reaped or lost): wait() predicates' generation
        # The SIGCHLD path's loss check (see on_wake).
        self.tfd = -1  # its timer (Linux), token _CHECK in the poller
        self.check_owed = False
        self.owed_since = 0.0
        self.last_chld = 0.0
        self.exits_since_check = 0
        self.check_cost = 0.0
        self.loss_checks = 0

    # -- registration (lock held) ------------------------------------------

    def _poller(self) -> int:
        if self.pfd < 0:
            self.pfd = _core.poller_open()
            _core.poller_add_fd(self.pfd, _core.global_wake_fd(), _WAKE)
        return self.pfd

    def _ensure_sigchld(self) -> None:
        if not self.sigchld_installed:
            _core.install(_signal.SIGCHLD, True, True)  # SA_RESTART: exits need not interrupt anyone
            self.sigchld_installed = True
        if self.tfd < 0 and _core.IS_LINUX:
            fd = _core.timer_open()
            try:
                _core.poller_add_fd(self._poller(), fd, _CHECK)
            except BaseException:
                os.close(fd)
                raise
            self.tfd = fd

    def register(self, child: Child) -> None:
        pfd = self._poller()
        pid = child.pid
        if child._foreign:
            # A forkserver child is the server's, not ours: its Popen sentinel
            # becomes readable once the server has reaped it and sent the code.
            # A pidfd, where there is one, serves only to signal it safely.
            if self.use_pidfd:
                try:
                    child._pidfd = _core.pidfd_open(pid, self.floor)
                except OSError:
                    child._pidfd = -1
            _core.poller_add_fd(pfd, child._target.sentinel, pid)
            self.children[pid] = child
            return
        if self.use_pidfd and self.pidfds < self.budget:
            try:
                fd = _core.pidfd_open(pid, self.floor)
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.EINVAL):
                    raise
                fd = -1  # over the limit after all: the SIGCHLD path takes it
            if fd >= 0:
                try:
                    _core.poller_add_fd(pfd, fd, pid)
                except BaseException:
                    os.close(fd)
                    raise
                child._pidfd = fd
                self.pidfds += 1
                self.children[pid] = child
                return
        if _core.IS_APPLE:
            try:
                _core.poller_add_pid(pfd, pid, pid)
            except ProcessLookupError:
                pass  # already exited: the check after registration reaps it
            self.children[pid] = child
            return
        self._ensure_sigchld()
        start = _start_time(pid)
        child._start = None if start == _UNKNOWN else start
        self.sigchld_path.add(pid)
        self.children[pid] = child

    def _forget(self, child: Child) -> None:
        self.children.pop(child.pid, None)
        self.sigchld_path.discard(child.pid)
        if child._foreign:
            try:
                _core.poller_del_fd(self.pfd, child._target.sentinel)
            except (OSError, ValueError):
                pass  # the Process was closed: its sentinel (and registration) are gone
        elif child._pidfd >= 0:
            self.pidfds -= 1
            if self.leading:
                self.deferred.append(child._pidfd)
                child._pidfd = -1
                return
            fd, child._pidfd = child._pidfd, -1
            _core.poller_close_fd(self.pfd, fd)
            return
        elif _core.IS_APPLE:
            _core.poller_del_pid(self.pfd, child.pid)
        if child._pidfd >= 0:
            # Forget the number before closing it (here and in
            # _close_deferred): os.close releases the GIL, and a fork landing
            # in that window must not find a closed (or reused) number in
            # our books, which close() would then close in the child.
            fd, child._pidfd = child._pidfd, -1
            os.close(fd)

    def finish(self, child: Child, status: ExitStatus | None) -> None:
        """Record a child's end (lock held) and wake everyone waiting."""
        self._forget(child)
        self.finished += 1
        if status is None:
            child._lost = True
            self.lost += 1
            if child._target is not None:
                # Its Popen/Process never learns a returncode: remember on it
                # that it is lost, so watching it again cannot pick up
                # whichever process has the pid by now (see _lost_child).
                try:
                    child._target._fastreap_child = child
                except AttributeError:  # pragma: no cover - a subclass with __slots__
                    pass
        else:
            child._status = status
            self.reaped += 1
        if self.followers:
            self.cond.notify_all()
        if child._callbacks:
            callbacks, child._callbacks = child._callbacks, []
            for cb in callbacks:
                try:
                    cb(child)
                except Exception:
                    # Like concurrent.futures: one failing callback must not
                    # stop the others, nor surface in an unrelated waiter.
                    _log.exception("fastreap: done callback %r for %r raised", cb, child)

    # -- reaping (lock held) -----------------------------------------------

    def try_reap(self, child: Child, exited: bool = False) -> bool:
        """Reap ``child`` if it has exited, writing its status back into its
        Popen/Process; return whether it is done. ``exited``: its pidfd said
        so, and a plain pid or Popen is then reaped without a WNOWAIT peek."""
        if child._done():
            return True
        t = child._target
        if child._foreign:
            rc = t._popen.poll()  # popen_forkserver reads the code from its sentinel
            if rc is None:
                return False
            self.finish(child, ExitStatus._from_returncode(child.pid, rc))
            return True
        popen = isinstance(t, _Popen)
        if popen and t.returncode is not None:
            self.finish(child, ExitStatus._from_returncode(child.pid, t.returncode))
            return True
        early = None
        # Skip the peek only when waiting on the Popen lock cannot stall: a
        # stale event (a reused pid's token) must not block on a running
        # Popen whose own wait() holds its lock.
        if not exited or not (t is None or (popen and not t._waitpid_lock.locked())):
            try:
                peeked = _core.peek(child.pid, child._pidfd)
            except ChildProcessError:
                self._lose(child)
                return True
            if peeked is None:
                return False
            if not child._same_process():
                # The pid was reaped behind our back and now names another child
                # of ours (SIGCHLD path, no pidfd): its status is not ours to take.
                self._lose(child)
                return True
            early = ExitStatus._from_siginfo(child.pid, *peeked)
            if not popen and t is not None and t._popen.returncode is None:
                # multiprocessing's poll() has no lock: publish the code before
                # reaping so a racing join() that finds ECHILD still sees it.
                t._popen.returncode = early.returncode
        if popen:
            # Popen.wait() holds this lock while it blocks in waitpid(); the
            # child has exited, so that call returns at once and we then read
            # what it found instead of stealing the status from under it.
            with t._waitpid_lock:
                if t.returncode is not None:
                    self.finish(child, ExitStatus._from_returncode(child.pid, t.returncode))
                    return True
                status = self._reap(child, early)
                if status is _RUNNING:
                    return False
                if status is not None:
                    t.returncode = status.returncode
        else:
            status = self._reap(child, early)
            if status is _RUNNING:
                return False
        self.finish(child, status)
        return True

    def _lose(self, child: Child) -> None:
        """Someone else reaped it: record what its owner found, or lost."""
        rc = _owner_returncode(child._target)
        self.finish(child, None if rc is None else ExitStatus._from_returncode(child.pid, rc))

    def _reap(self, child: Child, early: ExitStatus | None) -> ExitStatus | None:
        """Reap it (through its pidfd when it has one: that names the very
        process, never a reused pid) with rusage: its status; ``early`` (from
        a peek) if someone reaped it since (no rusage then), None (lost) if
        it had no peek; _RUNNING if it has not exited after all."""
        try:
            r = _core.reap_pid(child.pid, child._pidfd)
        except ChildProcessError:
            return early
        if r is None:  # cannot happen after a successful peek or pidfd event
            return _RUNNING if early is None else early
        return ExitStatus._from_wait(*r)

    def on_wake(self) -> None:
        """The wake-up descriptor fired: a handled signal or a SIGCHLD."""
        _core.global_wake_drain()
        pids, overflow = _core.chld_drain()
        if not self.sigchld_path:
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
            if pid in self.sigchld_path:
                ringed = self.children[pid]
                if not self.try_reap(ringed) and not ringed._same_process():
                    self._lose(ringed)  # it exited, was reaped elsewhere, and the pid is reused
        if not (pids or overflow) or not self.sigchld_path:
            return  # another signal's wake-up, or nothing left to lose
        # Run the check now when enough exits have paid for it, else the
        # timer runs it once SIGCHLDs are quiet (module docstring).
        if overflow or self.tfd < 0 or self.exits_since_check >= len(self.children) >> 5:
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
        self.loss_checks += 1
        t0 = time.monotonic()
        while self.sigchld_path:
            z = _core.peek_any()
            if z <= 0:
                break
            c = self.children.get(z)
            if c is None or not self.try_reap(c):
                # Somebody else's zombie in front: WNOWAIT cannot look past it.
                self.degraded_scans += 1
                for pid in list(self.sigchld_path):
                    self.try_reap(self.children[pid])
                break
        self.check_cost = time.monotonic() - t0
        self.exits_since_check = 0
        if self.check_owed:
            self.check_owed = False
            _core.timer_arm(self.tfd, 0.0)

    def process(self, tokens: list[int]) -> None:
        for tok in tokens:
            if tok >= 0:
                c = self.children.get(tok)
                if c is not None:
                    self.try_reap(c, c._pidfd >= 0)  # a readable pidfd: it has exited
            elif tok == _WAKE:
                self.on_wake()
            elif tok == _CHECK:
                self.on_check_timer()

    # -- waiting -------------------------------------------------------------

    def wait_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Block until pred() (checked with the lock held) or timeout seconds
        (< 0: forever). One thread at a time waits in epoll with the GIL and the
        lock released; the others sleep on the condition until it has news."""
        deadline = None if timeout < 0 else time.monotonic() + timeout
        with self.cond:
            self._check_open()
            if not pred() and self.pfd >= 0 and not self.leading:
                # Collect exits that already happened (timeout 0 must see them,
                # also those whose SIGCHLD was coalesced: run an owed check).
                self.process(_core.poller_wait(self.pfd, 0.0))
                if self.check_owed and not pred():
                    self.loss_check()
            while not pred():
                remaining = -1.0
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                if self.leading:
                    self.followers += 1
                    try:
                        self.cond.wait(None if remaining < 0 else remaining)
                    finally:
                        self.followers -= 1
                    continue
                self.leading = True
                self.lock.release()
                tokens: list[int] = []
                try:
                    tokens = _core.poller_wait(self._poller(), remaining)
                finally:
                    # Ctrl-C may interrupt acquire() itself: we must hold the
                    # lock again (and stop leading) before anything propagates.
                    pending = _acquire_uninterruptibly(self.lock)
                    self.leading = False
                    if self.deferred:
                        self._close_deferred()
                    if self.followers:
                        self.cond.notify_all()
                    if pending is not None:
                        raise pending
                self.process(tokens)
            return True

    def _close_deferred(self) -> None:
        while self.deferred:
            _core.poller_close_fd(self.pfd, self.deferred.pop())

    def poll_now(self) -> None:
        """Reap whatever is ready without blocking (for is_alive and asyncio).
        Not while a leader waits: draining the wake-up descriptor under it
        would leave it asleep with its news consumed; it reaps promptly."""
        with self.lock:
            if self.pfd < 0 or self.closed or self.leading:
                return
            self.process(_core.poller_wait(self.pfd, 0.0))

    def _check_open(self) -> None:
        if self.closed:
            raise ChildProcessError("this watcher belongs to the parent process (we are a forked child)")

    def close(self) -> None:
        """Close its descriptors and refuse further use. After fork, in the
        child: closing our copies of the parent's pidfds and epoll leaves the
        parent's registrations intact. Also used to retire a watcher that a
        test or benchmark swapped in (with its children all finished)."""
        self.closed = True
        fds = [self.pfd, *self.deferred]
        self.pfd = -1
        self.deferred.clear()
        fds.append(self.tfd)
        self.tfd = -1
        for c in list(self.children.values()):
            fds.append(c._pidfd)
            c._pidfd = -1
        for fd in dict.fromkeys(fds):  # a fork inside _forget may list one twice
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass  # never abort the fork hook: the child needs its new watcher


def _pidfd_budget() -> tuple[int, int]:
    env = os.environ.get("FASTREAP_PIDFD_BUDGET")
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    budget = min(soft // 4, 16384) if env is None else max(0, int(env))
    floor = 1024 if soft >= 1024 + budget else max(0, soft - budget)
    return budget, floor


_watcher = _Watcher()
# _Watcher._reap's "not exited after all" (identity-compared, never exposed).
_RUNNING = ExitStatus(0, 0, 0, None)


@contextlib.contextmanager
def _swapped_watcher(use_pidfd: bool | None = None) -> Iterator[_Watcher]:
    """A fresh process-wide watcher for the duration, closed afterwards (for
    tests and benchmarks; its children must all be finished by then). It
    sizes its pidfd budget from the current RLIMIT_NOFILE; ``use_pidfd=False``
    puts every child on the SIGCHLD path."""
    global _watcher
    old = _watcher
    new = _Watcher()
    if use_pidfd is not None:
        new.use_pidfd = new.use_pidfd and use_pidfd
    new.sigchld_installed = old.sigchld_installed
    _watcher = new
    try:
        yield new
    finally:
        _watcher = old
        new.close()
        old.sigchld_installed = new.sigchld_installed


def _get_watcher() -> _Watcher:
    return _watcher


_UNKNOWN = -1  # _start_time could not read it (EMFILE, ENOMEM...): proves nothing


def _start_time(pid: int) -> int | None:
    """The start time of pid (clock ticks since boot, /proc/<pid>/stat field
    22), None if it is gone or there is no /proc, _UNKNOWN if /proc could not
    be read. Tells a reused pid apart on the SIGCHLD path, where no pidfd
    pins the process."""
    if not _core.IS_LINUX:
        return None
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return None if e.errno in (errno.ENOENT, errno.ESRCH) else _UNKNOWN
    try:
        data = os.read(fd, 4096)
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except OSError as e:
        return None if e.errno in (errno.ENOENT, errno.ESRCH) else _UNKNOWN
    except (ValueError, IndexError):
        return _UNKNOWN
    finally:
        os.close(fd)


def _acquire_uninterruptibly(lock: Any) -> BaseException | None:
    """Take lock even if a signal handler raises (Ctrl-C) while we wait for
    it; return that exception for the caller to raise once consistent."""
    pending: BaseException | None = None
    while True:
        try:
            lock.acquire()
            return pending
        except BaseException as e:
            pending = e


def _owner_returncode(t: Any) -> int | None:
    """After ECHILD: the code the child's owner found if it reaped it itself
    (a concurrent Popen.wait() or Process.join()), else None (lost)."""
    if isinstance(t, _Popen):
        # Popen reaps and stores returncode under _waitpid_lock: once we hold
        # it, a concurrent wait() has finished publishing.
        with t._waitpid_lock:  # type: ignore[attr-defined]
            return t.returncode
    if t is None or t._popen is None:
        return None
    # multiprocessing has no lock: its joiner stores returncode right after
    # waitpid() returns, once it gets the GIL. Give it a bounded moment.
    deadline = time.monotonic() + 0.1
    while t._popen.returncode is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    return t._popen.returncode  # type: ignore[no-any-return]


def _target_returncode(t: Any) -> int | None:
    if isinstance(t, _Popen):
        return t.returncode
    if t is not None and t._popen is not None:
        return t._popen.returncode  # type: ignore[no-any-return]
    return None


class Child:
    """A watched child process. Signalling is pid-reuse safe (pidfd where the
    kernel has one; otherwise kill() while the unreaped pid cannot be reused)
    and becomes a silent no-op once the child is reaped."""

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_foreign",
        "_lost",
        "_pidfd",
        "_start",
        "_status",
        "_target",
        "_watcher",
        "pid",
    )

    def __init__(self, pid: int, target: Any, watcher: _Watcher, foreign: bool = False) -> None:
        if not isinstance(watcher, _Watcher):
            # A hand-made Child could name any pid (pid 1, the parent): only
            # watch(), which checks that pid is our child, makes them.
            raise TypeError("Child objects are made by fastreap.watch(target), not directly")
        self.pid = pid
        self._target = target
        self._watcher = watcher
        self._foreign = foreign
        self._pidfd = -1
        self._start: int | None = None  # start time, kept on the SIGCHLD path (Linux)
        self._status: ExitStatus | None = None
        self._lost = False
        self._callbacks: list[Callable[[Child], None]] = []

    def _done(self) -> bool:
        return self._status is not None or self._lost

    def _same_process(self) -> bool:
        """False if our pid now names another process (we were reaped behind
        the watcher's back and the pid reused). Only checked on the SIGCHLD
        path; a pidfd needs no check."""
        if self._start is None:
            return True
        now = _start_time(self.pid)
        return now == self._start or now == _UNKNOWN  # only a proven mismatch says no

    def _refresh(self) -> None:
        if not self._done() and not self._watcher.closed:
            with self._watcher.lock:
                self._watcher.try_reap(self)

    @property
    def status(self) -> ExitStatus | None:
        """How it ended, or None while it runs."""
        self._refresh()
        return self._status

    @property
    def returncode(self) -> int | None:
        """None while running; the exit code, or -N if signal N killed it."""
        self._refresh()
        return None if self._status is None else self._status.returncode

    # h-spawner (issue 13): the Popen behind fastreap.spawn()/watch(popen).
    @property
    def popen(self) -> subprocess.Popen[Any] | None:
        """The ``subprocess.Popen`` it watches (``fastreap.spawn``,
        ``watch(popen)``), else None."""
        t = self._target
        return t if isinstance(t, _Popen) else None

    @property
    def lost(self) -> bool:
        """True if someone else reaped it and its status is unknown."""
        return self._lost

    def is_alive(self) -> bool:
        """Whether it still runs (reaps it if it has exited)."""
        self._refresh()
        return not self._done()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait (without polling, GIL released) until it exits; return its
        returncode, or None on timeout. ChildLostError if someone else reaped it."""
        t = _core.check_timeout(timeout)
        if self._watcher.closed and not self._done():
            raise ChildProcessError(f"pid {self.pid} is a child of the parent process, not of this one")
        self._watcher.wait_until(self._done, t)
        if self._lost:
            raise ChildLostError(f"pid {self.pid} was reaped by someone else; its exit status is unknown")
        return None if self._status is None else self._status.returncode

    def send_signal(self, sig: int) -> None:
        """Send sig to the child (pid-reuse safe); nothing once it is reaped."""
        sig = check_signal(sig, "sig", allow_zero=True)
        with self._watcher.lock:
            self._send_locked(sig)

    def _send_locked(self, sig: int) -> None:
        """send_signal with the watcher lock already held."""
        if self._done() or self._watcher.closed:
            return
        try:
            if self._pidfd >= 0:
                _core.pidfd_send_signal(self._pidfd, sig)
            elif not self._foreign:
                # Unreaped by us, so the pid is reused only if someone else
                # reaped it: the start time tells (left: the instant between
                # this check and kill()). The lock keeps our own reaper off.
                if not self._same_process():
                    self._watcher._lose(self)
                    return
                os.kill(self.pid, sig)
            else:
                self._target_signal(sig)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    def _target_signal(self, sig: int) -> None:
        # A forkserver child without pidfd: only while its sentinel says it runs.
        if self._target._popen.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM (pid-reuse safe)."""
        self.send_signal(_signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL (pid-reuse safe)."""
        self.send_signal(_signal.SIGKILL)

    def add_done_callback(self, fn: Callable[[Child], None]) -> None:
        """Call fn(child) once it is reaped (at once if it already is), in the
        thread that reaps it, with fastreap's watcher lock held: keep it short
        and hand work off (``loop.call_soon_threadsafe``, ``queue.put``,
        ``Event.set``) rather than calling fastreap from it. An exception it
        raises is logged (logger ``fastreap``) and does not stop the others."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._watcher.lock:
            if not self._done():
                self._callbacks.append(fn)
                return
        fn(self)

    def remove_done_callback(self, fn: Callable[[Child], None]) -> None:
        with self._watcher.lock:
            try:
                self._callbacks.remove(fn)
            except ValueError:
                pass

    def __repr__(self) -> str:
        state = (
            "lost"
            if self._lost
            else ("running" if self._status is None else f"returncode={self._status.returncode}")
        )
        return f"<fastreap.Child pid={self.pid} {state}>"


def _lost_child(obj: Any) -> Child | None:
    """The Child of a Popen/Process that someone else reaped (its own
    returncode never got set, and its pid may have been reused since)."""
    c = getattr(obj, "_fastreap_child", None)
    if isinstance(c, Child) and c._lost and c._watcher is _watcher:
        return c
    return None


def _check_pid(pid: object, name: str = "target") -> int:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(
            f"{name} must be a pid, subprocess.Popen, multiprocessing.Process or Child, "
            f"not {type(pid).__name__}"
        )
    if pid <= 0:
        raise ValueError(f"{name} must be a pid > 0, got {pid} (0 and negative pids name process groups)")
    return int(pid)


def _is_mp_process(target: object) -> TypeGuard[Any]:  # a BaseProcess, whose private fields we read
    import multiprocessing.process as mpp

    return isinstance(target, mpp.BaseProcess)


def _is_forkserver_popen(popen: object) -> bool:
    try:
        from multiprocessing import popen_forkserver
    except ImportError:  # pragma: no cover - platforms without forkserver
        return False
    return isinstance(popen, popen_forkserver.Popen)


def watch(target: Target) -> Child:
    """Watch a child: an ``int`` pid, a ``subprocess.Popen``, a started
    ``multiprocessing.Process`` (or a Child, returned as is)."""
    w = _watcher
    if isinstance(target, Child):
        return target
    foreign = False
    obj: Any = None
    if isinstance(target, _Popen):
        pid, obj = target.pid, target
    elif _is_mp_process(target):
        _check_mp_process(target, "target")
        popen = target._popen
        pid, obj = target.pid, target
        foreign = _is_forkserver_popen(popen)  # a child of the fork server, not ours
    else:
        pid = _check_pid(target)
    w._check_open()
    with w.lock:
        existing = w.children.get(pid)
        if existing is not None:
            return existing
        existing = _lost_child(obj)
        if existing is not None:
            return existing  # its pid may name another child of ours by now
        child = Child(pid, obj, w, foreign)
        rc = _target_returncode(obj)
        if rc is not None:
            child._status = ExitStatus._from_returncode(pid, rc)
            return child
        if not foreign:
            try:
                _core.peek(pid)
            except ChildProcessError:
                raise ChildProcessError(f"target: pid {pid} is not a child of this process") from None
        w.register(child)
        w.try_reap(child)  # it may have exited already: nothing would announce it
        return child


def _validate(targets: Iterable[Target] | Target, name: str = "targets") -> list[Any]:
    """Check every target (raising a clear error naming ``name``) without
    watching or signalling any: the first half of "nothing half-done"."""
    if isinstance(targets, (int, Child, _Popen)) or _is_mp_process(targets):
        targets = [targets]
    if not isinstance(targets, Iterable) or isinstance(targets, (str, bytes)):
        raise TypeError(f"{name} must be an iterable of children, not {type(targets).__name__}")
    items = list(targets)
    w = _watcher
    for t in items:
        if isinstance(t, Child):
            if t._watcher.closed and not t._done():
                raise ChildProcessError(f"{name}: {t!r} is a child of the parent process, not of this one")
            continue
        if isinstance(t, _Popen):
            if t.returncode is None and t.pid not in w.children and _lost_child(t) is None:
                _check_child(t.pid, name)
            continue
        if _is_mp_process(t):
            _check_mp_process(t, name)
            continue
        pid = _check_pid(t, name)
        if pid not in w.children:
            _check_child(pid, name)
    return items


def _check_mp_process(t: Any, name: str) -> None:
    if getattr(t, "_closed", False):
        raise ValueError(f"{name}: {t!r} is closed")
    if getattr(t, "_popen", None) is None:
        raise ValueError(f"{name}: {t!r} is not started")
    if t._parent_pid != os.getpid():
        raise ChildProcessError(f"{name}: {t!r} was started by another process")


def _check_child(pid: int, name: str) -> None:
    try:
        _core.peek(pid)
    except ChildProcessError:
        raise ChildProcessError(f"{name}: pid {pid} is not a child of this process") from None


def _as_children(targets: Iterable[Target] | Target, name: str = "targets") -> list[Child]:
    # Validate every item before watching any: nothing half-done.
    return [watch(t) for t in _validate(targets, name)]


def wait(
    children: Iterable[Target],
    timeout: float | None = None,
    return_when: str = FIRST_EXITED,
) -> tuple[set[Child], set[Child]]:
    """Wait until the first (FIRST_EXITED) or all (ALL_EXITED) of ``children``
    have exited, or timeout seconds pass; return ``(done, pending)`` sets.
    Event-driven (never sleeps in a loop), GIL released while blocked."""
    if return_when not in (FIRST_EXITED, ALL_EXITED):
        raise ValueError(f"return_when must be FIRST_EXITED or ALL_EXITED, got {return_when!r}")
    t = _core.check_timeout(timeout)
    kids = _as_children(children, "children")
    if kids:
        w = _watcher
        if return_when == FIRST_EXITED:
            seen, found = -1, False

            def pred() -> bool:
                # Scan only when some child has finished since the last look.
                nonlocal seen, found
                if w.finished != seen:
                    seen = w.finished
                    for c in kids:
                        if c._status is not None or c._lost:
                            found = True
                            break
                return found
        else:
            pending_kids = list(kids)

            def pred() -> bool:
                # One running child is enough to say no; each finished one is
                # popped once: O(len(kids)) over the whole wait.
                while pending_kids and pending_kids[-1]._done():
                    pending_kids.pop()
                return not pending_kids

        w.wait_until(pred, t)
    done: set[Child] = set()
    pending: set[Child] = set()
    for c in kids:
        (done if c._status is not None or c._lost else pending).add(c)
    return done, pending


def reap() -> list[ExitStatus]:
    """Reap every exited child of this process (``waitpid(-1, WNOHANG)`` in one
    C loop): the supervisor / PID-1 opt-in that steals. Statuses of watched
    children still reach their Child, Popen and Process objects."""
    w = _watcher
    # Watched children first, by the non-stealing path (Popen locks respected).
    w.poll_now()
    out: list[ExitStatus] = []
    with w.lock:
        for pid, status, ut, st, rss in _core.reap_all():
            es = ExitStatus._from_wait(pid, status, ut, st, rss)
            out.append(es)
            c = w.children.get(pid)
            if c is None:
                continue
            t = c._target
            if isinstance(t, _Popen):
                if t.returncode is None:
                    t.returncode = es.returncode
            elif t is not None and t._popen.returncode is None:
                t._popen.returncode = es.returncode
            w.finish(c, es)
    return out


def set_subreaper(on: bool = True) -> None:
    """Become (or stop being) the reaper of orphaned descendants
    (Linux ``PR_SET_CHILD_SUBREAPER``); NotImplementedError elsewhere."""
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, not {type(on).__name__}")
    _core.set_subreaper(on)


@dataclass
class StopReport:
    """What graceful_stop did: who exited within the grace period, who was
    killed, how long it took, and every target's returncode (None if lost)."""

    exited: list[Child] = field(default_factory=list)
    killed: list[Child] = field(default_factory=list)
    elapsed: float = 0.0
    returncodes: dict[int, int | None] = field(default_factory=dict)
    alive: list[Child] = field(default_factory=list)  # still running (kill_after=False)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgrp) of a live (non-zombie) pid from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[1]), int(fields[2])


class _Members:
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
        st = _proc_stat(pid)
        if st is None or not accept(*st):
            os.close(fd)
            return False
        try:
            _core.poller_add_fd(self.fileno(), fd, pid)
        except BaseException:
            os.close(fd)
            raise
        self.fds[pid] = fd
        self.pgid_of[pid] = st[1]
        return True

    def _candidates(self) -> list[tuple[int, int, int]]:
        out = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in self.fds or pid in self.exclude:
                continue
            st = _proc_stat(pid)
            if st is not None and st[1] in self.pgids:
                out.append((pid, st[0], st[1]))
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

    def collect(self, timeout: float) -> None:
        """Forget members that exited, waiting up to timeout (< 0 forever) for one."""
        if not self.fds:
            return
        for pid in _core.poller_wait(self.fileno(), timeout):
            fd = self.fds.pop(pid, -1)
            self.pgid_of.pop(pid, None)
            if fd >= 0:
                os.close(fd)  # also leaves the poller

    def wait_all(self, deadline: float | None) -> bool:
        while self.fds:
            remaining = -1.0
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
            self.collect(remaining)
        return True

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.pgid_of.clear()
        if self.pfd >= 0:
            os.close(self.pfd)
            self.pfd = -1


def _target_done(t: Any) -> bool:
    if isinstance(t, Child):
        return t._done()
    if isinstance(t, int):
        c = _watcher.children.get(t)
        return c is not None and c._done()
    return _target_returncode(t) is not None


class _StopRun:
    """One graceful_stop, in phases shared by the blocking and asyncio versions:
    validate everything (raising before any signal), signal all at once, wait
    until one shared deadline, escalate, report."""

    def __init__(
        self,
        targets: Iterable[Target] | Target,
        timeout: float | None,
        sig: int,
        kill_after: bool,
        group: bool,
    ) -> None:
        self.timeout = _core.check_timeout(timeout)
        self.sig = check_signal(sig, "signal")
        if not isinstance(kill_after, bool):
            raise TypeError(f"kill_after must be a bool, not {type(kill_after).__name__}")
        if not isinstance(group, bool):
            raise TypeError(f"group must be a bool, not {type(group).__name__}")
        items = _validate(targets)
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
        self.kill_after = kill_after
        self.group = group
        self.members = _Members({c.pid for c in self.kids}) if group else None
        self.killed: list[Child] = []
        self.escalated = False
        self.start = 0.0
        self.deadline: float | None = None

    def begin(self) -> None:
        self.start = time.monotonic()
        if self.timeout >= 0:
            self.deadline = self.start + self.timeout
        self._signal(self.kids, self.sig)

    def _signal(self, kids: list[Child], sig: int) -> None:
        if self.members is None:
            for c in kids:
                c.send_signal(sig)
            return
        w = _watcher
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
                    c._send_locked(sig)
            for g in pgids:
                try:
                    os.killpg(g, sig)
                except ProcessLookupError:
                    pass
        self.members.signal(sig, skip=pgids)

    def pending(self) -> list[Child]:
        return [c for c in self.kids if not c._done()]

    def escalate(self) -> None:
        """SIGKILL what is still running (leaders and pinned members)."""
        first, self.escalated = not self.escalated, True
        late = self.pending()
        if late:
            self._signal(late, _signal.SIGKILL)
            if first:
                with _watcher.lock:
                    _watcher.escalations += len(late)
                self.killed = late
        elif self.members is not None:
            self.members.signal(_signal.SIGKILL)
        if self.members is not None:
            for _ in range(16):  # members forking while we kill: bounded
                if not self.members.scan_descendants():
                    break
                self.members.signal(_signal.SIGKILL)

    def report(self) -> StopReport:
        killed = set(self.killed)
        r = StopReport()
        r.killed = list(self.killed)
        r.exited = [c for c in self.kids if c._done() and c not in killed]
        r.alive = [c for c in self.kids if not c._done()]
        r.elapsed = time.monotonic() - self.start
        r.returncodes = {c.pid: (c._status.returncode if c._status else None) for c in self.kids}
        return r

    def close(self) -> None:
        if self.members is not None:
            self.members.close()


def graceful_stop(
    targets: Iterable[Target] | Target,
    timeout: float | None = 10.0,
    *,
    signal: int = _signal.SIGTERM,
    kill_after: bool = True,
    group: bool = False,
) -> StopReport:
    """Signal every target at once, wait for all until one shared deadline
    (returning as soon as all have exited), SIGKILL those still running
    (``kill_after``), reap every one. Every target is checked first: a bad
    one raises before anything is signalled. ``group=True`` signals each
    target's process group and waits for (and kills) its other members too."""
    run = _StopRun(targets, timeout, signal, kill_after, group)
    try:
        run.begin()
        grace = None if run.deadline is None else max(0.0, run.deadline - time.monotonic())
        wait(run.kids, grace, ALL_EXITED)
        if run.members is not None and not run.pending():
            run.members.wait_all(run.deadline)
        if run.kill_after and (run.pending() or (run.members is not None and run.members.fds)):
            run.escalate()
            wait(run.kids, None, ALL_EXITED)
            if run.members is not None:
                run.members.wait_all(None)
        return run.report()
    finally:
        run.close()


def terminate(targets: Iterable[Target] | Target, timeout: float | None = None) -> StopReport:
    """SIGTERM every target now, then wait (up to timeout; None: until they
    exit) and reap. Never escalates: see graceful_stop for that."""
    return graceful_stop(targets, timeout, kill_after=False)


def kill(targets: Iterable[Target] | Target) -> StopReport:
    """SIGKILL every target now, then reap."""
    return graceful_stop(targets, None, signal=_signal.SIGKILL, kill_after=False)


def counters() -> dict[str, Any]:
    """What fastreap has done in this process: signals its handler saw (by
    number), children reaped, escalations to SIGKILL, children lost to
    another reaper, and degraded SIGCHLD scans."""
    from ._flags import handled_signals

    w = _watcher
    return {
        "signals": handled_signals(),
        "reaped": w.reaped,
        "escalations": w.escalations,
        "lost": w.lost,
        "degraded_scans": w.degraded_scans,
        "loss_checks": w.loss_checks,
        "watched": len(w.children),
        "pidfds": w.pidfds,
        "backend": "kqueue" if _core.IS_APPLE else ("pidfd" if w.use_pidfd else "sigchld"),
    }


def _after_fork_in_child() -> None:
    global _watcher
    old = _watcher
    new = _Watcher()
    new.sigchld_installed = old.sigchld_installed
    _watcher = new  # first: whatever happens below, the child has a working watcher
    old.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
