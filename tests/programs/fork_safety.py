"""Fork while a watcher waits in another thread (tests/test_reliability.py).

    python fork_safety.py SCENARIO ROUNDS

A thread waits in ``fastreap.wait`` for a long-lived child (leading in epoll,
the watcher lock released) and another keeps churning children (so forks
also land while the watcher lock is held and pidfds are being closed) while
the main thread makes ROUNDS children by SCENARIO:

* ``os_fork``: ``os.fork()``;
* ``mp_fork``: ``multiprocessing`` fork-context ``Process``;
* ``fr_process``: ``fastreap.Process(mp_context=fork)``, half of them asked
  to stop with ``.stop()`` (``exit_on_stop=False``: the target sees the flag);
* ``fork_race``: ``os.fork()`` many times while three threads churn and the
  GIL switches as often as it can, each child only checking that the fork
  hook gave it a working watcher (``quick_check``). This caught the hook
  closing a pidfd that a churning thread had just closed: EBADF aborted the
  hook and left the child with the parent's closed watcher.

Each child uses fastreap at once (``check_child``) and exits with 42 when
every check held (1 with a traceback otherwise). The parent watches each
child with fastreap while the other threads keep going, checks 42, then
lets the long-lived child exit with 3 and checks that the waiting thread got
that true status. Prints ``RESULT {...}`` and exits 0 when all held.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from typing import Any

import fastreap
from fastreap import _watcher

OK = 42
warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, use of fork()": the point


def check_child(inherited: fastreap.Child) -> None:
    """Use fastreap right after the fork; raise AssertionError on any failure."""
    w = _watcher.current()
    assert not w.closed and not w.children and not w.leading, "the parent's watcher state leaked"
    # The parent's child is not ours: refused clearly, nothing signalled.
    try:
        inherited.wait(0)
        raise AssertionError("waiting for the parent's child did not raise")
    except ChildProcessError:
        pass
    # A handled signal sets the flag in this process, with our own wake fd.
    flag = fastreap.handle_signals((signal.SIGUSR1,), fastreap.StopFlag())
    os.kill(os.getpid(), signal.SIGUSR1)
    assert flag.wait(10) and flag.signal == signal.SIGUSR1 and flag.sender_pid == os.getpid(), flag
    fastreap.restore_signals((signal.SIGUSR1,))
    # A fresh StopFlag, set from another thread, wakes a waiter here.
    f = fastreap.StopFlag()
    threading.Timer(0.01, f.set).start()
    assert f.wait(10) is True
    # Watch and wait for a child of our own, true status written back.
    p = subprocess.Popen(["sh", "-c", "exit 5"])
    assert fastreap.watch(p).wait(10) == 5 and p.returncode == 5
    c = fastreap.watch(subprocess.Popen(["sleep", "30"]))
    c.kill()
    done, pending = fastreap.wait([c], 10)
    assert done == {c} and c.returncode == -signal.SIGKILL, (done, pending, c)
    # reap() collects an unwatched exited child.
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 9"], os.environ)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # it is a zombie now
    got = {s.pid: s.returncode for s in fastreap.reap()}
    assert got == {pid: 9}, got
    cnt = fastreap.counters()
    assert cnt["watched"] == 0 and cnt["lost"] == 0, cnt


def quick_check() -> None:
    w = _watcher.current()
    assert not w.closed and not w.children and w.pfd == -1, "the fork hook did not reset the watcher"


def os_fork_child(inherited: fastreap.Child, quick: bool) -> None:
    code = 1
    try:
        quick_check() if quick else check_child(inherited)
        code = OK
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def mp_target(inherited: fastreap.Child) -> None:
    try:
        check_child(inherited)
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    sys.exit(OK)


def fr_target(inherited: fastreap.Child, until_stopped: bool) -> None:
    try:
        check_child(inherited)
        if until_stopped:  # the parent asks us to stop: return on our own, code 0
            flag = fastreap.handle_signals(signal.SIGTERM)  # idempotent: the flag in place
            if not flag.wait(60) or not fastreap.stop_requested():
                raise AssertionError("the stop request never arrived")
            return
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    sys.exit(OK)


def main() -> int:
    scenario, rounds = sys.argv[1], int(sys.argv[2])
    errors: list[str] = []
    ctx = multiprocessing.get_context("fork")

    long_lived = subprocess.Popen(["sh", "-c", "read x; exit 3"], stdin=subprocess.PIPE)
    long_child = fastreap.watch(long_lived)
    lead: list[Any] = []

    def leader() -> None:
        lead.append(fastreap.wait([long_child], 120))

    stop_churn = threading.Event()
    churned = [0]

    def churn() -> None:
        while not stop_churn.is_set():
            p = subprocess.Popen(["true"])
            rc = fastreap.watch(p).wait(30)
            if rc != 0 or p.returncode != 0:
                errors.append(f"churn: {rc} {p.returncode}")
            churned[0] += 1

    race = scenario == "fork_race"
    if race:
        sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=leader)]
    threads += [threading.Thread(target=churn) for _ in range(3 if race else 1)]
    for t in threads:
        t.start()
    w = _watcher.current()
    deadline = time.monotonic() + 10
    while not w.leading and time.monotonic() < deadline:
        time.sleep(0.001)  # until the leader sits in epoll with the lock released
    forks_while_leading = 0

    codes: list[int | None] = []
    for i in range(rounds):
        forks_while_leading += w.leading
        if scenario in ("os_fork", "fork_race"):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the forked child
                os_fork_child(long_child, race)
            if race:  # back to forking at once: the race needs this thread runnable
                codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
            else:
                codes.append(fastreap.watch(pid).wait(60))
        elif scenario == "mp_fork":
            mp = ctx.Process(target=mp_target, args=(long_child,))
            mp.start()
            codes.append(fastreap.watch(mp).wait(60))
            if mp.exitcode != codes[-1]:
                errors.append(f"mp exitcode {mp.exitcode} != {codes[-1]}")
            mp.close()
        elif scenario == "fr_process":
            until_stopped = i % 2 == 1
            fp = fastreap.Process(
                target=fr_target, args=(long_child, until_stopped), mp_context=ctx, exit_on_stop=False
            )
            fp.start()
            if until_stopped:
                code = fp.stop(timeout=30)
                codes.append(OK if code == 0 else code)
            else:
                codes.append(fastreap.watch(fp).wait(60))
            if fp.exitcode != (0 if until_stopped else OK):
                errors.append(f"fastreap.Process exitcode {fp.exitcode}")
            fp.close()
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    stop_churn.set()
    for t in threads[1:]:
        t.join(60)

    assert long_lived.stdin is not None
    long_lived.stdin.write(b"x\n")
    long_lived.stdin.close()
    threads[0].join(60)
    if threads[0].is_alive():
        errors.append("the waiting thread never returned")
    elif not (lead and lead[0][0] == {long_child} and long_child.returncode == 3 == long_lived.returncode):
        errors.append(f"the waiting thread did not get the true status: {lead} {long_child}")
    failed = [c for c in codes if c != OK]
    if failed or len(codes) != rounds:
        errors.append(f"{len(failed)} of {len(codes)} children failed (codes {sorted(set(failed))})")
    cnt = fastreap.counters()
    if cnt["watched"] or cnt["lost"]:
        errors.append(f"counters: {cnt}")
    try:
        left = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        errors.append(f"a child is left behind: {left}")
    except ChildProcessError:
        pass
    result = {
        "rounds": rounds,
        "forks_while_leading": forks_while_leading,
        "churned": churned[0],
        "errors": errors,
    }
    print("RESULT", json.dumps(result), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
