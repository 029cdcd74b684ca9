"""The parent side: watch, Child, ExitStatus, wait, reap, set_subreaper, counters."""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

import fastreap
from conftest import run_program, wait_ready
from fastreap import _backend_sigchld, _core, _procfs, _watcher


def sh(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sh", "-c", code])


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["/bin/sleep", "60"])


def _exit3() -> None:
    os._exit(3)


def _sleep() -> None:
    time.sleep(60)


# ---- watch targets and ExitStatus ----------------------------------------


def test_watch_int_popen_child(backend: str) -> None:
    spid = os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ)
    cs = fastreap.watch(spid)
    assert fastreap.watch(cs) is cs and fastreap.watch(spid) is cs
    cs.kill()
    assert cs.wait() == -9
    c = fastreap.watch(os.posix_spawn("/bin/sh", ["sh", "-c", "exit 5"], os.environ))
    assert c.wait() == 5
    st = c.status
    assert st is not None and st.exit_code == 5 and st.signal is None and st.returncode == 5
    assert not c.is_alive()
    p2 = sh("exit 6")
    assert fastreap.watch(p2).wait() == 6 and p2.wait() == 6 and p2.poll() == 6


def test_watch_started_process(backend: str) -> None:
    ctx = multiprocessing.get_context("fork")
    pr = ctx.Process(target=_exit3)
    pr.start()
    c = fastreap.watch(pr)
    assert c.wait() == 3
    assert pr.exitcode == 3
    pr.join()
    assert pr.exitcode == 3


def test_signal_status_and_rusage(backend: str) -> None:
    p = sleeper()
    c = fastreap.watch(p)
    assert c.is_alive() and c.returncode is None and c.status is None
    c.kill()
    assert c.wait() == -9
    st = c.status
    assert st is not None and st.signal == signal.SIGKILL and st.exit_code is None and not st.core_dumped
    assert p.wait() == -9
    # rusage: a child that burns CPU and allocates 64 MiB
    p = subprocess.Popen([sys.executable, "-c", "b = bytearray(64 << 20)\nfor i in range(3_000_000): pass"])
    c = fastreap.watch(p)
    assert c.wait() == 0
    st = c.status
    assert st is not None and st.user_time is not None and st.user_time > 0.01
    assert st.system_time is not None and st.system_time >= 0
    assert st.max_rss is not None and st.max_rss > 64 * 1024  # KiB on Linux


def test_core_dumped(backend: str) -> None:
    def allow_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        os.chdir("/tmp")

    try:
        p = subprocess.Popen(
            [sys.executable, "-c", "import os; os.abort()"], preexec_fn=allow_core, stderr=subprocess.DEVNULL
        )
    except (ValueError, OSError):
        pytest.skip("cannot raise RLIMIT_CORE")
    c = fastreap.watch(p)
    assert c.wait() == -signal.SIGABRT
    st = c.status
    assert st is not None and st.signal == signal.SIGABRT
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern.startswith("|") or pattern == "":
        # A piped handler may still report the dump; only assert when it is a file.
        return
    assert st.core_dumped


def test_signal_after_reap_is_silent_noop(backend: str) -> None:
    p = sh("exit 0")
    c = fastreap.watch(p)
    assert c.wait() == 0
    c.send_signal(signal.SIGTERM)
    c.terminate()
    c.kill()
    assert c.returncode == 0


def test_terminate(backend: str) -> None:
    c = fastreap.watch(sleeper())
    c.terminate()
    assert c.wait() == -signal.SIGTERM


# ---- wait ------------------------------------------------------------------


