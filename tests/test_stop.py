"""Stopping children: graceful_stop, StopReport, terminate, kill."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import fastreap
from conftest import run_program
from fastreap import _children, _core, _procfs


def sh(code: str, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sh", "-c", code], **kw)


def ready_sh(code: str, **kw: Any) -> subprocess.Popen[bytes]:
    """sh -c code, returned once code has printed its first line (its traps are set)."""
    p = sh(code, stdout=subprocess.PIPE, **kw)
    assert p.stdout is not None
    p.stdout.readline()
    p.stdout.close()
    return p


def stubborn(**kw: Any) -> subprocess.Popen[bytes]:
    """A child that ignores SIGTERM (sleep inherits the ignored disposition)."""
    return ready_sh('trap "" TERM; echo; exec sleep 60', **kw)


def polite(**kw: Any) -> subprocess.Popen[bytes]:
    """A child that dies of SIGTERM."""
    return subprocess.Popen(["/bin/sleep", "60"], **kw)


def _sleep() -> None:
    time.sleep(60)


def gone(pid: int) -> bool:
    """pid no longer runs (absent, or a zombie waiting for its parent)."""
    st = _procfs.read_stat(pid)
    return st is None or st.zombie


# ---- the main contract ---------------------------------------------------------


def test_mixed_targets_and_report(backend: str) -> None:
    pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ)
    p = polite()
    child = fastreap.watch(polite())
    mp = multiprocessing.get_context("fork").Process(target=_sleep)
    mp.start()
    hard = stubborn()
    r = fastreap.graceful_stop([pid, p, mp, child, hard], 20)
    assert isinstance(r, fastreap.StopReport)
    assert [c.pid for c in r.killed] == [hard.pid]
    assert sorted(c.pid for c in r.exited) == sorted([pid, p.pid, mp.pid, child.pid])
    assert all(isinstance(c, fastreap.Child) for c in r.exited + r.killed)
    assert r.returncodes == {pid: -15, p.pid: -15, mp.pid: -15, child.pid: -15, hard.pid: -9}
    assert r.alive == []
    assert isinstance(r.elapsed, float) and r.elapsed > 0
    # Written back into their owners, and nothing left to reap.
    assert p.returncode == -15 and mp.exitcode == -15 and hard.returncode == -9
    assert p.wait() == -15 and hard.poll() == -9
    mp.join()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_one_shared_deadline(backend: str) -> None:
    n, grace = 6, 1.0
    kids = [stubborn() for _ in range(n)]
    r = fastreap.graceful_stop(kids, grace)
    # Behaviour, not micro-timing: one deadline for all, not one each.
    assert r.elapsed < n * grace / 2
    assert sorted(c.pid for c in r.killed) == sorted(k.pid for k in kids)
    assert all(k.returncode == -9 for k in kids)


def test_returns_as_soon_as_all_exited(backend: str) -> None:
    kids = [polite() for _ in range(5)] + [ready_sh('trap "exit 4" TERM; echo; while :; do sleep 0.05; done')]
    t0 = time.monotonic()
    r = fastreap.graceful_stop(kids, 60)
    assert time.monotonic() - t0 < 30  # far from the 60 s deadline
    assert r.killed == [] and len(r.exited) == 6
    assert sorted(r.returncodes.values()) == [-15] * 5 + [4]


def test_escalations_counted() -> None:
    before = fastreap.counters()["escalations"]
    fastreap.graceful_stop([stubborn(), stubborn(), polite()], 0.3)
    assert fastreap.counters()["escalations"] == before + 2


def test_kill_after_false_leaves_them_running() -> None:
    kids = [stubborn(), stubborn(), polite()]
    r = fastreap.graceful_stop(kids, 0.3, kill_after=False)
    assert r.killed == []
    assert sorted(c.pid for c in r.alive) == sorted(k.pid for k in kids[:2])
    assert [c.pid for c in r.exited] == [kids[2].pid]
    assert set(r.returncodes) == {kids[2].pid} and r.returncodes[kids[2].pid] == -15
    assert all(c.is_alive() for c in r.alive)
    r2 = fastreap.kill(r.alive)
    assert sorted(r2.returncodes.values()) == [-9, -9]


def test_other_signal_and_zero_timeout() -> None:
    hard = stubborn()
    r = fastreap.graceful_stop([hard], 0.0)  # no grace at all: straight to SIGKILL
    assert r.returncodes == {hard.pid: -9} and len(r.killed) == 1
    q = polite()
    r = fastreap.graceful_stop(q, 30, signal=signal.SIGINT)  # a single target is accepted too
    assert r.returncodes == {q.pid: -signal.SIGINT} and r.killed == []


def test_already_exited_targets() -> None:
    p = sh("exit 3")
    p.wait()
    c = fastreap.watch(sh("exit 5"))
    c.wait()
    r = fastreap.graceful_stop([p, c], 1)
    assert r.returncodes == {p.pid: 3, c.pid: 5} and r.killed == []


def test_terminate_and_kill() -> None:
    kids = [polite(), polite()]
    r = fastreap.terminate(kids)
    assert sorted(r.returncodes.values()) == [-15, -15] and r.killed == []
    hard = [stubborn(), stubborn()]
    r = fastreap.terminate(hard, timeout=0.2)  # never escalates
    assert len(r.alive) == 2 and r.killed == []
    r = fastreap.kill(hard)
    assert list(r.returncodes.values()) == [-9, -9]
    assert all(h.returncode == -9 for h in hard)


# ---- process groups ------------------------------------------------------------


def test_group_stops_the_other_members() -> None:
    # The leader and its background jobs all ignore SIGTERM; they share a new
    # session's group, and only the leader is our child.
    leader = sh(
        'trap "" TERM; sleep 60 & echo $!; sleep 60 & echo $!; wait',
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None
    members = [int(leader.stdout.readline()), int(leader.stdout.readline())]
    leader.stdout.close()
    r = fastreap.graceful_stop([leader], 0.5, group=True)
    assert r.returncodes == {leader.pid: -9} and len(r.killed) == 1
    assert all(gone(m) for m in members)


def test_group_members_get_the_grace_then_sigkill() -> None:
    # As a subreaper (in a child interpreter) the orphaned members come to
    # us, so their real end can be read: the polite one died of SIGTERM, the
    # stubborn one of SIGKILL at the shared deadline.
    p = run_program("stop_group.py", "0.5")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"leader": -15, "killed": 0, "exited": 1, "polite": 15, "stubborn": 9}


def test_group_refuses_our_own_group() -> None:
    p = polite()  # same process group as the test process
    with pytest.raises(ValueError, match="own process group"):
        fastreap.graceful_stop([p], 1, group=True)
    assert p.poll() is None  # not signalled
    fastreap.kill(p)


# ---- bad input: raise before any signal is sent ----------------------------------------


def record_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Record (instead of making) every signalling system call fastreap could use."""
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def rec(name: str) -> Any:
        return lambda *a: calls.append((name, a))

    monkeypatch.setattr(os, "kill", rec("kill"))
    monkeypatch.setattr(os, "killpg", rec("killpg"))
    monkeypatch.setattr(_core, "pidfd_send_signal", rec("pidfd_send_signal"))
    return calls


