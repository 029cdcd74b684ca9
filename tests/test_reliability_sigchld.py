"""The SIGCHLD path does not trust SIGCHLD (issue 12.2, 12.3, 12.8): each
scenario runs in a fresh interpreter, since it changes process-wide signal
dispositions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.linux_only

_PRELUDE = """
import json, logging, os, signal, subprocess, sys, time
import fastreap
from fastreap import _core
logging.basicConfig(level=logging.WARNING)
def out(**kw):
    print("RESULT " + json.dumps(kw), flush=True)
"""


def run_snippet(code: str, backend: str = "sigchld", timeout: float = 60, **env: str) -> dict:
    """Run code in a child interpreter; return its RESULT line (and its stderr as 'stderr')."""
    full_env = dict(os.environ, FASTREAP_BACKEND=backend, **env)
    p = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and lines, (p.returncode, p.stdout, p.stderr)
    r: dict = json.loads(lines[-1][7:])
    r["stderr"] = p.stderr
    return r


def test_restore_signals_keeps_the_watchers_sigchld_handler() -> None:
    """12.2: restore_signals(SIGCHLD) after handle_signals(SIGCHLD) puts back
    the user's part only; the watched child's code arrives."""
    r = run_snippet(
        """
        c = fastreap.watch(subprocess.Popen(['sh', '-c', 'sleep 0.2; exit 7']))
        fastreap.handle_signals(signal.SIGCHLD, fastreap.StopFlag())
        fastreap.restore_signals(signal.SIGCHLD)
        rc = c.wait(3)
        out(rc=rc, ours=_core.is_installed(signal.SIGCHLD))
        """
    )
    assert r["rc"] == 7 and r["ours"] is True


@pytest.mark.parametrize("how", ["replaced", "blocked"])
def test_no_sigchld_at_all_still_finds_the_exit(how: str) -> None:
    """12.2: SIGCHLD replaced by another handler, or blocked in every thread:
    the periodic loss check still finds the exit within its bound."""
    r = run_snippet(
        f"""
        how = {how!r}
        c = fastreap.watch(subprocess.Popen(['sh', '-c', 'sleep 0.2; exit 7']))
        if how == "replaced":
            signal.signal(signal.SIGCHLD, lambda *a: None)
        else:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        t = time.monotonic()
        rc = c.wait(3)
        out(rc=rc, took=time.monotonic() - t, counters=fastreap.counters())
        """
    )
    assert r["rc"] == 7, r
    if how == "replaced":
        assert r["counters"]["sigchld_replaced"] == 1, r
        assert "SIGCHLD handler was replaced" in r["stderr"]


@pytest.mark.parametrize("timer", ["fired", "pending"])
def test_a_replaced_handler_after_the_path_emptied_still_finds_the_exit(timer: str) -> None:
    """12.2 after the SIGCHLD path was empty for a while (found by CPython's
    test_asyncio.test_subprocess under install(): a FastChildWatcher test
    left SIGCHLD at SIG_DFL, the next test hung). The last child's SIGCHLD
    owed a loss check that had no child left to run for; with the periodic
    timer then firing on an empty path (or not yet), the next child must
    still get its periodic checks when no SIGCHLD ever comes."""
    r = run_snippet(
        f"""
        first = fastreap.watch(subprocess.Popen(['true']))
        assert first.wait(5) == 0  # reaped from its SIGCHLD: the path is empty again
        if {timer!r} == "fired":
            time.sleep(0.4)  # the periodic timer fires...
            fastreap._watcher.current().poll_now()  # ...and finds nothing on the path
        c = fastreap.watch(subprocess.Popen(['sh', '-c', 'sleep 0.2; exit 7']))
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # as asyncio's remove_signal_handler leaves it
        t = time.monotonic()
        rc = c.wait(5)
        out(rc=rc, took=time.monotonic() - t, counters=fastreap.counters())
        """
    )
    assert r["rc"] == 7, r
    assert r["counters"]["sigchld_replaced"] == 1, r


def test_a_replaced_handler_is_reported_to_asyncio_waiters_too() -> None:
    """12.2 through the poller's descriptor (the timer makes it readable)."""
    r = run_snippet(
        """
        import asyncio, fastreap.aio
        async def main():
            c = fastreap.watch(subprocess.Popen(['sh', '-c', 'sleep 0.2; exit 5']))
            signal.signal(signal.SIGCHLD, lambda *a: None)
            return await asyncio.wait_for(fastreap.aio.wait(c), 3)
        out(rc=asyncio.run(main()))
        """
    )
    assert r["rc"] == 5, r


