"""Target of a signal storm (tests/test_reliability.py): one run per backend.

    FASTREAP_BACKEND=sigchld|auto python storm.py

It handles SIGTERM and SIGUSR1 with fastreap (the default stop flag), and
while other processes flood it with SIGTERM, SIGCHLD and SIGUSR1:

* a churn thread keeps spawning short-lived children (``true``, ``false``,
  ``sh -c 'exit 42'``, and ``sleep`` killed at once), watching each and
  waiting for it, alternately with ``Child.wait`` and ``fastreap.wait``, and
  checks every status (also the one written back into the Popen);
* a leader thread waits in ``fastreap.wait`` the whole time for one long-lived
  child, which exits with 3 only at the end;
* a waiter thread waits on the stop flag, checks what set it, and clears it.

With the sigchld backend the fake SIGCHLDs reach the watcher's own handler
and its ring; with pidfd they are counted through ``handle_signals`` with a
flag of their own (so the stop flag never sees them).

Protocol on stdout (the test drives stdin):
  READY <pid>      handlers installed, all three threads running
  (stdin "done")   every sender has exited
  CLEARED {...}    storm signals all delivered (none pending, no handler
                   running), counts taken, churn stopped, flag cleared; the
                   test now sends one SIGTERM, which must not be lost
  RESULT {...}     figures and errors; exit 0 if there are no errors
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

import fastreap
from fastreap import _core

STORM = (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1)
errors: list[str] = []
stats: dict[str, Any] = {"spawned": 0, "flag_wakeups": 0, "flag_signals": {}}


def guarded(fn: Any) -> Any:
    def run() -> None:
        try:
            fn()
        except BaseException:
            errors.append(f"{fn.__name__}: {traceback.format_exc()}")

    run.__name__ = fn.__name__
    return run


CHURN = [
    (["true"], 0),
    (["false"], 1),
    (["sh", "-c", "exit 42"], 42),
    (["sleep", "30"], -signal.SIGKILL),
]


def main() -> int:
    flag = fastreap.handle_signals((signal.SIGTERM, signal.SIGUSR1))
    backend = fastreap.counters()["backend"]
    if backend != "sigchld":
        # The watcher does not need SIGCHLD here: count the fake ones with a
        # flag of their own (and so prove they never touch the stop flag).
        fastreap.handle_signals((signal.SIGCHLD,), fastreap.StopFlag())

    churn_stop = threading.Event()
    storm_over = threading.Event()

    @guarded
    def churn() -> None:
        i = 0
        while not churn_stop.is_set():
            argv, expect = CHURN[i % len(CHURN)]
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
            c = fastreap.watch(p)
            stats["spawned"] += 1
            if expect < 0:
                c.kill()
            if i % 2:
                rc = c.wait(60)
            else:
                done, _ = fastreap.wait([c], 60)
                rc = c.returncode if done else None
            st = c.status
            if rc != expect or p.returncode != expect or st is None or st.pid != p.pid:
                errors.append(f"churn {argv}: wait={rc} popen={p.returncode} status={st}, expected {expect}")
            elif (st.exit_code, st.signal) != ((expect, None) if expect >= 0 else (None, -expect)):
                errors.append(f"churn {argv}: {st}")
            i += 1

    long_lived = subprocess.Popen(["sh", "-c", "read x; exit 3"], stdin=subprocess.PIPE)
    long_child = fastreap.watch(long_lived)  # registers (and installs SIGCHLD for sigchld)
    stats["spawned"] += 1
    lead_result: list[Any] = []

    @guarded
    def leader() -> None:
        done, pending = fastreap.wait([long_child], 120)
        lead_result.append((len(done), len(pending), long_child.returncode, long_lived.returncode))

    @guarded
    def waiter() -> None:
        seen = stats["flag_signals"]
        while not storm_over.is_set():
            if not flag.wait(0.5):
                continue
            s = flag.signal
            if s not in (signal.SIGTERM, signal.SIGUSR1):
                errors.append(f"the stop flag was set by {s}, which it does not handle")
            if not fastreap.stop_requested():
                errors.append("flag.wait returned True but stop_requested() is False")
            seen[str(s)] = seen.get(str(s), 0) + 1
            stats["flag_wakeups"] += 1
            flag.clear()

    threads = [threading.Thread(target=f, name=f.__name__) for f in (churn, leader, waiter)]
    for t in threads:
        t.start()
    print("READY", os.getpid(), flush=True)

    sys.stdin.readline()  # the storm is over: every sender has exited
    t0 = time.monotonic()
    storm_over.set()
    churn_stop.set()
    for t in threads[0], threads[2]:
        t.join(60)
        if t.is_alive():
            errors.append(f"thread {t.name} did not finish: deadlock?")
    # Every storm signal delivered and handled before the counts are read
    # and the flag cleared: none pending for the process, no handler running.
    deadline = time.monotonic() + 10
    while set(STORM) & signal.sigpending() and time.monotonic() < deadline:
        time.sleep(0.001)
    if set(STORM) & signal.sigpending():
        errors.append(f"signals still pending after the storm: {signal.sigpending()}")
    _core.quiesce()
    received = {str(int(s)): _core.signal_count(s) for s in STORM}
    public = {str(k): v for k, v in fastreap.counters()["signals"].items()}
    flag.clear()
    print("CLEARED", json.dumps(received), flush=True)

    # The one stop request after the storm must be seen.
    got = flag.wait(60)
    final = {"got": got, "signal": flag.signal, "sender": flag.sender_pid, "parent": os.getppid()}
    if not (got and flag.signal == signal.SIGTERM and flag.sender_pid == os.getppid()):
        errors.append(f"the stop request after the storm was lost or misattributed: {final}")

    assert long_lived.stdin is not None
    long_lived.stdin.write(b"x\n")
    long_lived.stdin.close()
    threads[1].join(60)
    if threads[1].is_alive():
        errors.append("the leader thread did not finish: deadlock?")
    elif lead_result != [(1, 0, 3, 3)]:
        errors.append(f"the long-lived child's status was not true: {lead_result}")

    counters = fastreap.counters()
    if counters["reaped"] != stats["spawned"] or counters["lost"] or counters["watched"]:
        errors.append(f"counters inconsistent with {stats['spawned']} children: {counters}")
    try:
        left = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        errors.append(f"a child is left behind: {left}")
    except ChildProcessError:
        pass  # no child at all: every one was reaped
    result = {
        "backend": backend,
        "received": received,
        "counters_signals": public,
        "final": final,
        "reaped": counters["reaped"],
        "degraded_scans": counters["degraded_scans"],
        "end_seconds": round(time.monotonic() - t0, 3),
        "errors": errors,
        **stats,
    }
    print("RESULT", json.dumps(result), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