def test_bad_target_raises_before_any_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    good = [polite(), polite()]
    good_child = fastreap.watch(polite())
    no_signals = record_signals(monkeypatch)
    unstarted = multiprocessing.get_context("fork").Process(target=_sleep)
    bad_cases: list[tuple[Any, type[BaseException], str]] = [
        ("nope", TypeError, "targets must be a pid"),
        (0, ValueError, "pid > 0"),
        (-5, ValueError, "pid > 0"),
        (True, TypeError, "not bool"),
        (1, ChildProcessError, "not a child"),
        (unstarted, ValueError, "not started"),
        (1.5, TypeError, "not float"),
    ]
    try:
        for bad, exc, msg in bad_cases:
            for fn in (fastreap.graceful_stop, fastreap.terminate, fastreap.kill):
                with pytest.raises(exc, match=msg):
                    fn([*good, good_child, bad])
                with pytest.raises(exc, match=msg):
                    fn([bad, *good])
        with pytest.raises(TypeError, match="iterable"):
            fastreap.graceful_stop(object())  # type: ignore[arg-type]
        for kw, exc in (
            ({"timeout": -1}, ValueError),
            ({"timeout": math.nan}, ValueError),
            ({"signal": 0}, ValueError),
            ({"signal": 4096}, ValueError),
            ({"signal": "TERM"}, TypeError),
            ({"kill_after": 1}, TypeError),
            ({"group": "yes"}, TypeError),
        ):
            with pytest.raises(exc):
                fastreap.graceful_stop(good, **kw)
        assert no_signals == []
        assert all(g.poll() is None for g in good) and good_child.is_alive()
    finally:
        monkeypatch.undo()
        for proc in good:
            proc.kill()
            proc.wait()
        good_child.kill()
        good_child.wait()


def test_not_our_child_after_fork() -> None:
    # A Popen inherited across fork is the parent's child: refused in the
    # forked child, clearly, before anything is signalled.
    p = polite()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        code = 1
        try:
            fastreap.graceful_stop([p], 1)
        except ChildProcessError as e:
            code = 0 if "not a child" in str(e) else 2
        except BaseException:
            code = 3
        os.write(w, bytes([code]))
        os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    assert got == b"\x00"
    assert p.poll() is None
    fastreap.kill(p)


def test_public_names() -> None:
    assert fastreap.graceful_stop is _children.graceful_stop
    assert fastreap.StopReport is _children.StopReport
    assert sys.modules["fastreap"].kill is _children.kill
