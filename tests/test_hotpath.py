"""The pidfd hot path: batch reap, oneshot registrations, one-call watch."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

import fastreap
from fastreap import _core, _watcher


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
        assert r[:3] == (p.pid, 5, False)
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
