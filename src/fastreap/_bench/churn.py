"""Churn: spawning and reaping many short-lived children (issue 13).

* fan-out of N ``/bin/true`` with at most 64 alive: ``Popen`` + ``poll()``
  loop, ``Popen`` + ``os.wait()`` loop (the best stdlib loop, the baseline),
  C ``posix_spawn`` + ``waitpid(-1)`` (the limit), fastreap ``watch`` +
  ``wait(FIRST_EXITED)``, ``fastreap.spawn`` + ``wait``;
* one task per child on 8 workers: ``multiprocessing.Pool(maxtasksperchild=1)``
  (the baseline), ``concurrent.futures.ProcessPoolExecutor(max_tasks_per_child=1)``
  (3.11+; it uses the spawn start method), ``fastreap.ProcessPoolExecutor``;
* asyncio ``create_subprocess_exec('/bin/true')`` under a semaphore of 64,
  without and with ``fastreap.install()``;
* fork + ``_exit`` + ``waitpid`` in an interpreter without and with
  ``import fastreap``; and after fastreap's first use (``watch`` + ``wait``,
  ``handle_signals``) against the same stdlib modules imported without it.
  Each fork row notes the child's minor page faults (``wait4``'s
  ``ru_minflt``, median): the pages the child wrote, copied on write. A
  fork round's figure is the best of 5 batches (the machine's other load
  only ever adds to a fork's cost); the row is the median of the rounds.

Every case runs in a fresh interpreter, once per round, cases interleaved
round by round. A case whose API is absent in this build is a skipped row.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any

from . import _cref
from ._util import Goal, Progress, Result, fresh, pick

TRUE = "/bin/true"
CONC = 64
WORKERS = 8

POLL = "Popen + poll() loop (1 ms sleep when none done)"
OSWAIT = "Popen + os.wait() loop (best stdlib)"
C_SPAWN = "C posix_spawn + waitpid(-1)"
FR_WATCH = "Popen + fastreap.watch + wait(FIRST_EXITED)"
FR_SPAWN = "fastreap.spawn + wait(FIRST_EXITED)"

MP_POOL = "multiprocessing.Pool(maxtasksperchild=1), fork"
CF_POOL = "concurrent.futures.ProcessPoolExecutor(max_tasks_per_child=1)"
FR_POOL = "fastreap.ProcessPoolExecutor(max_tasks_per_child=1)"

AIO = "asyncio create_subprocess_exec, semaphore 64"
AIO_FR = "the same after fastreap.install()"

FORK = "fork + _exit + waitpid, fastreap not imported"
FORK_FR = "the same after import fastreap"
FORK_STDLIB = "fork + _exit + waitpid, stdlib that fastreap's use imports"
FORK_USED = "the same after fastreap.watch().wait(), handle_signals()"


def _fanout(kind: str, n: int) -> float:
    """Seconds for n /bin/true children, at most CONC alive."""
    if kind == "c":
        return _cref.spawn_churn(TRUE, n, CONC)
    import fastreap

    t0 = time.perf_counter()
    started = 0
    if kind == "poll":
        active: list[subprocess.Popen[bytes]] = []
        while started < n or active:
            while len(active) < CONC and started < n:
                active.append(subprocess.Popen([TRUE]))
                started += 1
            still = [p for p in active if p.poll() is None]
            if len(still) == len(active):
                time.sleep(0.001)
            active = still
    elif kind == "oswait":
        by_pid: dict[int, subprocess.Popen[bytes]] = {}
        while started < n or by_pid:
            while len(by_pid) < CONC and started < n:
                p = subprocess.Popen([TRUE])
                by_pid[p.pid] = p
                started += 1
            pid, status = os.wait()
            by_pid.pop(pid).returncode = os.waitstatus_to_exitcode(status)
    elif kind in ("fr_watch", "fr_spawn"):
        spawn: Any = getattr(fastreap, "spawn", None)
        kids: set[fastreap.Child] = set()
        while started < n or kids:
            while len(kids) < CONC and started < n:
                if kind == "fr_spawn":
                    kids.add(spawn([TRUE]))
                else:
                    kids.add(fastreap.watch(subprocess.Popen([TRUE])))
                started += 1
            _done, kids = fastreap.wait(kids, None, fastreap.FIRST_EXITED)
    else:
        raise ValueError(f"unknown case {kind!r}")
    return time.perf_counter() - t0


def _task(x: int) -> int:
    return x


def _pool(kind: str, n: int) -> float:
    """Seconds for n one-task children on WORKERS workers."""
    import multiprocessing

    t0 = time.perf_counter()
    if kind == "mp":
        with multiprocessing.get_context("fork").Pool(WORKERS, maxtasksperchild=1) as pool:
            got = pool.map(_task, range(n), chunksize=1)
    elif kind == "cf":
        import concurrent.futures

        cf: Any = concurrent.futures.ProcessPoolExecutor  # max_tasks_per_child: 3.11+
        with cf(WORKERS, max_tasks_per_child=1) as ex:
            got = list(ex.map(_task, range(n)))
    elif kind == "fr":
        import fastreap

        ppe: Any = fastreap.ProcessPoolExecutor  # type: ignore[attr-defined,unused-ignore]
        with ppe(WORKERS, max_tasks_per_child=1) as ex:
            got = list(ex.map(_task, range(n)))
    else:
        raise ValueError(f"unknown case {kind!r}")
    if got != list(range(n)):
        raise RuntimeError(f"pool {kind} returned wrong results")
    return time.perf_counter() - t0


def _aio(install: bool, n: int) -> float:
    import asyncio

    if install:
        import fastreap

        fastreap.install()  # type: ignore[attr-defined,unused-ignore]

    async def main() -> float:
        sem = asyncio.Semaphore(CONC)

        async def one() -> None:
            async with sem:
                p = await asyncio.create_subprocess_exec(TRUE)
                if await p.wait() != 0:
                    raise RuntimeError("/bin/true failed")

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t0

    return asyncio.run(main())


def case(kind: str, n: int) -> float:
    """Seconds for one case in this (fresh) process."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        area, _, what = kind.partition(":")
        if area == "fanout":
            return _fanout(what, n)
        if area == "pool":
            return _pool(what, n)
        if area == "aio":
            return _aio(what == "install", n)
    raise ValueError(f"unknown case {kind!r}")