def test_wait_timeouts(backend: str) -> None:
    a, b = sleeper(), sh("exit 2")
    ca, cb = fastreap.watch(a), fastreap.watch(b)
    assert ca.wait(0) is None
    assert ca.wait(0.05) is None
    done, pending = fastreap.wait([ca, cb], None, fastreap.FIRST_EXITED)
    assert done == {cb} and pending == {ca}
    done, pending = fastreap.wait([ca, cb], 0, fastreap.ALL_EXITED)
    assert done == {cb} and pending == {ca}
    done, pending = fastreap.wait([ca, cb], 0.05, fastreap.ALL_EXITED)
    assert pending == {ca}
    ca.kill()
    done, pending = fastreap.wait([ca, cb], 30, fastreap.ALL_EXITED)
    assert done == {ca, cb} and not pending
    assert fastreap.wait([], 0) == (set(), set())


def test_wait_zero_sees_exit_already_happened(backend: str) -> None:
    for use_wait in (False, True):
        p = sleeper()
        c = fastreap.watch(p)
        os.kill(p.pid, signal.SIGKILL)
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)  # a zombie now, nobody polled yet
        if use_wait:
            assert fastreap.wait([c], 0)[0] == {c}
        else:
            assert c.wait(0) == -9


def test_wait_from_many_threads(backend: str) -> None:
    kids = [fastreap.watch(sleeper()) for _ in range(4)]
    out: list[int | None] = []
    ts = [threading.Thread(target=lambda k=k: out.append(k.wait(30))) for k in kids]
    for t in ts:
        t.start()
    for k in kids:
        k.kill()
    for t in ts:
        t.join()
    assert sorted(out) == [-9] * 4  # type: ignore[type-var]


def test_sigint_interrupts_wait() -> None:
    p = run_program("children_sigint.py")
    wait_ready(p)
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "INTERRUPTED" in out and "RC -9" in out


# ---- never steal, write-back, lost ---------------------------------------


def test_never_steals_unwatched_popen(backend: str) -> None:
    other = sh("exit 9")
    watched = [fastreap.watch(sh("exit 1")) for _ in range(3)]
    os.waitid(os.P_PID, other.pid, os.WEXITED | os.WNOWAIT)  # foreign zombie in front
    done, pending = fastreap.wait(watched, 30, fastreap.ALL_EXITED)
    assert not pending and done == set(watched) and all(c.returncode == 1 for c in watched)
    assert other.wait() == 9  # its own wait gets the true code


@pytest.mark.parametrize("code", ["exit 3", "kill -9 $$"])
def test_popen_writeback_with_concurrent_wait(backend: str, code: str) -> None:
    want = 3 if "exit" in code else -9
    for _ in range(30):
        p = sh(code)
        c = fastreap.watch(p)
        got: list[int] = []
        t = threading.Thread(target=lambda got=got, p=p: got.append(p.wait()))
        t.start()
        assert c.wait(30) == want
        t.join()
        assert got == [want] and p.poll() == want


def test_popen_writeback_without_concurrent_wait(backend: str) -> None:
    p = sh("kill -9 $$")
    assert fastreap.watch(p).wait() == -9
    assert p.returncode == -9 and p.poll() == -9 and p.wait() == -9


@pytest.mark.parametrize("concurrent", [False, True])
def test_process_writeback(backend: str, concurrent: bool) -> None:
    ctx = multiprocessing.get_context("fork")
    for i in range(20 if concurrent else 2):
        pr = ctx.Process(target=_exit3 if i % 2 == 0 else _sleep)
        pr.start()
        c = fastreap.watch(pr)
        t = threading.Thread(target=pr.join)
        if concurrent:
            t.start()
        if i % 2:
            c.kill()
        want = 3 if i % 2 == 0 else -9
        assert c.wait(30) == want
        if concurrent:
            t.join()
        assert pr.exitcode == want
        pr.join()
        assert pr.exitcode == want


def test_reaped_by_someone_else_is_lost(backend: str) -> None:
    # The child outlives watch() (which reaps a child that has already exited).
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "sleep 0.2"], os.environ)
    c = fastreap.watch(pid)
    os.waitpid(pid, 0)
    with pytest.raises(fastreap.ChildLostError):
        c.wait(30)
    assert c.lost and c.returncode is None and c.status is None
    assert fastreap.counters()["lost"] >= 1


# ---- reap, subreaper, counters -------------------------------------------


