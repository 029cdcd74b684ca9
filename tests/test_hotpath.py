"""The pidfd hot path: batch reap, oneshot registrations, one-call watch."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator

import pytest

import fastreap
from fastreap import _core, _procfs, _watcher


@pytest.fixture
def pidfd_watcher() -> Iterator[_watcher.Watcher]:
    """A fresh process-wide watcher on the pidfd path."""
    w = _watcher.Watcher()
    if not w.pidfd.enabled:
        pytest.skip("no pidfd on this kernel")
    w.close()
    with _watcher.swapped(use_pidfd=True) as sw:
        yield sw


def _waiting(code: str) -> subprocess.Popen[bytes]:
    """A shell that runs `code` once its stdin is closed."""
    return subprocess.Popen(["sh", "-c", f"read x; {code}"], stdin=subprocess.PIPE)


def _release_and_settle(ps: list[subprocess.Popen[bytes]]) -> None:
    """Let them go and wait (without reaping) until each has exited."""
    for p in ps:
        assert p.stdin is not None
        p.stdin.close()
    for p in ps:
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)


def test_batch_reap_writes_every_status_back(pidfd_watcher: _watcher.Watcher) -> None:
    """Exits that are ready together are reaped in one pass, each with its own status."""
    ps = [_waiting(f"exit {i}") for i in range(12)] + [_waiting("kill -KILL $$")]
    kids = [fastreap.watch(p) for p in ps]
    _release_and_settle(ps)
    _done, pending = fastreap.wait(kids, 10, fastreap.ALL_EXITED)
    assert not pending
    for i, (p, c) in enumerate(zip(ps[:-1], kids[:-1], strict=True)):
        assert c.returncode == i and p.returncode == i
        assert c.status is not None and c.status.exit_code == i and c.status.signal is None
        assert c.status.user_time is not None and c.status.max_rss is not None
    st = kids[-1].status
    assert st is not None and st.returncode == -signal.SIGKILL and st.signal == signal.SIGKILL
    assert st.exit_code is None and ps[-1].returncode == -signal.SIGKILL
    assert pidfd_watcher.pidfd.count == 0 and not pidfd_watcher.pidfd_of


def test_interrupted_processing_rearms_the_oneshot_pidfd(
    pidfd_watcher: _watcher.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while the reported exits are processed must not lose them:
    the oneshot registration is armed again and the exit reported once more."""
    p = _waiting("exit 7")
    c = fastreap.watch(p)
    _release_and_settle([p])

    def interrupted(kids: list[fastreap.Child]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pidfd_watcher, "reap_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        c.wait(5)
    monkeypatch.undo()
    assert c.wait(5) == 7
    assert p.returncode == 7


def test_watch_non_child_leaves_nothing_registered(pidfd_watcher: _watcher.Watcher) -> None:
    """The one-call registration checks the child before keeping anything."""
    with pytest.raises(ChildProcessError, match="target: pid 1 is not a child"):
        fastreap.watch(1)
    assert pidfd_watcher.pidfd.count == 0 and 1 not in pidfd_watcher.pidfd_of
    assert 1 not in pidfd_watcher.children


def test_watch_already_exited_child_is_finished_at_once(pidfd_watcher: _watcher.Watcher) -> None:
    p = _waiting("exit 4")
    _release_and_settle([p])
    c = fastreap.watch(p)
    assert c.returncode == 4 and p.returncode == 4


def test_reap_batch_and_signal_batch_entry_points() -> None:
    if not _core.have_pidfd():
        pytest.skip("no pidfd on this kernel")
    p = _waiting("exit 5")
    fd = _core.pidfd_open(p.pid)
    try:
        assert _core.reap_batch([p.pid], [fd]) == [False]  # still running
        assert _core.signal_batch([fd], 0) == [0]
        _release_and_settle([p])
        (r,) = _core.reap_batch([p.pid], [fd])
        assert r is not None and r is not False
        assert (r.pid, r.returncode, r.exit_code, r.signal, r.core_dumped) == (p.pid, 5, 5, None, False)
        assert r == fastreap.ExitStatus(p.pid, 5, 5, None, False, r.user_time, r.system_time, r.max_rss)
        assert _core.reap_batch([p.pid], [fd]) == [None]  # gone: ECHILD
        p.returncode = 5
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="same length"):
        _core.reap_batch([1, 2], [-1])
    with pytest.raises(ValueError, match="pid must be > 0"):
        _core.reap_batch([0], [-1])
    assert _core.reap_batch([], []) == []
    assert _core.signal_batch([], 0) == []


