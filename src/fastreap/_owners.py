"""One adapter per kind of watched target, chosen once in ``watch()``.

A child may belong to an object that also wants its exit status: a
``subprocess.Popen`` (whose ``wait()`` blocks in ``waitpid`` holding
``_waitpid_lock``), a ``multiprocessing.Process`` started by fork or spawn
(whose ``join()`` calls ``waitpid`` with no lock), or one started by the fork
server (a child of the server, not ours: its sentinel says when it ended).
The watcher talks to each through the same few questions:

* ``returncode()``: what the object knows already (None while it does not);
* ``reaped_by_owner()``: a returncode the owner itself found, which makes a
  reap unnecessary (Popen, read under its lock);
* ``lock()``: held around our reap (Popen's ``_waitpid_lock``);
* ``publish(status)``: write the status back so ``wait()``/``poll()``/
  ``exitcode`` stay true; ``publish_early`` before reaping where the owner
  has no lock (multiprocessing);
* ``found()``: after ECHILD, what the owner found if it reaped it itself;
* ``mark_lost(child)``: remember on the object that its child is lost.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from contextlib import AbstractContextManager
from typing import Any, TypeGuard

from ._args import check_mp_process
from ._deadline import Deadline
from ._status import ExitStatus

# Bound once: tests and users monkeypatch subprocess.Popen, and a real Popen
# must still be recognised (CPython's test_subprocess does exactly that).
_Popen = subprocess.Popen
_NO_LOCK = contextlib.nullcontext()


class Owner:
    """A plain pid: nobody else to tell."""

    __slots__ = ("target",)
    foreign = False  # a child of the fork server, not ours
    # Its pidfd's "exited" lets the watcher reap it in a batch (no peek,
    # at most a lock taken without blocking: see trylock).
    batch = True
    # A batch reap peeks it first and publishes the peeked status before
    # reaping (publish_early: an owner with no lock of its own).
    peek_first = False
    # Nobody else to tell or to wait for (a plain pid): the watcher may reap
    # it in one C call and finish it, with none of the questions below.
    direct = True

    def __init__(self, target: Any = None) -> None:
        self.target = target

    def check(self, name: str) -> None:
        """Raise (naming ``name``) if the target cannot be watched."""

    def returncode(self) -> int | None:
        return None

    def reaped_by_owner(self) -> int | None:
        return None

    def may_skip_peek(self) -> bool:
        """Whether a pidfd's "it exited" suffices to reap without a WNOWAIT
        peek: only when waiting on the owner's lock cannot stall."""
        return True

    def lock(self) -> AbstractContextManager[Any]:
        return _NO_LOCK

    def trylock(self) -> Any:
        """For a batch reap: True (no lock needed), the owner's lock taken
        without blocking (the caller releases it), or None if it is busy."""
        return True

    def publish_early(self, status: ExitStatus) -> None:
        pass

    def publish(self, status: ExitStatus) -> None:
        pass

    def found(self) -> int | None:
        return None

    def mark_lost(self, child: Any) -> None:
        pass

    def lost_child(self) -> Any:
        """The Child this object's lost child had (see mark_lost), or None."""
        return None


class _Object(Owner):
    """A Popen or Process: it can remember a lost child."""

    __slots__ = ()
    direct = False

    def mark_lost(self, child: Any) -> None:
        # Its Popen/Process never learns a returncode: remember on it that
        # it is lost, so watching it again cannot pick up whichever process
        # has the pid by now.
        try:
            self.target._fastreap_child = child
        except AttributeError:  # pragma: no cover - a subclass with __slots__
            pass

    def lost_child(self) -> Any:
        return getattr(self.target, "_fastreap_child", None)


class PopenOwner(_Object):
    """A ``subprocess.Popen``: reaped under its ``_waitpid_lock``."""

    __slots__ = ()

    def returncode(self) -> int | None:
        return self.target.returncode  # type: ignore[no-any-return]

    reaped_by_owner = returncode

    def may_skip_peek(self) -> bool:
        # A stale event (a reused pid's token) must not block on a running
        # Popen whose own wait() holds its lock.
        return not self.target._waitpid_lock.locked()

    def lock(self) -> AbstractContextManager[Any]:
        # Popen.wait() holds this lock while it blocks in waitpid(); once the
        # child has exited that call returns at once and we then read what it
        # found instead of stealing the status from under it.
        return self.target._waitpid_lock  # type: ignore[no-any-return]

    def trylock(self) -> Any:
        lk = self.target._waitpid_lock
        return lk if lk.acquire(False) else None

    def publish(self, status: ExitStatus) -> None:
        if self.target.returncode is None:
            self.target.returncode = status.returncode

    def found(self) -> int | None:
        # Popen reaps and stores returncode under _waitpid_lock: once we hold
        # it, a concurrent wait() has finished publishing.
        with self.target._waitpid_lock:
            return self.target.returncode  # type: ignore[no-any-return]


class ProcessOwner(_Object):
    """A ``multiprocessing.Process`` started by fork or spawn: our child."""

    __slots__ = ()
    peek_first = True  # publish_early needs a peek before the reap (a batch reap makes it)

    def check(self, name: str) -> None:
        check_mp_process(self.target, name)

    def returncode(self) -> int | None:
        popen = self.target._popen
        return None if popen is None else popen.returncode

    def may_skip_peek(self) -> bool:
        return False  # publish_early needs the peeked status

    def publish_early(self, status: ExitStatus) -> None:
        # multiprocessing's poll() has no lock: publish the code before
        # reaping so a racing join() that finds ECHILD still sees it.
        self.publish(status)

    def publish(self, status: ExitStatus) -> None:
        if self.target._popen.returncode is None:
            self.target._popen.returncode = status.returncode

    def found(self) -> int | None:
        if self.target._popen is None:
            return None
        # multiprocessing has no lock: its joiner stores returncode right
        # after waitpid() returns, once it gets the GIL. Give it a moment.
        deadline = Deadline.after(0.1)
        while self.target._popen.returncode is None and not deadline.passed():
            time.sleep(0.0005)
        return self.target._popen.returncode  # type: ignore[no-any-return]


class ForkserverOwner(ProcessOwner):
    """A Process started by the fork server: the server's child, not ours.
    Its sentinel becomes readable once the server has reaped it and sent the
    code; nothing is ever reaped (or peeked) here."""

    __slots__ = ()
    foreign = True
    batch = False  # nothing to reap: its sentinel's token goes through try_reap

    def poll(self) -> int | None:
        return self.target._popen.poll()  # type: ignore[no-any-return]  # reads the code from its sentinel

    def sentinel(self) -> int:
        return self.target.sentinel  # type: ignore[no-any-return]


def is_popen(target: object) -> TypeGuard[subprocess.Popen[Any]]:
    return isinstance(target, _Popen)


def is_mp_process(target: object) -> TypeGuard[Any]:  # a BaseProcess, whose private fields we read
    import multiprocessing.process as mpp

    return isinstance(target, mpp.BaseProcess)


def _is_forkserver_popen(popen: object) -> bool:
    # A fork-server Popen exists only once its module is imported: looked up,
    # not imported (an import per watched Process, and ~25 ms the first time).
    mod = sys.modules.get("multiprocessing.popen_forkserver")
    return mod is not None and isinstance(popen, mod.Popen)


_PID = Owner()


def owner_of(target: Any) -> Owner:
    """The adapter for a target already validated as a pid, Popen or started Process."""
    if isinstance(target, _Popen):
        return PopenOwner(target)
    if is_mp_process(target):
        if _is_forkserver_popen(target._popen):
            return ForkserverOwner(target)
        return ProcessOwner(target)
    return _PID