def test_reap_steals_and_delivers(backend: str) -> None:
    unwatched = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 2"], os.environ)
    p = sleeper()
    c = fastreap.watch(p)
    os.kill(p.pid, signal.SIGKILL)
    for pid in (unwatched, p.pid):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    got = {s.pid: s for s in fastreap.reap()}
    assert got[unwatched].exit_code == 2
    assert c.returncode == -9 and p.returncode == -9
    with pytest.raises(ChildProcessError):
        os.waitpid(unwatched, os.WNOHANG)


def test_set_subreaper() -> None:
    p = run_program("children_subreaper.py")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "OK" in out, err


def test_counters(backend: str) -> None:
    before = fastreap.counters()
    assert before["backend"] == ("pidfd" if backend == "pidfd" else "sigchld")
    c = fastreap.watch(sh("exit 0"))
    assert fastreap.counters()["watched"] == before["watched"] + 1 or c.returncode is not None
    c.wait()
    after = fastreap.counters()
    assert after["reaped"] == before["reaped"] + 1 and after["watched"] == before["watched"]
    r = fastreap.graceful_stop([fastreap.watch(sleeper())], 0.0, signal=signal.SIGCONT)
    assert len(r.killed) == 1
    assert fastreap.counters()["escalations"] == after["escalations"] + 1


# ---- bad input ---------------------------------------------------------------


def test_bad_input(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object) -> None:
        raise AssertionError("reached a system call")

    monkeypatch.setattr(os, "kill", boom)
    monkeypatch.setattr(os, "waitpid", boom)
    for pid in (0, -1, -12345):
        with pytest.raises(ValueError, match="target"):
            fastreap.watch(pid)
        with pytest.raises(ValueError):
            fastreap.wait([pid])
    monkeypatch.undo()
    with pytest.raises(ChildProcessError, match="not a child"):
        fastreap.watch(1)
    with pytest.raises(ChildProcessError):
        fastreap.watch(os.getpid())
    with pytest.raises(ValueError, match="not started"):
        fastreap.watch(multiprocessing.get_context("fork").Process(target=_exit3))
    for bad in ("12", 1.5, True, None, object()):
        with pytest.raises(TypeError):
            fastreap.watch(bad)  # type: ignore[arg-type]
    c = fastreap.watch(sh("exit 0"))
    for t in (-1, -0.5, math.nan):
        with pytest.raises(ValueError, match="timeout"):
            c.wait(t)
        with pytest.raises(ValueError, match="timeout"):
            fastreap.wait([c], t)
    with pytest.raises(ValueError, match="return_when"):
        fastreap.wait([c], 0, "SOME")
    assert c.wait() == 0


# ---- scale ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("env_backend", ["auto", "sigchld"])
def test_10000_sleepers_under_1024_fds(env_backend: str) -> None:
    env = dict(os.environ, FASTREAP_BACKEND=env_backend)
    p = run_program("children_many.py", "10000", env=env)
    out, err = p.communicate(timeout=110)
    assert p.returncode == 0 and "OK" in out, err


def test_coalesced_sigchld_many_at_once() -> None:
    env = dict(os.environ, FASTREAP_BACKEND="sigchld")
    p = run_program("children_many.py", "300", env=env)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "OK" in out, err


def test_leader_wakes_when_another_thread_reaps(backend: str) -> None:
    # A thread leads (blocked in epoll) for [x, y]; the main thread reaps x
    # through is_alive(). The leader must still return with x done, whether
    # its pidfd or the SIGCHLD wake-up was what told it.
    w = _watcher.current()
    for _ in range(30):
        x, y = sleeper(), sleeper()
        cx, cy = fastreap.watch(x), fastreap.watch(y)
        res: list[tuple[set[fastreap.Child], set[fastreap.Child]]] = []
        t = threading.Thread(target=lambda res=res, cx=cx, cy=cy: res.append(fastreap.wait([cx, cy], 30)))
        t.start()
        while not w.leading:
            time.sleep(0.001)
        x.send_signal(signal.SIGKILL)
        while cx.is_alive():
            pass
        t.join(30)
        assert not t.is_alive()
        assert res[0][0] == {cx}
        cy.kill()
        assert cy.wait() == -9 and x.returncode == -9


