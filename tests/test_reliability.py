"""Reliability: fastreap keeps working when its host does unusual things."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from unittest import mock

import pytest

import fastreap
from conftest import run_program, wait_ready


def test_watch_survives_monkeypatched_popen() -> None:
    """A real Popen is still recognised while subprocess.Popen is patched
    (CPython's own test_subprocess does this; it used to raise AttributeError)."""
    p = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    class Recording(subprocess.Popen):  # type: ignore[type-arg]
        pass

    with mock.patch("subprocess.Popen", Recording):
        c = fastreap.watch(p)
        assert c.wait(timeout=30) == 3
    assert p.returncode == 3
    assert p.poll() == 3


# ---------------------------------------------------------------- signal storm

STORM_SIGNALS = int(os.environ.get("FASTREAP_STORM_SIGNALS", "100000"))
STORM_SENDERS = 4
STORM_SECONDS = os.environ.get("FASTREAP_STORM_SECONDS", "5")


def _kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:  # our own unreaped children: the pids are still theirs
        if p.poll() is None:
            p.kill()
        p.communicate()


def _storm(
    target: subprocess.Popen[str], total: int, seconds: str, senders: list[subprocess.Popen[str]]
) -> dict[int, int]:
    """Send ``total`` SIGTERM/SIGCHLD/SIGUSR1 to our child ``target`` from
    STORM_SENDERS processes at once (tests/programs/storm_sender.py), spread
    over about ``seconds``; return how many of each were sent. The senders
    are appended to ``senders`` as they start, for the caller's cleanup."""
    per = total // STORM_SENDERS
    for k in range(STORM_SENDERS):
        n = per + (total - per * STORM_SENDERS if k == 0 else 0)
        senders.append(
            run_program("storm_sender.py", str(target.pid), str(n), str(k), seconds, stdin=subprocess.PIPE)
        )
    for s in senders:
        wait_ready(s)
    for s in senders:  # all at once
        assert s.stdin is not None
        s.stdin.write("go\n")
        s.stdin.flush()
    sent = {int(sig): 0 for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1)}
    for s in senders:
        out, err = s.communicate(timeout=90)
        assert s.returncode == 0, (out, err, target.poll())
        line = [x for x in out.splitlines() if x.startswith("SENT ")]
        assert line, (out, err)
        for k, v in json.loads(line[0][5:]).items():
            sent[int(k)] += v
    assert sum(sent.values()) == total
    return sent


@pytest.mark.linux_only
@pytest.mark.parametrize("backend", ["sigchld", "auto"])
def test_signal_storm(backend: str) -> None:
    """100,000 SIGTERM/SIGCHLD/SIGUSR1 from 4 processes at a program whose
    threads churn children, wait in fastreap.wait and wait on the stop flag
    (tests/programs/storm.py): no crash, no deadlock, every child reaped with
    its true status, counters consistent, and the stop request after the
    storm is not lost. Run with -s to see the figures."""
    env = dict(os.environ, FASTREAP_BACKEND=backend)
    target = run_program("storm.py", env=env, stdin=subprocess.PIPE)
    senders: list[subprocess.Popen[str]] = []
    try:
        wait_ready(target)
        sent = _storm(target, STORM_SIGNALS, STORM_SECONDS, senders)
        assert target.poll() is None, "the target died in the storm"
        assert target.stdin is not None
        target.stdin.write("done\n")
        target.stdin.flush()
        received = {int(k): v for k, v in json.loads(wait_ready(target, "CLEARED")[8:]).items()}
        os.kill(target.pid, signal.SIGTERM)  # the stop request that must not be lost
        out, err = target.communicate(timeout=90)
    finally:
        _kill_all([target, *senders])
    results = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
    assert results, (out, err)
    r = results[0]
    print(
        f"\nsignal storm ({r['backend']} backend): sent {sum(sent.values())} "
        f"from {STORM_SENDERS} processes; by signal sent/received "
        + ", ".join(f"{signal.Signals(s).name} {sent[s]}/{received[s]}" for s in sent)
        + f"; children spawned {r['spawned']}, reaped {r['reaped']}; stop-flag wake-ups "
        f"{r['flag_wakeups']} {r['flag_signals']}; degraded scans {r['degraded_scans']}"
    )
    assert r["errors"] == [] and target.returncode == 0, (r["errors"], err)
    # Coalescing: each signal arrived at least once and never more than sent
    # (SIGCHLD also comes from the target's own children).
    for s in (signal.SIGTERM, signal.SIGUSR1):
        assert 1 <= received[s] <= sent[s], (s, received, sent)
    assert 1 <= received[signal.SIGCHLD] <= sent[signal.SIGCHLD] + r["spawned"], (received, sent)
    # The public counters agree with the C counters (read at the same moment).
    for s in sent:
        assert r["counters_signals"].get(str(s), 0) == received[s]
    assert r["final"]["got"] is True and r["final"]["signal"] == signal.SIGTERM
    assert r["final"]["sender"] == os.getpid()
    assert r["reaped"] == r["spawned"] > 1
    assert set(r["flag_signals"]) <= {str(int(signal.SIGTERM)), str(int(signal.SIGUSR1))}


