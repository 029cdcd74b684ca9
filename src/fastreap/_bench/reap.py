"""Benchmarks of the parent side: fork cost, exit-to-notice latency and per-exit cost.

Fork cost: fork + ``_exit`` + reap per child, in a C loop (``_cref.fork_wait``)
and from Python, interleaved.

Latency is measured from ``kill(pid, SIGKILL)`` to the moment the waiter
returns with the child reaped: a helper thread records the time and sends the
signal while the main thread is already blocked in the method under test, so
every method pays the same signal delivery and exit; only the noticing differs.
The baseline is ``os.pidfd_open`` + ``select.poll`` + ``os.waitpid`` measured
in the same run. Per-exit cost keeps N watched idle ``cat`` children (see _util.lifeline) alive and
times the notice of one more exiting child (goal: flat in N). One run of one
such case swings by up to 2x, so they run in interleaved rounds, each a fresh
process with every case in it (``per_exit_round``), medians over all samples;
beside them a kernel floor: the same kill and exit noticed by plain Python
(``os.pidfd_open`` + ``select.poll`` + ``os.wait4``) with N idle children alive
and nobody watching them. The floor also shows the machine's own share: on a
2-core VM with DAMON on, its kernel thread (kdamond) took ~35% of a CPU in
~0.3 s bursts while 10,000 idle children were alive (nothing once they were
gone), which slows whole rounds at 10,000 to milliseconds per exit, floor and
fastreap alike (the p90s; a median once about half its samples are hit).
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from . import _cref
from ._util import IDLE, Goal, Progress, Result, fresh, lifeline, pick, settle, spawn_idle


def _spawn() -> int:
    return spawn_idle()


class _Killer:
    """A thread that, on request, waits a moment (so the main thread is
    blocked), notes the time and SIGKILLs a pid."""

    def __init__(self) -> None:
        self.q: queue.Queue[int | None] = queue.Queue()
        self.t0 = 0
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self) -> None:
        while True:
            pid = self.q.get()
            if pid is None:
                return
            time.sleep(0.002)
            self.t0 = time.monotonic_ns()
            os.kill(pid, signal.SIGKILL)

    def arm(self, pid: int) -> None:
        self.q.put(pid)

    def close(self) -> None:
        self.q.put(None)
        self.th.join()


def _measure(
    killer: _Killer, start: Callable[[], object], block: Callable[[object], None], n: int
) -> list[float]:
    out = []
    for _ in range(n):
        h = start()
        pid = h if isinstance(h, int) else h.pid  # type: ignore[attr-defined]
        killer.arm(pid)
        block(h)
        out.append((time.monotonic_ns() - killer.t0) / 1000.0)
    return out


def _latency(live: int, n: int, killer: _Killer) -> list[Result]:
    """Exit-to-notice for each method, interleaved (one child of each in
    turn, n rounds) so that drift in the machine's state hits them alike."""
    import fastreap

    group = f"exit-to-notice latency, idle child SIGKILLed, {live} live"
    base = "os.pidfd_open+select.poll"
    goal = Goal("<= 1.2x os.pidfd_open+poll", base, 1.2)
    others = [_spawn() for _ in range(live - 1)]
    other_kids = [fastreap.watch(p) for p in others]
    have_pidfd = hasattr(os, "pidfd_open")
    other_fds = [os.pidfd_open(p) for p in others] if have_pidfd else []
    try:

        def pidfd_block(pid: object) -> None:
            # pidfd_open comes before the kill here too (the killer waits 2 ms)
            fd = os.pidfd_open(pid)  # type: ignore[arg-type]
            p = select.poll()
            p.register(fd, select.POLLIN)
            for o in other_fds:
                p.register(o, select.POLLIN)
            p.poll()
            os.waitpid(pid, 0)  # type: ignore[arg-type]
            os.close(fd)

        def fr_start() -> object:
            return fastreap.watch(_spawn())

        def fr_wait(c: object) -> None:
            fastreap.wait([c, *other_kids], None, fastreap.FIRST_EXITED)  # type: ignore[list-item]  # a Child

        methods: list[tuple[Result, Callable[[], object], Callable[[object], None]]] = []
        if have_pidfd:
            methods.append((Result(group, base, "us"), _spawn, pidfd_block))
        bl = base if have_pidfd else None
        methods += [
            (
                Result(group, "fastreap Child.wait()", "us", baseline=bl, goal=goal),
                fr_start,
                lambda c: c.wait(),  # type: ignore[attr-defined]
            ),
            (Result(group, "fastreap.wait(FIRST_EXITED)", "us", baseline=bl, goal=goal), fr_start, fr_wait),
            (
                Result(group, "Popen.wait(timeout)", "us", baseline=bl),
                lambda: subprocess.Popen(IDLE, stdin=lifeline()),
                lambda p: p.wait(600),  # type: ignore[attr-defined]
            ),
        ]
        try:
            import psutil
        except ImportError:
            psutil = None
        if psutil is not None:

            def ps_block(pid: object) -> None:
                psutil.wait_procs([psutil.Process(pid)], timeout=600)

            methods.append((Result(group, "psutil.wait_procs", "us", baseline=bl), _spawn, ps_block))
        for _ in range(n):
            for row, start, block in methods:
                row.samples += _measure(killer, start, block, 1)
        rows = [row for row, _s, _b in methods]
        if psutil is None:
            rows.append(Result(group, "psutil.wait_procs", "us", skipped="psutil is not installed"))
        return rows
    finally:
        for fd in other_fds:
            os.close(fd)
        fastreap.kill(other_kids)