def test_reap_one_and_reap_checked_entry_points() -> None:
    """The single-child reap, and the SIGCHLD path's: the start time is
    checked before anything is reaped; statuses come built (ExitStatus)."""
    p, q = _waiting("exit 6"), _waiting("kill -KILL $$")
    start = _core.start_time(p.pid)
    st = _procfs.read_stat(p.pid)
    assert start is not None and st is not None and start == st.start_time
    assert _core.reap_one(p.pid) is False  # still running
    assert _core.reap_checked([p.pid, q.pid], [start, None]) == [False, False]
    _release_and_settle([p, q])
    assert _core.reap_checked([p.pid], [start + 1]) == [None]  # another process by that pid now
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # ... so it was left alone
    (r,) = _core.reap_checked([p.pid], [start])
    assert isinstance(r, fastreap.ExitStatus)
    assert r == fastreap.ExitStatus(p.pid, 6, 6, None, False, r.user_time, r.system_time, r.max_rss)
    assert _core.reap_checked([p.pid], [None]) == [None]  # gone: ECHILD
    assert _core.start_time(p.pid) is None
    k = _core.reap_one(q.pid)
    assert isinstance(k, fastreap.ExitStatus)
    assert (k.returncode, k.exit_code, k.signal) == (-signal.SIGKILL, None, signal.SIGKILL)
    assert _core.reap_one(q.pid) is None
    p.returncode, q.returncode = 6, -signal.SIGKILL
    with pytest.raises(ValueError, match="same length"):
        _core.reap_checked([1, 2], [None])
    with pytest.raises(ValueError, match="pid must be > 0"):
        _core.reap_checked([0], [None])
    assert _core.reap_checked([], []) == []


def test_scan_exited_entry_point() -> None:
    """The SIGCHLD path's sweep: names, in order, the pids that have exited
    (left waitable: nothing reaped) or are not (or no longer) our children;
    a running child is not named."""
    p, q, r = _waiting("exit 3"), _waiting("exit 4"), _waiting("exit 5")
    assert _core.scan_exited([p.pid, q.pid, r.pid]) == []
    _release_and_settle([p, r])
    assert _core.scan_exited([p.pid, q.pid, r.pid]) == [p.pid, r.pid]
    assert os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None  # still a zombie
    assert p.wait() == 3
    assert _core.scan_exited([q.pid, p.pid, r.pid]) == [p.pid, r.pid]  # p: reaped, ECHILD
    assert _core.scan_exited([]) == []
    with pytest.raises(ValueError, match="pid must be > 0"):
        _core.scan_exited([q.pid, 0])
    with pytest.raises(TypeError):
        _core.scan_exited([q.pid, "1"])  # type: ignore[list-item]
    _release_and_settle([q])
    assert (q.wait(), r.wait()) == (4, 5)


def test_graceful_stop_batch_signals_and_reaps(pidfd_watcher: _watcher.Watcher) -> None:
    polite = [subprocess.Popen(["sleep", "30"]) for _ in range(6)]
    stubborn = [
        subprocess.Popen(
            ["sh", "-c", 'trap "" TERM; echo; exec cat'], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(3)
    ]
    for s in stubborn:
        assert s.stdout is not None
        s.stdout.readline()  # its trap is set
    r = fastreap.graceful_stop(polite + stubborn, timeout=0.5)
    assert {c.pid for c in r.killed} == {s.pid for s in stubborn}
    assert all(p.returncode == -signal.SIGTERM for p in polite)
    assert all(s.returncode == -signal.SIGKILL for s in stubborn)
    for s in stubborn:
        assert s.stdin is not None and s.stdout is not None
        s.stdin.close()
        s.stdout.close()


def _exit_on_byte(r: int, code: int) -> None:
    """A multiprocessing target: exit with code once a byte comes."""
    os.read(r, 1)
    os._exit(code)


def _started_processes(n: int) -> tuple[list[multiprocessing.process.BaseProcess], Callable[[], None]]:
    """n started fork Processes, child i exiting with code i once released:
    the second item lets them all go and returns once each has exited (not
    reaped)."""
    ctx = multiprocessing.get_context("fork")
    r, w = os.pipe()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            procs = [ctx.Process(target=_exit_on_byte, args=(r, i)) for i in range(n)]
            for p in procs:
                p.start()
    finally:
        os.close(r)

    def release() -> None:
        try:
            os.write(w, b"x" * n)
        finally:
            os.close(w)
        for p in procs:
            assert p.pid is not None
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)

    return procs, release