# ---- SIGCHLD coalescing: the amortised loss check ------------------------


def _coalesced_exits(n_live: int, n_dead: int) -> tuple[list[fastreap.Child], list[fastreap.Child]]:
    """Watch n_live sleepers on the SIGCHLD path, then SIGKILL n_dead of them
    while SIGCHLD is blocked, so the kernel delivers one SIGCHLD for all of
    them (standard signals coalesce): only the loss check can find the rest."""
    if threading.active_count() != 1:
        pytest.skip("another thread could take the SIGCHLD")
    kids = [fastreap.watch(sleeper()) for _ in range(n_live)]
    dead, live = kids[:n_dead], kids[n_dead:]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        for c in dead:
            c.kill()
        for c in dead:  # every one is a zombie before the single delivery
            os.waitid(os.P_PID, c.pid, os.WEXITED | os.WNOWAIT)
        assert signal.SIGCHLD in signal.sigpending()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return dead, live


@pytest.mark.usefixtures("sigchld_watcher")
def test_coalesced_sigchld_found_by_timed_loss_check() -> None:
    # 100 live: the check is owed after one SIGCHLD but not due by count
    # (100 >> 5 = 3 exits), so the timer in the epoll set must run it.
    dead, live = _coalesced_exits(100, 10)
    checks = fastreap.counters()["loss_checks"]
    done, pending = fastreap.wait(dead, 30, fastreap.ALL_EXITED)
    assert done == set(dead) and not pending
    assert all(c.returncode == -signal.SIGKILL for c in dead)
    assert fastreap.counters()["loss_checks"] == checks + 1
    assert all(c.returncode is None for c in live)
    fastreap.kill(live)


@pytest.mark.usefixtures("sigchld_watcher")
def test_coalesced_sigchld_found_in_asyncio() -> None:
    import asyncio

    from fastreap import aio

    dead, live = _coalesced_exits(100, 5)

    async def main() -> list[int]:
        return await asyncio.wait_for(asyncio.gather(*(aio.wait(c) for c in dead)), 30)

    assert asyncio.run(main()) == [-signal.SIGKILL] * 5
    fastreap.kill(live)


def _plain_sleepers(n: int) -> list[fastreap.Child]:
    """n plain pids (Owner.direct: the compiled SIGCHLD wake-up's case)."""
    return [fastreap.watch(os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ)) for _ in range(n)]


def _no_timer_help(monkeypatch: pytest.MonkeyPatch, quiet_too: bool) -> None:
    """Make the loss-check timer useless for a test's span (before its
    children are watched: the periodic check is scheduled then)."""
    monkeypatch.setattr(_backend_sigchld, "_PERIOD", 3600.0)
    if quiet_too:
        monkeypatch.setattr(_backend_sigchld, "_CHECK_QUIET", 3600.0)
        monkeypatch.setattr(_backend_sigchld, "_CHECK_MAX_AGE", 3600.0)


def _leader_sees_one_sigchld_for(w: _watcher.Watcher, dead: list[fastreap.Child]) -> None:
    """A thread leads (blocked in the poller) for FIRST_EXITED of dead; dead
    are killed with SIGCHLD blocked in every thread, so one SIGCHLD (naming
    one of them) wakes the leader: the compiled wake-up reaps that one and
    returns. Which of them the others' swallowed SIGCHLDs are is left to the
    loss check, due by count at this n."""
    if threading.active_count() != 1:
        pytest.skip("another thread could take the SIGCHLD")
    res: list[object] = []
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        t = threading.Thread(target=lambda: res.append(fastreap.wait(dead, 30, fastreap.FIRST_EXITED)))
        t.start()  # inherits the blocked SIGCHLD
        while not w.leading:
            time.sleep(0.001)
        for c in dead:
            os.kill(c.pid, signal.SIGKILL)
        for c in dead:  # every one is a zombie before the single delivery
            os.waitid(os.P_PID, c.pid, os.WEXITED | os.WNOWAIT)
        assert signal.SIGCHLD in signal.sigpending()
    finally:
        # Delivered here; the wake-up descriptor wakes the leader.
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    t.join(30)
    assert not t.is_alive() and res


