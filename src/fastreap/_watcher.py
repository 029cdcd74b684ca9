"""The process-wide watcher: registry of watched children, one lock, the
leader/follower wait, and the fork rule, over three backends:

* ``_backend_pidfd``: a pidfd per child in one epoll set (Linux >= 5.3), up
  to a descriptor budget;
* ``_backend_sigchld``: the C SIGCHLD handler's ring of sender pids, with its
  amortised loss check (beyond the budget, old kernels, ``FASTREAP_BACKEND=sigchld``);
* ``_backend_kqueue``: EVFILT_PROC (macOS).

Everything waits in one poller (epoll or kqueue) whose tokens are a child's
pid (its pidfd, sentinel or kqueue event), ``WAKE`` (the global wake-up
descriptor the C handler pokes) or ``CHECK`` (the loss-check timer).

Never stealing: only watched pids are reaped, and the status is written back
into the child's Popen/Process through its owner adapter (``_owners``).

The internal protocol for the front-ends (``aio``, the CLI, ``_stop``):
``current()``, then ``fileno()`` (readable when a watched child may have
exited), ``poll_now()`` (reap what is ready, never blocking),
``wait_until(pred, deadline)``, ``subscribe(child, cb)`` / ``unsubscribe``,
``done(child)`` (lock-free: finished, reaped or lost).

One thread at a time waits in the poller with the GIL and the lock released
(the leader); other waiters sleep on the condition until it has news.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import _core, _fork, _status
from ._backend_kqueue import KqueueBackend
from ._backend_pidfd import PidfdBackend
from ._backend_sigchld import CHECK, SigchldBackend
from ._deadline import Deadline
from ._status import ExitStatus

if TYPE_CHECKING:
    from ._children import Child

WAKE = -1  # poller token of the global wake-up descriptor


def _backend() -> str:
    # Set but empty counts as unset, as for most tools' variables.
    b = os.environ.get("FASTREAP_BACKEND") or "auto"
    if b not in ("auto", "pidfd", "sigchld"):
        raise ValueError(f"FASTREAP_BACKEND must be auto, pidfd or sigchld, not {b!r}")
    return b


BACKEND = _backend()


class Watcher:
    """The process-wide registry of watched children (see the module docstring)."""

    def __init__(self, use_pidfd: bool | None = None) -> None:
        self.gen = _fork.generation()  # the process it belongs to (see closed)
        self.lock = _core.Lock()  # a threading.Lock whose take on the leader's wake-up is one C call
        # (Condition takes any lock with acquire/release; typeshed names only the threading ones.)
        self.cond = threading.Condition(self.lock)  # type: ignore[arg-type]
        self.leading = False
        self.leader = 0  # the leading thread's id (while leading)
        self.nested = 0  # waits and polls by a signal handler inside its own thread's lead
        self._closed = False
        self.pfd = -1
        self.children: dict[int, Child] = {}
        self.pidfd_of: dict[int, int] = {}  # pid -> pidfd (polled, or signal-only for fork-server children)
        self.callbacks: dict[Child, list[Callable[[Child], None]]] = {}
        self.followers = 0  # threads in cond.wait() behind the leader
        self.finished = 0  # children finished (reaped or lost): wait() predicates' generation
        self.escalations = 0
        self.lost = 0
        enabled = BACKEND != "sigchld" and _core.IS_LINUX and _core.have_pidfd()
        if use_pidfd is not None:
            enabled = enabled and use_pidfd
        self.pidfd = PidfdBackend(self, enabled)
        self.sigchld = SigchldBackend(self)
        self.kqueue = KqueueBackend(self) if _core.IS_APPLE else None

    @property
    def closed(self) -> bool:
        """Closed, or a parent's (we are a fork child of the process that made it)."""
        return self._closed or self.gen != _fork.generation()

    @property
    def reaped(self) -> int:
        """Children finished with a status (the others were lost)."""
        return self.finished - self.lost

    @property
    def backend(self) -> str:
        return "kqueue" if _core.IS_APPLE else ("pidfd" if self.pidfd.enabled else "sigchld")

    # -- the front-ends' protocol -------------------------------------------

    def fileno(self) -> int:
        """The poller: readable when a watched child may have exited (then call poll_now)."""
        self.check_open()
        with self.lock:
            return self.poller()

    @staticmethod
    def done(child: Child) -> bool:
        """Finished (reaped or lost); reads only, no lock needed."""
        return child._done()

    @staticmethod
    def subscribe(child: Child, cb: Callable[[Child], None]) -> bool:
        """Call cb(child) when it finishes (in the reaping thread, with the
        lock of the watcher that has it held); False, and nothing
        registered, if it already has."""
        w = child._watcher  # the one that will finish it (a swapped or pre-fork one too)
        with w.lock:
            if child._done():
                return False
            w.callbacks.setdefault(child, []).append(cb)
            return True

    @staticmethod
    def unsubscribe(child: Child, cb: Callable[[Child], None]) -> None:
        w = child._watcher
        with w.lock:
            cbs = w.callbacks.get(child)
            if cbs is None:
                return
            with contextlib.suppress(ValueError):
                cbs.remove(cb)
            if not cbs:
                del w.callbacks[child]

    # -- registration (lock held) ------------------------------------------

    def poller(self) -> int:
        if self.pfd < 0:
            self.pfd = _core.poller_open()
            _core.poller_add_fd(self.pfd, _core.global_wake_fd(), WAKE)
        return self.pfd

    def register(self, child: Child) -> None:
        pfd = self.poller()
        pid = child.pid
        owner = child._owner
        if owner.foreign:
            # A forkserver child is the server's, not ours: its Popen sentinel
            # becomes readable once the server has reaped it and sent the code.
            # A pidfd, where there is one, serves only to signal it safely.
            self.pidfd.open_for_signals(pid)
            _core.poller_add_fd(pfd, owner.sentinel(), pid)  # type: ignore[attr-defined]
        elif self.pidfd.register(pid):
            pass
        elif self.kqueue is not None:
            self.kqueue.register(pid)
        else:
            self.sigchld.register(pid, owner.direct)
        self.children[pid] = child

    def add(self, child: Child) -> None:
        """Register a new child and reap it if it has exited already (nothing
        would announce that). ChildProcessError, and nothing registered, if
        it is not (or no longer) a child of this process. On the pidfd path
        registration and the check are one C call (``register_peek``)."""
        pid = child.pid
        if not child._owner.foreign:
            peeked = self.pidfd.register_peek(pid)
            if peeked is not False:
                self.children[pid] = child
                if peeked is not None:
                    self.try_reap(child, True)  # peeked: exited (its pidfd says so too)
                return
            _core.peek(pid)  # ChildProcessError if not ours
        self.register(child)
        self.try_reap(child)

    def _forget(self, child: Child) -> None:
        pid = child.pid
        self.children.pop(pid, None)
        if self.sigchld.starts:
            self.sigchld.forget(pid)
        if child._owner.foreign:
            try:
                _core.poller_del_fd(self.pfd, child._owner.sentinel())  # type: ignore[attr-defined]
            except (OSError, ValueError):
                pass  # the Process was closed: its sentinel (and registration) are gone
            fd = self.pidfd_of.pop(pid, -1)  # forgotten before closed: see PidfdBackend.forget
            if fd >= 0:
                os.close(fd)
        elif not self.pidfd.forget(pid) and self.kqueue is not None:
            self.kqueue.forget(pid)

    def finish(self, child: Child, status: ExitStatus | None) -> None:
        """Record a child's end (lock held) and wake everyone waiting."""
        self._forget(child)
        self._finished(child, status)

    def _finished(self, child: Child, status: ExitStatus | None) -> None:
        """finish() once the child is out of the books (``_forget``)."""
        self.finished += 1
        child._finish(status)
        if status is None:
            self.lost += 1
            child._owner.mark_lost(child)
        if self.followers:
            self.cond.notify_all()
        callbacks = self.callbacks.pop(child, None) if self.callbacks else None
        if callbacks:
            for cb in callbacks:
                try:
                    cb(child)
                except Exception:
                    # Like concurrent.futures: one failing callback must not
                    # stop the others, nor surface in an unrelated waiter.
                    # (logging only here: its at-fork hook would run in every fork child)
                    import logging

                    logging.getLogger("fastreap").exception(
                        "fastreap: done callback %r for %r raised", cb, child
                    )

    # -- reaping and signalling (lock held) ---------------------------------

    def try_reap(self, child: Child, exited: bool = False) -> bool:
        """Reap ``child`` if it has exited, writing its status back into its
        owner; return whether it is done. ``exited``: its pidfd said so, and
        the peek is skipped where the owner allows (Owner.may_skip_peek)."""
        if child._done():
            return True
        owner = child._owner
        pid = child.pid
        if owner.foreign:
            rc = owner.poll()  # type: ignore[attr-defined]
            if rc is None:
                return False
            self.finish(child, _status.from_returncode(pid, rc))
            return True
        rc = owner.reaped_by_owner()
        if rc is not None:
            self.finish(child, _status.from_returncode(pid, rc))
            return True
        pidfd = self.pidfd_of.get(pid, -1)
        early = None
        if not exited or not owner.may_skip_peek():
            try:
                peeked = _core.peek(pid, pidfd)
            except ChildProcessError:
                self.lose(child)
                return True
            if peeked is None:
                return False
            if not self.sigchld.same_process(pid):
                # The pid was reaped behind our back and now names another child
                # of ours (SIGCHLD path, no pidfd): its status is not ours to take.
                self.lose(child)
                return True
            early = _status.from_siginfo(pid, *peeked)
            owner.publish_early(early)
        with owner.lock():
            rc = owner.reaped_by_owner()
            if rc is not None:
                self.finish(child, _status.from_returncode(pid, rc))
                return True
            status = self._reap(pid, pidfd, early)
            if status is _status.RUNNING:
                return False
            if status is not None:
                owner.publish(status)
        self.finish(child, status)
        return True

    def lose(self, child: Child) -> None:
        """Someone else reaped it: record what its owner found, or lost."""
        rc = child._owner.found()
        self.finish(child, None if rc is None else _status.from_returncode(child.pid, rc))

    @staticmethod
    def _reap(pid: int, pidfd: int, early: ExitStatus | None) -> ExitStatus | None:
        """Reap it (through its pidfd when it has one: that names the very
        process, never a reused pid) with rusage: its status; ``early`` (from
        a peek) if someone reaped it since (no rusage then), None (lost) if
        it had no peek; RUNNING if it has not exited after all."""
        r = _core.reap_one(pid, pidfd)
        if r is None:  # ECHILD
            return early
        if r is False:  # cannot happen after a successful peek or pidfd event
            return _status.RUNNING if early is None else early
        return r

    def signal_many(self, kids: list[Child], sig: int) -> None:
        """send_locked for each of kids (all watched here; lock held): those
        with a pidfd in one C loop (graceful_stop's SIGTERM and SIGKILL to
        many), the others one by one. Like send_locked, an exited but not yet
        reaped child is no error; any other error is raised after all others
        have been signalled."""
        if self.closed:
            return
        fds: list[int] = []
        rest: list[Child] = []
        pidfd_of = self.pidfd_of
        for c in kids:
            if c._done():
                continue
            fd = pidfd_of.get(c.pid, -1)
            if fd >= 0:
                fds.append(fd)
            else:
                rest.append(c)
        errs = _core.signal_batch(fds, sig) if fds else []
        for c in rest:
            self.send_locked(c, sig)
        for e in errs:
            if e and e != errno.ESRCH:
                raise OSError(e, os.strerror(e))

    def send_locked(self, child: Child, sig: int) -> None:
        """Signal child (pid-reuse safe); nothing once it is finished."""
        if child._done() or self.closed:
            return
        pid = child.pid
        pidfd = self.pidfd_of.get(pid, -1)
        try:
            if pidfd >= 0:
                _core.pidfd_send_signal(pidfd, sig)
            elif not child._owner.foreign:
                # Unreaped by us, so the pid is reused only if someone else
                # reaped it: the start time tells (left: the instant between
                # this check and kill()). The lock keeps our own reaper off.
                if not self.sigchld.same_process(pid):
                    self.lose(child)
                    return
                os.kill(pid, sig)
            elif child._owner.poll() is None:  # type: ignore[attr-defined]
                # A forkserver child without pidfd: only while its sentinel says it runs.
                os.kill(pid, sig)
        except ProcessLookupError:
            pass  # exited, not yet reaped

    def process(self, tokens: list[int]) -> None:
        """Act on the poller's ready tokens (lock held). Pidfds are registered
        oneshot: one whose child is left unfinished (an exception midway, Ctrl-C)
        is armed again so that its exit is reported once more."""
        try:
            self._process(tokens)
        except BaseException:
            self.pidfd.rearm(tokens)
            raise

    def _process(self, tokens: list[int]) -> None:
        if len(tokens) == 1:
            # The one-exit hot path: no batch machinery. (WAKE and CHECK
            # are negative: never a child's pid.)
            c = self.children.get(tokens[0])
            if c is not None and c._owner.direct and _core.reap_direct(self, c):
                return
        batch: list[Child] | None = None
        for tok in tokens:
            if tok >= 0:
                c = self.children.get(tok)
                if c is None:
                    continue
                if c._owner.batch and tok in self.pidfd_of:
                    # A readable pidfd: it has exited. Reaped below with the
                    # others that are ready, in one C call.
                    if batch is None:
                        batch = [c]
                    else:
                        batch.append(c)
                elif not self.try_reap(c, tok in self.pidfd_of):
                    self.pidfd.rearm((tok,))  # not finished after all: keep its exit reported
            elif tok == WAKE:
                _core.chld_wake(self)  # drains it, then SigchldBackend.on_ring, compiled
            elif tok == CHECK:
                self.sigchld.on_check_timer()
        if batch is not None:
            self.reap_batch(batch)

    def reap_batch(self, kids: list[Child]) -> None:
        """Reap children whose pidfd said "exited" (lock held): one C call
        reaps them all through their pidfds (with rusage, decoded in C), then
        one pass publishes. Owners take part as try_reap treats them: a plain
        pid as is; a Popen whose _waitpid_lock is free, held across the reap;
        a Process (``Owner.peek_first``) after a WNOWAIT peek whose status is
        published before the reap (its join() has no lock: one racing us
        finds ECHILD and reads that), and kept if a racing join() reaps it
        first. A Popen whose lock is busy goes through try_reap."""
        todo: list[Child] = []
        locks: list[Any] = []
        early: dict[int, ExitStatus] = {}
        pidfd_of = self.pidfd_of
        try:
            for c in kids:
                if c._done():
                    continue
                owner = c._owner
                if owner.peek_first:
                    try:
                        peeked = _core.peek(c.pid, pidfd_of.get(c.pid, -1))
                    except ChildProcessError:
                        self.lose(c)  # its join() reaped it: what it found, or lost
                        continue
                    if peeked is None:  # not exited after all: keep its exit reported
                        self.pidfd.rearm((c.pid,))
                        continue
                    es = _status.from_siginfo(c.pid, *peeked)
                    owner.publish_early(es)
                    early[c.pid] = es
                    todo.append(c)
                    continue
                lk = owner.trylock()
                if lk is None:
                    self.try_reap(c, True)  # its own wait() holds the lock: no stalling here
                    continue
                if lk is not True:
                    rc = owner.reaped_by_owner()
                    if rc is not None:
                        lk.release()
                        self.finish(c, _status.from_returncode(c.pid, rc))
                        continue
                    locks.append(lk)
                todo.append(c)
            if not todo:
                return
            # The C loop closes the pidfd of each one it reaps (their oneshot
            # registrations were reported: no EPOLL_CTL_DEL). Out of the books
            # first: the GIL is released meanwhile, and a fork then must not
            # find numbers that are closed (or reused) by the time it runs.
            pids = [c.pid for c in todo]
            fds = self.pidfd.take(pids)
            results = _core.reap_batch(pids, fds, True)
            done: list[tuple[Child, ExitStatus | None]] = []
            for c, fd, r in zip(todo, fds, results, strict=True):
                if r is False:
                    # Not exited (cannot happen after a pidfd event) or an
                    # unexpected error: its pidfd is still open; keep watching.
                    self.pidfd.give_back(c.pid, fd)
                    continue
                if r is None:
                    # Reaped behind our back (a Process's join(), racing):
                    # the peeked status if there was a peek, else lost.
                    done.append((c, early.get(c.pid)))
                    continue
                c._owner.publish(r)
                done.append((c, r))
        finally:
            for lk in locks:
                lk.release()
        for c, st in done:
            self.finish(c, st)

    # -- waiting -------------------------------------------------------------

    def wait_until(self, pred: Callable[[], bool], deadline: Deadline) -> bool:
        """Block until pred() (checked with the lock held) or the deadline.
        One thread at a time waits in the poller with the GIL and the lock
        released; the others sleep on the condition until it has news."""
        sigchld = self.sigchld
        if self.lock.owned() and deadline.remaining() == 0.0:
            # A signal handler that interrupted fastreap's own code in this
            # thread (the lock held): a look answers from what is known (a
            # wait raises, in Lock.acquire).
            return pred()
        with self.lock:
            self.check_open()
            # A signal handler that waits, run by the leader inside its own
            # lead (with the lock free): that leader is suspended until we
            # return, so nobody would wake a follower. Lead in its place.
            nested = self.leading and self.leader == threading.get_ident()
            if nested:
                self.nested += 1  # (the news we take may be the leader's: it re-checks)
            other_leads = self.leading and not nested
            if sigchld.check_next and not other_leads:
                sigchld.run_deferred()  # the check the last exits made due (_backend_sigchld)
            if (
                not pred()
                and self.pfd >= 0
                and not other_leads
                and (sigchld.starts or deadline.remaining() == 0.0)
            ):
                # Collect exits that already happened (timeout 0 must see them,
                # also those whose SIGCHLD was coalesced: run an owed check).
                # With only pidfd/kqueue children and time to wait, the
                # leader's own wait (_core.lead) below sees the same at once; a
                # wait with time left leaves an owed check to its timer (armed
                # for when SIGCHLDs are quiet, 5 ms): run here, its scan of
                # every child (the kernel's, for the zombie peek) would land
                # in each back-to-back wait and make an exit's cost grow with
                # the number of live children.
                self.process(_core.poller_wait(self.pfd, 0.0))
                if sigchld.check_next:
                    sigchld.run_deferred()
                elif sigchld.check_owed and not pred() and deadline.remaining() == 0.0:
                    sigchld.loss_check()
            while not pred():
                remaining = deadline.remaining()  # -1.0: forever
                if remaining == 0.0:
                    return False
                if self.leading and not nested:
                    self.followers += 1
                    try:
                        self.cond.wait(None if remaining < 0 else remaining)
                    finally:
                        self.followers -= 1
                    continue
                if sigchld.check_next:
                    # Due by count at the last exit (deferred out of its
                    # waiter's way): before blocking, so that a child whose
                    # SIGCHLD it swallowed is not left to the timer.
                    sigchld.run_deferred()
                    continue
                pfd = self.poller()
                no_timer = sigchld.no_timer  # (set once, when the timer cannot be had)
                if no_timer:
                    remaining = sigchld.cap(remaining)  # the periodic loss check, without a timer
                # Release the lock, wait in the poller, take the lock back
                # (Ctrl-C cannot leave it released), stop leading, wake the
                # followers: compiled, with the hot path of one plain pid's
                # pidfd saying "exited" (reaped and finished there: None).
                tokens = _core.lead(self, pfd, remaining)
                if tokens is not None:
                    self.process(tokens)
                if no_timer:
                    sigchld.tick()
            return True

    def poll_now(self) -> None:
        """Reap whatever is ready without blocking (for is_alive and asyncio).
        Not while another thread leads: draining the wake-up descriptor under
        it would leave it asleep with its news consumed; it reaps promptly.
        (A signal handler inside this thread's own lead may: see wait_until.)"""
        if self.lock.owned():
            return  # a signal handler inside fastreap's own code in this thread: nothing to take
        with self.lock:
            if self.pfd < 0 or self.closed:
                return
            if self.leading:
                if self.leader != threading.get_ident():
                    return
                self.nested += 1  # a signal handler inside our own lead (see wait_until)
            self.process(_core.poller_wait(self.pfd, 0.0))
            self.sigchld.run_deferred()

    def check_open(self) -> None:
        if self.closed:
            raise ChildProcessError("this watcher belongs to the parent process (we are a forked child)")

    def own_fds(self) -> set[int]:
        """Its process-lifetime descriptors (poller, loss-check timer)."""
        return {fd for fd in (self.pfd, self.sigchld.tfd) if fd >= 0}

    def close(self) -> None:
        """Close its descriptors and refuse further use. After fork, in the
        child: closing our copies of the parent's pidfds and epoll leaves the
        parent's registrations intact. Also used to retire a watcher that a
        test or benchmark swapped in (with its children all finished)."""
        self._closed = True
        fds = [self.pfd, *self.pidfd.deferred]
        self.pfd = -1
        self.pidfd.deferred.clear()
        fds.extend(self.sigchld.take_fds())
        fds.extend(self.pidfd_of.values())
        self.pidfd_of.clear()
        for fd in dict.fromkeys(fds):  # a fork inside _forget may list one twice
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass  # never abort the fork hook: the child needs its new watcher