PER_EXIT = "per-exit cost (kill -> Child.wait returns)"
PER_EXIT_SIGCHLD = "per-exit cost, SIGCHLD path only"
FLOOR_NOTE = (
    "no fastreap: the kernel's own cost of one exit with this many idle children alive "
    "(unwatched), os.pidfd_open + select.poll + os.wait4 on the killed child, same kill"
)


def _floor_name(live: int) -> str:
    return f"floor: plain Python pidfd_open+poll+wait4, {live:,} live"


def _idle(live: int) -> list[int]:
    """live idle children, all started (see settle)."""
    pids: list[int] = []
    try:
        for _ in range(live):
            pids.append(_spawn())
        settle(pids)  # all started: time the parent, not their start-up queue
    except BaseException:
        _kill_unwatched(pids)
        raise
    return pids


def _kill_unwatched(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    for p in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(p, 0)


def _floor(pids: list[int], n: int, killer: _Killer) -> list[float]:
    """The kernel floor: notice and reap of one killed child by plain Python
    (its pidfd polled alone, wait4 with rusage as fastreap reaps), with the
    idle pids alive and nobody watching them."""

    def block(pid: object) -> None:
        fd = os.pidfd_open(pid)  # type: ignore[arg-type]  # before the kill: the killer waits 2 ms
        try:
            p = select.poll()
            p.register(fd, select.POLLIN)
            p.poll()
            os.wait4(pid, 0)  # type: ignore[arg-type]
        finally:
            os.close(fd)

    return _measure(killer, _spawn, block, n)


def _per_exit(
    live: int | list[int],
    n: int,
    killer: _Killer,
    nofile: int | None = None,
    sigchld_only: bool = False,
) -> dict[str, Any]:
    """Notice of one exit with ``live`` watched children alive (a number to
    spawn, or idle pids to watch). With ``nofile`` the soft RLIMIT_NOFILE is
    lowered to it and a fresh watcher sizes its pidfd budget from it (a
    quarter), so the rest take the SIGCHLD path; with ``sigchld_only`` a
    fresh watcher puts every child on the SIGCHLD path."""
    import resource

    import fastreap
    from fastreap import _watcher

    old_lim = resource.getrlimit(resource.RLIMIT_NOFILE)
    kids: list[fastreap.Child] = []
    with contextlib.ExitStack() as stack:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, old_lim[1]))
            stack.callback(resource.setrlimit, resource.RLIMIT_NOFILE, old_lim)
        if nofile is not None or sigchld_only:
            stack.enter_context(_watcher.swapped(use_pidfd=not sigchld_only))
        stack.callback(lambda: fastreap.kill(kids))  # before the watcher is put back
        if isinstance(live, list):
            try:
                for p in live:
                    kids.append(fastreap.watch(p))
            except BaseException:
                _kill_unwatched(live[len(kids) :])  # fastreap.kill takes the watched ones
                raise
        else:
            for _ in range(live):
                kids.append(fastreap.watch(_spawn()))
            settle([c.pid for c in kids])  # all started: time the parent, not their start-up queue
        on_sigchld = 0

        def start() -> fastreap.Child:
            # Which path the timed child takes: past the pidfd budget, the
            # SIGCHLD path (the 100-live baseline's is the pidfd path).
            nonlocal on_sigchld
            c = fastreap.watch(_spawn())
            if c.pid not in _watcher.current().pidfd_of:
                on_sigchld += 1
            return c

        before = fastreap.counters()
        samples = _measure(killer, start, lambda c: c.wait(), n)  # type: ignore[attr-defined]
        counts = fastreap.counters()
    return {
        "samples": samples,
        "backend": counts["backend"],
        "pidfds": counts["pidfds"],
        "loss_checks": counts["loss_checks"] - before["loss_checks"],
        "on_sigchld": on_sigchld,
    }