def test_small_n_coalesced_sigchld_found_by_the_next_wait(
    sigchld_watcher: _watcher.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Below 32 children the loss check is due after every exit; it runs
    # after the waiter that the SIGCHLD woke has returned (not in its
    # latency), at the watcher's next call: here the wait for the others.
    # No timer can help (the periodic and quiet checks are an hour away).
    _no_timer_help(monkeypatch, quiet_too=True)
    kids = _plain_sleepers(4)
    dead, live = kids[:3], kids[3:]
    try:
        checks = fastreap.counters()["loss_checks"]
        _leader_sees_one_sigchld_for(sigchld_watcher, dead)
        done, pending = fastreap.wait(dead, 30, fastreap.ALL_EXITED)
        assert done == set(dead) and not pending
        assert all(c.returncode == -signal.SIGKILL for c in dead)
        # At least the deferred one (a thread the test does not know of, as
        # under ASan, may take a SIGCHLD early: then a second wake-up owes
        # another, harmless, check).
        assert fastreap.counters()["loss_checks"] >= checks + 1
        assert live[0].returncode is None
    finally:
        fastreap.kill(kids)


def test_small_n_coalesced_sigchld_found_by_the_timer_when_nobody_calls(
    sigchld_watcher: _watcher.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same, but nobody waits again: the check deferred out of the
    # leader's way is backed by the quiet timer (~5 ms), so the poller
    # becomes readable (asyncio's reader, a selector) and the timer's
    # token runs it. The periodic check is an hour away: only that timer can.
    _no_timer_help(monkeypatch, quiet_too=False)
    kids = _plain_sleepers(4)
    dead, live = kids[:3], kids[3:]
    _leader_sees_one_sigchld_for(sigchld_watcher, dead)
    # The leader's waiter returned with the SIGCHLD's sender only: the
    # check did not run in its way.
    assert sum(_watcher.Watcher.done(c) for c in dead) == 1
    assert sigchld_watcher.sigchld.check_next
    pfd = sigchld_watcher.fileno()
    ready, _, _ = select.select([pfd], [], [], 30)
    assert ready
    with sigchld_watcher.lock:  # what poll_now does, less its own run_deferred: the timer alone
        tokens = _core.poller_wait(pfd, 0.0)
        assert tokens == [_backend_sigchld.CHECK]
        sigchld_watcher.process(tokens)
    assert all(_watcher.Watcher.done(c) for c in dead)
    assert all(c.returncode == -signal.SIGKILL for c in dead)
    assert not sigchld_watcher.sigchld.check_owed
    fastreap.kill(live)


def test_raising_done_callback_is_logged_and_others_still_run(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    c = fastreap.watch(sleeper())
    seen: list[int] = []

    def bad(_c: fastreap.Child) -> None:
        raise RuntimeError("callback bug")

    c.add_done_callback(bad)
    c.add_done_callback(lambda ch: seen.append(ch.pid))
    c.kill()
    with caplog.at_level("ERROR", logger="fastreap"):
        assert c.wait(30) == -signal.SIGKILL  # the waiter is not hit by the callback's error
    assert seen == [c.pid]
    assert any("callback bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_wait_timeout_zero_runs_an_owed_loss_check(sigchld_watcher: _watcher.Watcher) -> None:
    dead, live = _coalesced_exits(100, 10)
    done, pending = fastreap.wait(dead, 0, fastreap.ALL_EXITED)
    assert done == set(dead) and not pending and not sigchld_watcher.sigchld.check_owed
    fastreap.kill(live)


@pytest.mark.usefixtures("sigchld_watcher")
def test_unreadable_proc_is_not_taken_for_a_reused_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    # EMFILE/ENOMEM reading /proc proves nothing: the child must still be
    # signalled and reaped, not declared lost.
    c = fastreap.watch(sleeper())
    monkeypatch.setattr(_procfs, "start_time", lambda pid: _procfs.UNKNOWN)
    c.terminate()
    assert c.wait(30) == -signal.SIGTERM and not c.lost


def test_ctrl_c_while_retaking_the_watcher_lock_leaves_it_consistent() -> None:
    # A signal handler raising while the lock is awaited: the lock is taken
    # anyway and the exception handed back (run in a child interpreter).
    code = """
import signal, threading, time
from fastreap._watcher import acquire_uninterruptibly
lock = threading.Lock(); lock.acquire()
def h(*a): raise KeyboardInterrupt
signal.signal(signal.SIGALRM, h)
threading.Timer(0.3, lock.release).start()
signal.setitimer(signal.ITIMER_REAL, 0.05)
exc = acquire_uninterruptibly(lock)
print(type(exc).__name__, lock.locked())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["KeyboardInterrupt", "True"], out.stderr


@pytest.mark.parametrize("backend", ["pidfd", "sigchld"])
def test_a_signal_handler_may_wait_while_its_thread_leads_a_wait(backend: str) -> None:
    # A Python handler runs inside the leader's own wait (the lock free, the
    # leader suspended): its waits followed that leader, so nobody polled.
    # spawn().wait() timed out and graceful_stop() of the outer wait's own
    # child hung for good. Now the handler leads in its place, and the outer
    # wait sees the exit the handler took (run in a child interpreter).
    code = """
import os, signal, threading, time
import fastreap
from fastreap import _watcher
w = _watcher.current()
outer = fastreap.spawn(["sleep", "60"])
got = {}
def h(*a):
    got["inner"] = fastreap.spawn(["sh", "-c", "exit 4"]).wait(20)
    got["stop"] = fastreap.graceful_stop([outer], timeout=20).returncodes.get(outer.pid)
signal.signal(signal.SIGUSR1, h)
def kick():
    while not w.leading:  # the main thread is in its wait (_core.lead)
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGUSR1)
threading.Thread(target=kick).start()
done, _ = fastreap.wait([outer], 40)
print(got.get("inner"), got.get("stop"), outer.returncode, len(done))
"""
    env = dict(os.environ, FASTREAP_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.split() == ["4", "-15", "-15", "1"], out.stderr


@pytest.mark.parametrize("backend", ["pidfd", "sigchld"])
def test_a_signal_handler_inside_fastreaps_own_code_looks_or_raises(backend: str) -> None:
    # A Python handler that runs while its thread is inside fastreap's own
    # code, the watcher lock held (here: a done callback raises the signal):
    # every call that takes the lock deadlocked on itself (with a repeating
    # timer, until RecursionError). Now a look answers from what is known
    # and a wait raises a RuntimeError that says why; nothing is left over.
    code = """
import signal, subprocess
import fastreap
from fastreap import _watcher
other = fastreap.spawn(["sleep", "60"])
quick = fastreap.spawn(["cat"], stdin=subprocess.PIPE)
got = []
def h(*a):
    got.append(other.is_alive())
    got.append(other.returncode)
    got.append(other.wait(0))
    got.append(fastreap.wait([other], 0)[0] == set())
    for call in (lambda: other.wait(5), lambda: fastreap.graceful_stop([other], timeout=1)):
        try:
            call()
        except RuntimeError as e:
            got.append("signal handler" in str(e))
signal.signal(signal.SIGUSR1, h)
assert _watcher.Watcher.subscribe(quick, lambda c: signal.raise_signal(signal.SIGUSR1))
quick.popen.stdin.close()
print(quick.wait(20))
other.kill()
print(other.wait(20), *got)
"""
    env = dict(os.environ, FASTREAP_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.split() == ["0", "-9", "True", "None", "None", "True", "True", "True"], out.stderr