def acquire_uninterruptibly(lock: Any) -> BaseException | None:
    """Take lock even if a signal handler raises (Ctrl-C) while we wait for
    it; return that exception for the caller to raise once consistent."""
    pending: BaseException | None = None
    while True:
        try:
            lock.acquire()
            return pending
        except BaseException as e:
            pending = e


def _prepared(w: Watcher) -> Watcher:
    """Open up front what the SIGCHLD path needs (poller, wake-up descriptor,
    loss-check timer), so that it can take over with no descriptor free."""
    if _core.IS_LINUX:
        with contextlib.suppress(OSError):
            w.poller()
            w.sigchld.prepare()
    return w


_current = _prepared(Watcher())
_rebuild_lock = _fork.PerProcess(threading.Lock)


def current() -> Watcher:
    """The process-wide watcher (a swapped one, or in a fork child its own,
    made on first use)."""
    w = _current
    if w.gen != _fork.generation():
        return _after_fork_rebuild()
    return w


def _successor(old: Watcher, use_pidfd: bool | None = None) -> Watcher:
    new = Watcher(use_pidfd)
    new.sigchld.installed = old.sigchld.installed
    return new


@contextlib.contextmanager
def swapped(use_pidfd: bool | None = None) -> Iterator[Watcher]:
    """A fresh process-wide watcher for the duration, closed afterwards (for
    tests and benchmarks; its children must all be finished by then). It
    sizes its pidfd budget from the current RLIMIT_NOFILE; ``use_pidfd=False``
    puts every child on the SIGCHLD path."""
    global _current
    old = current()
    new = _successor(old, use_pidfd)
    _current = new
    try:
        yield new
    finally:
        _current = old
        new.close()
        old.sigchld.installed = new.sigchld.installed


def _after_fork_rebuild() -> Watcher:
    """In a fork child, on first use: a fresh watcher; the parent's one (and
    our copies of its descriptors) are closed. Nothing of this runs at fork
    time (see _fork)."""
    global _current
    with _rebuild_lock.get():
        old = _current
        if old.gen == _fork.generation():
            return old  # another thread of this child made it meanwhile
        new = _successor(old)  # first: whatever happens below, the child has a working watcher
        _current = new
        old.close()
        return new