@pytest.mark.parametrize("backend", ["sigchld", "auto"])
def test_sigchld_ignored_before_import(backend: str) -> None:
    """12.3: SIG_IGN inherited: fastreap keeps it (the program's own children
    are still auto-reaped: no zombie), and a watched child is reported lost
    on both paths, promptly."""
    code = """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    import importlib
    # A fresh watcher, as if fastreap were imported now.
    from fastreap import _watcher
    with _watcher.swapped(use_pidfd=None):
        other = subprocess.Popen(['true'], close_fds=True)
        c = fastreap.watch(subprocess.Popen(['sh', '-c', 'sleep 0.1; exit 3']))
        t = time.monotonic()
        try:
            rc = c.wait(3)
            lost = False
        except fastreap.ChildLostError:
            rc, lost = None, True
        took = time.monotonic() - t
        time.sleep(0.2)
        stat = f"/proc/{other.pid}/stat"
        zombie = os.path.exists(stat) and open(stat).read().split(")")[1].split()[0] == "Z"
        ign = signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
        out(rc=rc, lost=lost, took=took, zombie=zombie, ign=ign, backend=fastreap.counters()["backend"])
    """
    r = run_snippet(code, backend=backend)
    assert r["lost"] is True and r["took"] < 2.5, r
    assert r["zombie"] is False and r["ign"] is True, r


def test_no_timerfd_on_the_sigchld_path() -> None:
    """12.8: timer_open failing (seccomp, gVisor): watch() works, and the
    periodic check runs from the capped poller wait (SIGCHLD replaced here,
    so only the periodic check can find the exit)."""
    r = run_snippet(
        """
        import errno
        def refuse():
            raise OSError(errno.ENOSYS, "no timerfd")
        _core.timer_open = refuse
        from fastreap import _watcher
        with _watcher.swapped(use_pidfd=False) as w:
            c = fastreap.watch(subprocess.Popen(['sh', '-c', 'exit 4']))
            rc1 = c.wait(3)
            c = fastreap.watch(subprocess.Popen(['sh', '-c', 'sleep 0.2; exit 7']))
            signal.signal(signal.SIGCHLD, lambda *a: None)
            rc2 = c.wait(3)
            out(rc1=rc1, rc2=rc2, tfd=w.sigchld.tfd)
        """
    )
    assert r["rc1"] == 4 and r["rc2"] == 7 and r["tfd"] == -1, r


def test_watch_racing_popen_wait(backend: str) -> None:
    """13 bug 1: watch(popen) racing another thread's popen.wait() gives a
    finished-or-running Child whose code is the true one, never
    ChildProcessError/ProcessLookupError."""
    import threading

    import fastreap

    errors: list[BaseException] = []
    for i in range(300):
        p = subprocess.Popen(["sh", "-c", f"exit {i % 7 + 1}"])
        t = threading.Thread(target=p.wait)
        t.start()
        try:
            c = fastreap.watch(p)
            rc = c.wait(10)
        except BaseException as e:
            errors.append(e)
            rc = None
        t.join()
        if not errors:
            assert rc == i % 7 + 1 == p.returncode, (i, rc, p.returncode)
    assert not errors, f"{len(errors)} of 300 failed: {errors[:3]!r}"