_FORK = """
import os, sys, time
mode = sys.argv[1]
if mode == "stdlib":  # what watch/wait and handle_signals import of the stdlib
    import dataclasses, multiprocessing.process, subprocess, threading, typing
elif mode != "none":
    import fastreap
if mode == "used":
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    assert fastreap.watch(pid).wait() == 3
    fastreap.handle_signals()
n = max(1, int(sys.argv[2]) // 5)
t = None
for _ in range(5):  # the best of 5 batches: other load only ever adds to a fork
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    b = (time.perf_counter_ns() - t0) / n / 1e3
    t = b if t is None else min(t, b)
faults = []
for _ in range(21):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    faults.append(os.wait4(pid, 0)[2].ru_minflt)
print(t, sorted(faults)[10])
"""


def _fork_case(mode: str, n: int) -> tuple[float, int]:
    """(us per child, the child's minor faults) in a fresh interpreter that
    imports nothing of fastreap unless asked (fresh() would import it)."""
    r = subprocess.run(
        [sys.executable, "-c", _FORK, mode, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    us, faults = r.stdout.split()[-2:]
    return float(us), int(faults)


def run(quick: bool, progress: Progress) -> list[Result]:
    import fastreap

    rounds = pick(quick, 5, 2, 1)
    n_fan = pick(quick, 2000, 300, 20)
    n_pool = pick(quick, 1000, 100, 8)
    n_cf = pick(quick, 100, 8, 8)
    n_aio = pick(quick, 2000, 300, 20)
    n_fork = pick(quick, 1000, 200, 10)
    g_fan = f"fan-out {n_fan:,} {TRUE} at {CONC} concurrent, per child"
    g_pool = f"{n_pool:,} one-task children on {WORKERS} workers, per task"
    g_aio = f"asyncio {n_aio:,} create_subprocess_exec({TRUE!r}), semaphore {CONC}, per child"
    g_fork = f"fork + _exit + waitpid, best of 5 x {n_fork // 5:,}, in a fresh interpreter, per child"
    g_used = f"fork + _exit + waitpid, best of 5 x {n_fork // 5:,}, after fastreap's first use, per child"
    goal_spawn = Goal(
        ">= 1.1x faster than os.wait loop and <= 1.3x C",
        OSWAIT,
        1 / 1.1,
        also=Goal("", C_SPAWN, 1.3),
    )
    # (row, case key, n, unit scale: seconds -> unit per item)
    cases: list[tuple[Result, str, int, float]] = [
        (Result(g_fan, OSWAIT, "us"), "fanout:oswait", n_fan, 1e6 / n_fan),
        (Result(g_fan, POLL, "us", baseline=OSWAIT), "fanout:poll", n_fan, 1e6 / n_fan),
        (Result(g_fan, C_SPAWN, "us", baseline=OSWAIT), "fanout:c", n_fan, 1e6 / n_fan),
        (Result(g_fan, FR_WATCH, "us", baseline=OSWAIT), "fanout:fr_watch", n_fan, 1e6 / n_fan),
        (
            Result(g_fan, FR_SPAWN, "us", baseline=OSWAIT, goal=goal_spawn),
            "fanout:fr_spawn",
            n_fan,
            1e6 / n_fan,
        ),
        (Result(g_pool, MP_POOL, "ms"), "pool:mp", n_pool, 1e3 / n_pool),
        (Result(g_pool, CF_POOL, "ms", baseline=MP_POOL), "pool:cf", n_cf, 1e3 / n_cf),
        (
            Result(
                g_pool,
                FR_POOL,
                "ms",
                baseline=MP_POOL,
                goal=Goal(
                    ">= 1.3x faster than mp.Pool and >= 10x cf", MP_POOL, 1 / 1.3, also=Goal("", CF_POOL, 0.1)
                ),
            ),
            "pool:fr",
            n_pool,
            1e3 / n_pool,
        ),
        (Result(g_aio, AIO, "us"), "aio:plain", n_aio, 1e6 / n_aio),
        (
            Result(g_aio, AIO_FR, "us", baseline=AIO, goal=Goal(">= 1.5x faster than without", AIO, 1 / 1.5)),
            "aio:install",
            n_aio,
            1e6 / n_aio,
        ),
    ]
    rows = {key: row for row, key, _n, _s in cases}
    if not hasattr(fastreap, "spawn"):
        rows["fanout:fr_spawn"].skipped = "fastreap.spawn is not in this build (issue 13)"
    if sys.version_info < (3, 11):
        rows["pool:cf"].skipped = "max_tasks_per_child needs Python 3.11+"
    elif n_cf != n_pool:
        rows["pool:cf"].note = f"spawn start method: measured on {n_cf} tasks, not {n_pool:,}"
    if not hasattr(fastreap, "ProcessPoolExecutor"):
        rows["pool:fr"].skipped = "fastreap.ProcessPoolExecutor is not in this build (issue 13)"
    if not hasattr(fastreap, "install"):
        rows["aio:install"].skipped = "fastreap.install() is not in this build (issue 13)"
    rows["fanout:c"].note = "reaps with waitpid(-1), as only a program owning every child can"
    fork = Result(g_fork, FORK, "us")
    fork_fr = Result(g_fork, FORK_FR, "us", baseline=FORK, goal=Goal("<= 1.05x without", FORK, 1.05))
    stdlib = Result(g_used, FORK_STDLIB, "us")
    used = Result(g_used, FORK_USED, "us", baseline=FORK_STDLIB)
    forks = [(fork, "none"), (fork_fr, "import"), (stdlib, "stdlib"), (used, "used")]
    faults: dict[str, list[int]] = {mode: [] for _r, mode in forks}
    for i in range(rounds):
        for row, key, n, scale in cases:
            if row.skipped:
                continue
            progress(f"churn round {i + 1}/{rounds}: {key}")
            row.samples.append(fresh(__name__, "case", kind=key, n=n) * scale)
        progress(f"churn round {i + 1}/{rounds}: fork")
        for row, mode in forks:
            us, flt = _fork_case(mode, n_fork)
            row.samples.append(us)
            faults[mode].append(flt)
    for row, mode in forks:
        row.note = f"the child's minor page faults (ru_minflt): {statistics.median_low(faults[mode])}"
    imported = "dataclasses, multiprocessing.process, subprocess, threading, typing"
    stdlib.note = f"imports {imported}; {stdlib.note}"
    return [row for row, _k, _n, _s in cases] + [fork, fork_fr, stdlib, used]