@pytest.mark.linux_only
def test_flag_clear_keeps_a_concurrent_setters_signal() -> None:
    """200,000 signals while a thread clears the flag each time it wakes and
    the main thread sleeps (so the kernel runs the handler there, on the
    other CPU, during clear()): a set flag always names its signal and
    sender. clear() used to zero them after a setter on another thread had
    stored its own, leaving a set flag with .signal None (caught in about
    half of the runs of this test, and of the storm's)."""
    target = run_program("flag_clear_race.py", stdin=subprocess.PIPE)
    senders: list[subprocess.Popen[str]] = []
    try:
        wait_ready(target)
        _storm(target, 200_000, "2", senders)
        out, err = target.communicate("", timeout=60)
    finally:
        _kill_all([target, *senders])
    results = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
    assert results and target.returncode == 0, (out, err)
    assert results[0]["bad"] == 0 and results[0]["rounds"] >= 1, results[0]


# ---------------------------------------------------------------- fork safety


def _run_fork_program(scenario: str, rounds: int, backend: str = "auto") -> dict[str, object]:
    env = dict(os.environ, FASTREAP_BACKEND=backend)
    p = run_program("fork_safety.py", scenario, str(rounds), env=env)
    try:
        out, err = p.communicate(timeout=100)
    finally:
        _kill_all([p])
    results = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
    assert results and p.returncode == 0 and not err.strip(), (p.returncode, out[-2000:], err[-4000:])
    r: dict[str, object] = results[0]
    assert r["errors"] == [] and r["rounds"] == rounds
    return r


@pytest.mark.linux_only
@pytest.mark.parametrize("backend", ["auto", "sigchld"])
@pytest.mark.parametrize("scenario", ["os_fork", "mp_fork", "fr_process"])
def test_fork_while_a_watcher_waits(scenario: str, backend: str) -> None:
    """A thread waits in fastreap.wait (leading in epoll) and another churns
    children while the main thread forks (os.fork, multiprocessing fork
    Process, fastreap.Process with a fork context): each child uses fastreap
    at once (handle_signals, watch().wait(), wait, StopFlag, reap, stop) and
    exits 42; the waiting thread still gets its child's true status (3).
    See tests/programs/fork_safety.py."""
    r = _run_fork_program(scenario, 20, backend)
    assert r["forks_while_leading"] >= 1  # forks while a thread sat in epoll (usually all)


@pytest.mark.linux_only
def test_fork_hook_survives_a_concurrent_close() -> None:
    """1,000 forks while three threads churn with the GIL switching as often
    as it can: the fork hook must give every child a fresh watcher. It used
    to close pidfds the parent had just closed (os.close releases the GIL):
    EBADF aborted the hook in about 1 fork in 100 and left the child with the
    parent's closed watcher ("belongs to the parent process")."""
    _run_fork_program("fork_race", 1000)
