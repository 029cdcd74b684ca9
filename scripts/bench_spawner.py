"""Churn figures for spawn/run_all, the pool and install() (issue 13).

    flock /tmp/fastreap-bench.lock python scripts/bench_spawner.py [--rounds 5] [--only fanout,pool,...]

Every variant runs once per round, the variants interleaved, and the median
rate over the rounds is printed with the spread (min..max) and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import fastreap

TRUE = "/bin/true"


def _task(x: int) -> int:
    return x + 1


# ---- fan-out ---------------------------------------------------------------


def fanout_popen_oswait(n: int, cap: int) -> None:
    live: dict[int, subprocess.Popen[bytes]] = {}
    started = 0
    while started < n or live:
        while started < n and len(live) < cap:
            p = subprocess.Popen([TRUE])
            live[p.pid] = p
            started += 1
        pid, status = os.wait()
        p = live.pop(pid)
        p.returncode = os.waitstatus_to_exitcode(status)


def fanout_spawn_wait(n: int, cap: int) -> None:
    live: set[fastreap.Child] = set()
    started = 0
    while started < n or live:
        while started < n and len(live) < cap:
            live.add(fastreap.spawn([TRUE]))
            started += 1
        _done, live = fastreap.wait(live, None, fastreap.FIRST_EXITED)


def fanout_run_all(n: int, cap: int) -> None:
    for _ in fastreap.run_all([[TRUE]] * n, max_concurrent=cap):
        pass


# ---- spawn cost --------------------------------------------------------------


def spawncost_popen(n: int, _cap: int) -> None:
    ps = [subprocess.Popen([TRUE]) for _ in range(n)]
    for p in ps:
        p.wait()


def spawncost_spawn(n: int, _cap: int) -> None:
    cs = [fastreap.spawn([TRUE]) for _ in range(n)]
    fastreap.wait(cs, None, fastreap.ALL_EXITED)


# ---- pool --------------------------------------------------------------------


def pool_fastreap(n: int, workers: int) -> None:
    with fastreap.ProcessPoolExecutor(workers, max_tasks_per_child=1) as ex:
        assert sum(ex.map(_task, range(n))) == n * (n + 1) // 2


def pool_mp(n: int, workers: int) -> None:
    with multiprocessing.get_context("fork").Pool(workers, maxtasksperchild=1) as p:
        assert sum(p.map(_task, range(n), chunksize=1)) == n * (n + 1) // 2


def pool_cf(n: int, workers: int) -> None:
    with concurrent.futures.ProcessPoolExecutor(workers, max_tasks_per_child=1) as ex:
        assert sum(ex.map(_task, range(n))) == n * (n + 1) // 2


# ---- asyncio -----------------------------------------------------------------


async def _aio(n: int, cap: int) -> None:
    sem = asyncio.Semaphore(cap)

    async def one() -> None:
        async with sem:
            p = await asyncio.create_subprocess_exec(TRUE)
            assert await p.wait() == 0

    await asyncio.gather(*(one() for _ in range(n)))


def aio_plain(n: int, cap: int) -> None:
    asyncio.run(_aio(n, cap))


def aio_installed(n: int, cap: int) -> None:
    fastreap.install()
    try:
        asyncio.run(_aio(n, cap))
    finally:
        fastreap.uninstall()


GROUPS: dict[str, list[tuple[str, Callable[[int, int], None], int, int]]] = {
    "fanout": [
        ("Popen + os.wait() loop", fanout_popen_oswait, 2000, 64),
        ("spawn + fastreap.wait(FIRST_EXITED)", fanout_spawn_wait, 2000, 64),
        ("run_all", fanout_run_all, 2000, 64),
    ],
    "spawncost": [
        ("subprocess.Popen x500 then wait", spawncost_popen, 500, 0),
        ("fastreap.spawn x500 then wait", spawncost_spawn, 500, 0),
    ],
    "pool": [
        ("fastreap.ProcessPoolExecutor(8, max_tasks_per_child=1)", pool_fastreap, 1000, 8),
        ("mp.Pool(8, maxtasksperchild=1) [fork]", pool_mp, 1000, 8),
    ],
    # Separate: on 3.11 its manager thread can die with KeyError (a CPython
    # max_tasks_per_child race) and hang the whole run.
    "poolcf": [
        ("fastreap.ProcessPoolExecutor(8, max_tasks_per_child=1)", pool_fastreap, 1000, 8),
        ("cf.ProcessPoolExecutor(8, max_tasks_per_child=1) [spawn], 40 tasks", pool_cf, 40, 8),
    ],
    "asyncio": [
        ("asyncio create_subprocess_exec, sem 64", aio_plain, 2000, 64),
        ("same with fastreap.install()", aio_installed, 2000, 64),
    ],
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="fanout,spawncost,pool,asyncio,poolcf")
    a = ap.parse_args()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}, rounds {a.rounds}"
    )
    for g in a.only.split(","):
        variants = GROUPS[g]
        rates: dict[str, list[float]] = {name: [] for name, *_ in variants}
        for _ in range(a.rounds):
            for name, fn, n, k in variants:
                t0 = time.perf_counter()
                fn(n, k)
                rates[name].append(n / (time.perf_counter() - t0))
        base = statistics.median(rates[variants[0][0]])
        print(f"== {g}")
        for name, *_ in variants:
            r = rates[name]
            med = statistics.median(r)
            print(f"  {name:70s} {med:9.0f}/s  ({min(r):.0f}..{max(r):.0f})  x{med / base:.2f}")
    print(f"load after {os.getloadavg()[0]:.1f}; counters {fastreap.counters()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