def test_batch_reap_takes_processes(pidfd_watcher: _watcher.Watcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """multiprocessing.Process targets are reaped in the one C call too (after
    a peek whose status they get first), each with its own status."""
    batched: list[int] = []
    real = _core.reap_batch

    def spy(pids: list[int], fds: list[int], close: bool = False) -> list[object]:
        batched.extend(pids)
        return real(pids, fds, close)

    monkeypatch.setattr(_core, "reap_batch", spy)
    procs, release = _started_processes(6)
    kids = [fastreap.watch(p) for p in procs]
    release()
    _done, pending = fastreap.wait(kids, 10, fastreap.ALL_EXITED)
    assert not pending
    assert sorted(batched) == sorted(p.pid for p in procs)
    for i, (p, c) in enumerate(zip(procs, kids, strict=True)):
        assert c.returncode == i and p.exitcode == i and not c.lost
        p.join(5)
        assert p.exitcode == i
        p.close()
    assert pidfd_watcher.pidfd.count == 0 and not pidfd_watcher.pidfd_of


def test_batch_reap_keeps_the_peeked_status_of_a_process_its_join_reaped(
    pidfd_watcher: _watcher.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Process's join() has no lock: if it reaps the child between the
    batch's peek and its reap, the child keeps the peeked status (published
    to the Process before the reap), it is not lost."""
    real = _core.reap_batch
    raced: list[int] = []

    def join_wins(pids: list[int], fds: list[int], close: bool = False) -> list[object]:
        for pid in pids:  # what a racing Process.join() does: waitpid, no lock
            os.waitpid(pid, 0)
            raced.append(pid)
        return real(pids, fds, close)

    monkeypatch.setattr(_core, "reap_batch", join_wins)
    procs, release = _started_processes(3)
    kids = [fastreap.watch(p) for p in procs]
    release()
    _done, pending = fastreap.wait(kids, 10, fastreap.ALL_EXITED)
    assert not pending and sorted(raced) == sorted(p.pid for p in procs)
    for i, (p, c) in enumerate(zip(procs, kids, strict=True)):
        assert not c.lost and c.returncode == i and p.exitcode == i
        p.close()
    assert pidfd_watcher.pidfd.count == 0 and not pidfd_watcher.pidfd_of


def _plain(code: str) -> tuple[int, int]:
    """A plain pid (no Popen): a shell that runs `code` once the returned
    descriptor is closed."""
    r, w = os.pipe()
    pid = os.posix_spawn(
        "/bin/sh", ["sh", "-c", f"read x; {code}"], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, r, 0)]
    )
    os.close(r)
    return pid, w


def test_lone_plain_exit_is_reaped_by_the_leader(pidfd_watcher: _watcher.Watcher) -> None:
    """The leader's compiled hot path (_core.lead -> reap_direct): the status
    with rusage, the books emptied, the counters kept, the pidfd closed."""
    w = pidfd_watcher
    pid, go = _plain("exit 5")
    c = fastreap.watch(pid)
    fd = w.pidfd_of[pid]
    finished, reaped = w.finished, w.reaped
    os.close(go)
    assert c.wait(10) == 5
    st = c.status
    assert st is not None and st.pid == pid and st.exit_code == 5 and st.signal is None
    assert st.user_time is not None and st.max_rss is not None and vars(st)["returncode"] == 5
    assert st == _status_like(st) and hash(st) == hash(_status_like(st))
    assert (w.finished, w.reaped, w.lost) == (finished + 1, reaped + 1, 0)
    assert pid not in w.children and not w.pidfd_of and w.pidfd.count == 0
    assert not w.leading and not w.lock.locked()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed (the suite's leak check would see it too)


def _status_like(st: fastreap.ExitStatus) -> fastreap.ExitStatus:
    import dataclasses

    return dataclasses.replace(st)


def test_first_exited_result_sets(pidfd_watcher: _watcher.Watcher) -> None:
    """wait(FIRST_EXITED): one exit moves that child across; a wait that
    finds others already finished reports every finished one."""
    spawned = [_plain("exit 0") for _ in range(3)]
    kids = [fastreap.watch(pid) for pid, _go in spawned]
    os.close(spawned[1][1])
    done, pending = fastreap.wait(kids, 10, fastreap.FIRST_EXITED)
    assert done == {kids[1]} and pending == {kids[0], kids[2]}
    for _pid, go in (spawned[0], spawned[2]):
        os.close(go)
    for pid, _go in (spawned[0], spawned[2]):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    done, pending = fastreap.wait(kids, 10, fastreap.FIRST_EXITED)
    assert kids[1] in done and not pending - {kids[0], kids[2]}
    fastreap.wait(kids, 10, fastreap.ALL_EXITED)
    done, pending = fastreap.wait(kids, 0, fastreap.FIRST_EXITED)
    assert done == set(kids) and pending == set()


def test_first_exited_with_a_retired_watchers_child(pidfd_watcher: _watcher.Watcher) -> None:
    """wait()'s check of its children (one ``closed`` look per watcher) and
    the one watcher they all belong to, which lets wait(FIRST_EXITED) move
    one exit's child across alone: never claimed for a mixed list."""
    from fastreap import _children

    with _watcher.swapped(use_pidfd=True) as retired:
        pid, go = _plain("exit 3")
        old = fastreap.watch(pid)
        os.close(go)
        assert old.wait(10) == 3
    assert retired.closed and old._watcher is retired
    pid, go = _plain("exit 4")
    ours = fastreap.watch(pid)
    pid2, go2 = _plain("exit 5")
    ours2 = fastreap.watch(pid2)
    try:
        assert _children._as_children([ours, ours2], "c") == ([ours, ours2], pidfd_watcher)
        assert _children._as_children([], "c") == ([], None)
        for mixed in ([ours, old, ours2], [old, ours, ours2], [ours, ours2, old]):
            assert _children._as_children(mixed, "c") == (mixed, None)
        # A finished child of a closed watcher is fine (and done at once).
        assert fastreap.wait([ours, old, ours2], 10, fastreap.FIRST_EXITED) == ({old}, {ours, ours2})
        os.close(go)
        assert fastreap.wait([ours, ours2], 10, fastreap.FIRST_EXITED) == ({ours}, {ours2})
        with _watcher.swapped(use_pidfd=True) as inner:
            pid3, go3 = _plain("exit 0")
            stray = fastreap.watch(pid3)
            # Two open watchers (ours is not the current one now): no single one.
            assert _children._as_children([ours2, stray], "c") == ([ours2, stray], None)
            os.close(go3)
            assert stray.wait(10) == 0
        assert inner.closed
    finally:
        os.close(go2)
    # An unfinished child of a closed watcher is refused, wherever it is listed.
    with _watcher.swapped(use_pidfd=True):
        pid4, go4 = _plain("exit 0")
        lone = fastreap.watch(pid4)
    try:
        for bad in ([ours2, lone], [lone, ours2], [stray, lone]):
            with pytest.raises(ChildProcessError):
                fastreap.wait(bad, 0, fastreap.FIRST_EXITED)
    finally:
        os.close(go4)
        os.waitpid(pid4, 0)
    assert ours2.wait(10) == 5


def test_watcher_lock_is_a_lock() -> None:
    """_core.Lock, the watcher's: threading.Lock's behaviour, Condition included."""
    import threading

    lock = _core.Lock()
    assert lock.acquire(False) and lock.locked() and not lock.acquire(False)
    lock.release()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    got: list[bool] = []
    with lock:
        t = threading.Thread(target=lambda: got.append(lock.acquire()))
        t.start()
        t.join(0.1)
        assert t.is_alive() and not got  # blocked while we hold it
    t.join(10)
    assert got == [True] and lock.locked()
    lock.release()
    cond = threading.Condition(lock)  # type: ignore[arg-type]
    with cond:
        threading.Timer(0.05, lambda: _notify(cond)).start()
        assert cond.wait(10)
    assert not lock.locked()


def _notify(cond: object) -> None:
    import threading

    assert isinstance(cond, threading.Condition)
    with cond:
        cond.notify_all()


def test_watcher_lock_blocking_acquire_is_interrupted_by_a_raising_handler() -> None:
    # As threading.Lock: Ctrl-C ends the wait for it (held by another
    # thread); acquire_uninterruptibly still takes it and hands the exception
    # back. Unlike threading.Lock, a blocking take by the thread that holds
    # it raises at once (only re-entry from a done callback or a signal
    # handler can do that; fastreap never releases it from another thread).
    # Run in a child interpreter.
    code = """
import signal, threading, time
from fastreap import _core
from fastreap._watcher import acquire_uninterruptibly
lock = _core.Lock()
held, go = threading.Event(), threading.Event()
def holder():
    lock.acquire(); held.set(); go.wait(); time.sleep(0.3); lock.release()
t = threading.Thread(target=holder); t.start(); held.wait()
def h(*a): raise KeyboardInterrupt
signal.signal(signal.SIGALRM, h)
signal.setitimer(signal.ITIMER_REAL, 0.05)
try:
    lock.acquire()
    print("acquired")
except KeyboardInterrupt:
    print("interrupted", lock.locked(), lock.owned())
go.set()
signal.setitimer(signal.ITIMER_REAL, 0.05)
exc = acquire_uninterruptibly(lock)
print(type(exc).__name__, lock.locked(), lock.owned())
t.join()
try:
    lock.acquire()
except RuntimeError as e:
    print("self", "wait for itself" in str(e), lock.acquire(False))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == [
        "interrupted",
        "True",
        "False",
        "KeyboardInterrupt",
        "True",
        "True",
        "self",
        "True",
        "False",
    ], out.stderr