def test_popens_reaped_by_their_own_wait_are_noticed(sigchld_watcher: object) -> None:
    """13 bug 2: on the SIGCHLD path, Popens that other threads wait() on,
    whose SIGCHLDs coalesced into one (here: SIGCHLD blocked while they all
    exit and get reaped by their Popen.wait()), are all noticed within the
    loss-check bound with their true codes."""
    import signal
    import threading
    import time

    import fastreap

    ps = [subprocess.Popen(["sh", "-c", f"sleep 0.2; exit {i + 1}"]) for i in range(8)]
    kids = [fastreap.watch(p) for p in ps]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        ts = [threading.Thread(target=p.wait) for p in ps]  # they inherit the mask
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    t0 = time.monotonic()
    _done, pending = fastreap.wait(kids, timeout=10, return_when=fastreap.ALL_EXITED)
    took = time.monotonic() - t0
    assert not pending, (took, fastreap.counters())
    assert [c.wait(0) for c in kids] == [p.returncode for p in ps] == list(range(1, 9))
    assert took < 5, took


def test_plain_pids_reaped_by_a_bare_waitpid_are_found_by_the_sweep(
    sigchld_watcher: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain pids reaped elsewhere by os.waitpid, their SIGCHLDs coalesced
    into one (SIGCHLD blocked meanwhile), so neither the ring nor the zombie
    peek can tell: the periodic sweep (in slices, here 4 children each) finds
    every one and reports it lost, none is left waiting."""
    import signal

    import fastreap
    from fastreap import _backend_sigchld

    monkeypatch.setattr(_backend_sigchld, "_SWEEP_SLICE", 4)
    r, w = os.pipe()
    try:
        pids = [
            os.posix_spawn(
                "/bin/sh", ["sh", "-c", "read x"], os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, r, 0)]
            )
            for _ in range(13)
        ]
    finally:
        os.close(r)
    kids = [fastreap.watch(p) for p in pids]
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        os.close(w)  # they all exit...
        for p in pids:
            os.waitpid(p, 0)  # ... and a bare waitpid elsewhere reaps them
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _done, pending = fastreap.wait(kids, timeout=60, return_when=fastreap.ALL_EXITED)
    assert not pending, fastreap.counters()
    assert all(c.lost and c.returncode is None for c in kids)


@pytest.mark.parametrize("group", [False, True])
def test_stopped_child_stops_gracefully(backend: str, group: bool) -> None:
    """12.10: a SIGSTOPped child gets SIGCONT after the stop signal, so it
    exits on SIGTERM at once (graceful_stop) and terminate(timeout=None)
    returns."""
    import signal
    import time

    import fastreap

    p = subprocess.Popen(["sleep", "30"], start_new_session=group)
    os.kill(p.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    rep = fastreap.graceful_stop([p], timeout=20, group=group)
    assert time.monotonic() - t0 < 10 and p.returncode == -signal.SIGTERM, rep
    p = subprocess.Popen(["sleep", "30"], start_new_session=group)
    os.kill(p.pid, signal.SIGSTOP)
    c = fastreap.watch(p)
    assert c.wait(0.05) is None  # a stop is not an exit
    fastreap.terminate([c], timeout=20)
    assert c.wait(0) == -signal.SIGTERM


def test_descriptor_reserve_and_zero_free() -> None:
    """12.6: with 40 descriptors free, watching 45 children leaves the
    program able to open files (the reserve: no pidfd below a quarter of
    the limit free); with none free, watch() and graceful_stop() still work
    (the SIGCHLD path's descriptors were opened up front)."""
    r = run_snippet(
        """
        import resource
        soft = 200
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        from fastreap import _watcher
        with _watcher.swapped():
            # The program holds all but 40 descriptors.
            used = len(os.listdir("/proc/self/fd")) - 1
            ballast = [os.open("/dev/null", os.O_RDONLY) for _ in range(soft - 40 - used)]
            procs = [subprocess.Popen(["sleep", "30"]) for _ in range(45)]
            kids = [fastreap.watch(p) for p in procs]
            files = []
            try:
                for _ in range(30):
                    files.append(open("/dev/null"))
                opened = len(files)
            finally:
                for f in files:
                    f.close()
            pidfds = fastreap.counters()["pidfds"]
            rep = fastreap.graceful_stop(kids, timeout=5)
            for fd in ballast:
                os.close(fd)
            reserve_ok = all(p.returncode == -signal.SIGTERM for p in procs)
        # Zero free: children first (Popen needs pipes), then fill the table.
        procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
        hog = []
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        try:
            kids = [fastreap.watch(p) for p in procs]
            rep = fastreap.graceful_stop(kids, timeout=5)
            zero_ok = [p.returncode for p in procs]
        finally:
            for fd in hog:
                os.close(fd)
        out(opened=opened, pidfds=pidfds, reserve_ok=reserve_ok, zero=zero_ok)
        """,
        backend="auto",
    )
    assert r["opened"] == 30 and r["reserve_ok"] and r["pidfds"] == 0, r
    assert r["zero"] == [-15, -15, -15], r


def test_reap_does_not_steal_from_live_popens_and_processes(backend: str) -> None:
    """13 bug 3: reap() in a loop while another thread runs subprocess.run:
    every returncode stays true; mp.Pool(maxtasksperchild=1) does not hang."""
    import multiprocessing
    import threading

    import fastreap

    stop = threading.Event()
    reaped: list[int] = []

    def reaper() -> None:
        while not stop.is_set():
            reaped.extend(s.pid for s in fastreap.reap())

    t = threading.Thread(target=reaper)
    t.start()
    try:
        codes = [subprocess.run(["sh", "-c", "exit 3"]).returncode for _ in range(150)]
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(2, maxtasksperchild=1) as pool:
            res = pool.map_async(abs, range(-12, 0))
            squares = res.get(timeout=60)
    finally:
        stop.set()
        t.join()
    assert codes == [3] * 150
    assert squares == list(range(12, 0, -1))


def test_reap_waits_for_a_popen_between_fork_and_pid(backend: str) -> None:
    """13 bug 3, the last window: a Popen whose child has already exited but
    whose ``self.pid`` is not yet set (its thread is still inside
    ``_execute_child``, here held there for 50 ms) keeps its true code when
    another thread calls ``reap()`` in that instant."""
    import _posixsubprocess
    import threading

    import fastreap

    if hasattr(subprocess, "_fork_exec"):
        owner, name = subprocess, "_fork_exec"  # 3.11+
    else:
        owner, name = _posixsubprocess, "fork_exec"  # 3.10
    real = getattr(owner, name)
    window = threading.Event()

    def held_fork_exec(*a: object) -> int:
        pid: int = real(*a)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie now, pid not yet set
        window.set()
        time.sleep(0.05)  # hold the window open while reap() runs
        return pid

    reaped: list[fastreap.ExitStatus] = []
    t = threading.Thread(target=lambda: (window.wait(30), reaped.extend(fastreap.reap())))
    t.start()
    setattr(owner, name, held_fork_exec)
    try:
        # "sh", not "/bin/sh": a bare name keeps Popen off its posix_spawn
        # path (3.13+), so the child is made by fork_exec, held above.
        p = subprocess.Popen(["sh", "-c", "exit 3"])
    finally:
        setattr(owner, name, real)
        window.set()
        t.join()
    assert p.wait(timeout=30) == 3
    assert p.returncode == 3


def test_reap_waits_once_for_a_popen_whose_construction_failed(backend: str) -> None:
    """A Popen that failed before forking (kept alive here by its traceback)
    looks like one being made; reap() waits for its pid once (bounded), then
    never again."""
    from fastreap import _children

    argv = ["fastreap-test-never-started"]
    try:
        subprocess.Popen(argv, env={"A": 1})  # type: ignore[dict-item]
    except TypeError as e:
        tb = e.__traceback__
    mine = [o for o in _children._live_owners()[2] if o.args is argv]
    assert len(mine) == 1 and mine[0].pid is None
    _children._await_pids(mine, 0.01)
    assert not [o for o in _children._live_owners()[2] if o.args is argv]
    del tb, mine