def per_exit_round(n: int, big: int) -> dict[str, Any]:
    """One round of every per-exit case, in this (fresh) process: n samples
    each. The floor at a size runs first, on idle children that nobody
    watches yet; fastreap's case at that size then watches the same ones
    (spawning thousands costs seconds, and no fastreap handler is installed
    while a floor runs)."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    killer = _Killer()
    out: dict[str, Any] = {}
    try:
        for key, live in (("100", 100), ("big", big)):
            if key == "big" and big > 1000:
                out["fr 1000"] = _per_exit(1000, n, killer)
            pool = _idle(live)
            try:
                out[f"floor {key}"] = {"samples": _floor(pool, n, killer)}
            except BaseException:
                _kill_unwatched(pool)
                raise
            out[f"fr {key}"] = _per_exit(pool, n, killer)
        out["nofile big"] = _per_exit(big, n, killer, nofile=1024)
        out["chld 100"] = _per_exit(100, n, killer, sigchld_only=True)
        out["chld big"] = _per_exit(big, n, killer, sigchld_only=True)
    finally:
        killer.close()
    return out


def _per_exit_rows(quick: bool, progress: Progress) -> list[Result]:
    """Every per-exit case, in >= 5 interleaved rounds (one fresh process
    each, every case in each): one run of one case swings by up to 2x, the
    median over the rounds does not. A kernel floor row in each group shows
    what the same exit costs with no fastreap at the same sizes."""
    rounds, n = pick(quick, (5, 12), (3, 4), (1, 2))
    big = pick(quick, 10000, 1000, 300)  # > 256: past the pidfd budget under nofile 1,024
    floors = {"floor 100": 100, "floor big": big}
    # key -> (group, name, live, nofile)
    cases: dict[str, tuple[str, str, int, int | None]] = {
        "fr 100": (PER_EXIT, "100 live", 100, None),
        "fr 1000": (PER_EXIT, "1,000 live", 1000, None),
        "fr big": (PER_EXIT, f"{big:,} live", big, None),
        "nofile big": (PER_EXIT, f"{big:,} live, nofile 1,024", big, 1024),
        "chld 100": (PER_EXIT_SIGCHLD, "100 live", 100, None),
        "chld big": (PER_EXIT_SIGCHLD, f"{big:,} live", big, None),
    }
    if big <= 1000:
        del cases["fr 1000"]
    rows: dict[str, Result] = {}
    for key, (group, name, live, _nf) in cases.items():
        rows[key] = Result(
            group,
            name,
            "us",
            baseline="100 live",
            goal=None if live == 100 else Goal("flat: <= 1.2x 100 live", "100 live", 1.2),
        )
    floor_rows: list[Result] = []
    for group in (PER_EXIT, PER_EXIT_SIGCHLD):
        for key, live in floors.items():
            r = Result(group, _floor_name(live), "us", note=FLOOR_NOTE)
            if live != 100:
                r.baseline = _floor_name(100)
                r.note = "the same method; these samples are in both per-exit groups"
            rows[f"{group}/{key}"] = r
            floor_rows.append(r)
    losses = dict.fromkeys(cases, 0)
    on_sigchld = dict.fromkeys(cases, 0)
    last: dict[str, Any] = {}
    for i in range(rounds):
        progress(f"per-exit cost, round {i + 1}/{rounds} (100 to {big:,} live, a fresh process)")
        got = fresh(__name__, "per_exit_round", n=n, big=big)
        for key in floors:
            for group in (PER_EXIT, PER_EXIT_SIGCHLD):
                rows[f"{group}/{key}"].samples += got[key]["samples"]  # one measurement, in both groups
        for key in cases:
            rows[key].samples += got[key]["samples"]
            losses[key] += got[key]["loss_checks"]
            on_sigchld[key] += got[key]["on_sigchld"]
            last[key] = got[key]
    how = f"{rounds} rounds x {n} exits, each round a fresh process"
    for key, (_g, _name, _live, nofile) in cases.items():
        lim = f"RLIMIT_NOFILE {nofile:,}: " if nofile is not None else ""
        c = last.get(key)
        if c is not None:
            rows[key].note = (
                f"{lim}{c['backend']}, {c['pidfds']:,} pidfds, rest on SIGCHLD; "
                f"{losses[key]} loss checks in {rounds * n} exits"
            )
            if c["backend"] == "pidfd":
                where = (
                    "SIGCHLD"
                    if on_sigchld[key] == rounds * n
                    else "pidfd"
                    if not on_sigchld[key]
                    else "mixed"
                )
                rows[key].note += f"; the timed child on the {where} path"
    rows["fr 100"].note += f" ({how})"
    rows["chld 100"].note += f" ({how})"
    return [rows[k] for k in cases] + floor_rows


def _fork_exit_waitpid(n: int) -> None:
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def _fork_watch_wait(n: int) -> None:
    import fastreap

    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        fastreap.watch(pid).wait()


def _popen_true(n: int) -> None:
    for _ in range(n):
        subprocess.Popen(["true"]).wait()


def _fork_cost(quick: bool, progress: Progress) -> list[Result]:
    """fork + _exit + reap per child, in C and from Python, interleaved (one
    batch of each in turn) so drift hits them all alike."""
    batch, repeat = pick(quick, (100, 15), (40, 5), (3, 2))
    g = "fork + exit + reap, per child"
    base = "C fork/_exit/waitpid loop"

    def c_loop(n: int) -> None:
        _cref.fork_wait(n)

    cases: list[tuple[Result, Callable[[int], object], int]] = [
        (Result(g, base, "us"), c_loop, batch),
        (Result(g, "os.fork + os._exit + os.waitpid", "us", baseline=base), _fork_exit_waitpid, batch),
        (Result(g, "os.fork + fastreap.watch(pid).wait()", "us", baseline=base), _fork_watch_wait, batch),
        (
            Result(
                g,
                "subprocess.Popen(['true']).wait()",
                "us",
                baseline=base,
                note="vfork/posix_spawn + exec of true: no copy of this process's page tables",
            ),
            _popen_true,
            max(5, batch // 2),
        ),
    ]
    with warnings.catch_warnings():
        # os.fork() warns when the process has threads (3.12+); the children
        # here only _exit, which is safe.
        warnings.simplefilter("ignore", DeprecationWarning)
        for i in range(repeat):
            progress(f"{g}: round {i + 1}/{repeat}")
            for row, fn, b in cases:
                t0 = time.perf_counter_ns()
                fn(b)
                row.samples.append((time.perf_counter_ns() - t0) / b / 1e3)
    return [row for row, _f, _b in cases]


def run(quick: bool, progress: Progress) -> list[Result]:
    """Run the reaping benchmarks (quick: a few samples each)."""
    n = pick(quick, 60, 10, 2)
    killer = _Killer()
    out: list[Result] = _fork_cost(quick, progress)
    try:
        for live in (1, 16):
            progress(f"latency with {live} live children")
            out += _latency(live, n, killer)
    finally:
        killer.close()
    return out + _per_exit_rows(quick, progress)
