"""Benchmark of stopping many children within one grace period.

N children (1,000; quick: 200), 30% of which ignore SIGTERM, grace 1 s. Each
method starts from the same thing, a list of pids of children already running
(the ignoring ones have set their trap: they said so on a shared pipe), and
the clock stops when every child is reaped. The baseline is the ideal, measured
in the same run: the grace period plus the time to SIGKILL and reap N such
children with a plain ``os.kill`` + ``os.waitpid`` loop (nobody can stop a
child that ignores SIGTERM sooner than the grace period, nor reap N children
faster than that loop). Goal for ``fastreap.graceful_stop``: within 1.05x.

Compared, in one run: ``fastreap.graceful_stop``; ``psutil`` (terminate each,
``wait_procs(timeout=grace)``, kill the rest, ``wait_procs``) when installed;
and the stdlib loop ``p.terminate(); p.wait(grace)`` (``kill`` on timeout) per
``subprocess.Popen``. That loop spends the whole grace period on each ignoring
child in turn (300 s for N = 1,000), so it is measured on a small N and
extrapolated linearly to N (same mix); its note says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from . import _cref
from ._util import IDLE, Goal, Progress, Result, fresh, lifeline, pick, spawn_idle

GRACE = 1.0
SHARE_IGNORING = 0.3
# Idle children read the lifeline (see _util.lifeline): they outlive no benchmark.
_IGNORER = ["sh", "-c", 'trap "" TERM; echo; exec cat']
_POLITE = IDLE


def _spawn_mix(n: int) -> list[int]:
    """n children, 30% ignoring SIGTERM, returned once the ignoring ones have
    their trap set (each writes one line to a shared pipe)."""
    n_ign = round(n * SHARE_IGNORING)
    r, w = os.pipe()
    pids: list[int] = []
    try:
        for i in range(n):
            if i % 10 < SHARE_IGNORING * 10:  # spread them out: 3 in every 10
                pids.append(
                    os.posix_spawn(
                        "/bin/sh",
                        _IGNORER,
                        os.environ,
                        file_actions=[(os.POSIX_SPAWN_DUP2, lifeline(), 0), (os.POSIX_SPAWN_DUP2, w, 1)],
                    )
                )
            else:
                pids.append(spawn_idle())
        os.close(w)
        w = -1
        got = 0
        while got < n_ign:
            chunk = os.read(r, 65536)
            if not chunk:
                raise RuntimeError("an ignoring child died before setting its trap")
            got += chunk.count(b"\n")
    except BaseException:
        _kill_reap(pids)
        raise
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return pids


def _kill_reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _ideal(n: int) -> float:
    pids = _spawn_mix(n)
    t0 = time.monotonic()
    _kill_reap(pids)
    return GRACE + (time.monotonic() - t0)


def _fastreap(n: int) -> float:
    import fastreap

    pids = _spawn_mix(n)
    t0 = time.monotonic()
    r = fastreap.graceful_stop(pids, GRACE)
    dt = time.monotonic() - t0
    if len(r.returncodes) != n or r.lost or r.alive:
        raise RuntimeError("graceful_stop left a child unreaped")
    return dt


def _psutil_stop(pids: list[int]) -> None:
    """psutil's recipe: terminate all, wait_procs to one deadline, kill the rest."""
    import psutil  # type: ignore[import-untyped,unused-ignore]

    procs = [psutil.Process(p) for p in pids]
    for p in procs:
        p.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=GRACE)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive)


def _psutil(n: int) -> float:
    pids = _spawn_mix(n)
    t0 = time.monotonic()
    _psutil_stop(pids)
    return time.monotonic() - t0


def _stdlib_loop(n: int) -> float:
    procs = []
    for i in range(n):
        if i % 10 < SHARE_IGNORING * 10:
            p = subprocess.Popen(_IGNORER, stdin=lifeline(), stdout=subprocess.PIPE)
            assert p.stdout is not None
            p.stdout.readline()
            p.stdout.close()
        else:
            p = subprocess.Popen(_POLITE, stdin=lifeline())
        procs.append(p)
    t0 = time.monotonic()
    for p in procs:
        p.terminate()
        try:
            p.wait(GRACE)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return time.monotonic() - t0


def _mix_rows(quick: bool, progress: Progress) -> list[Result]:
    """Stop N children, 30% ignoring SIGTERM, grace 1 s, by each method."""
    n = pick(quick, 1000, 100, 10)
    rounds = pick(quick, 3, 1, 1)
    n_loop = pick(quick, 20, 4, 2)
    group = f"stop {n:,} children ({SHARE_IGNORING:.0%} ignore SIGTERM), grace {GRACE:g} s"
    ideal = Result(group, "ideal: grace + SIGKILL & reap all", "s", note="os.kill+os.waitpid loop, measured")
    fr = Result(
        group,
        "fastreap.graceful_stop",
        "s",
        baseline=ideal.name,
        goal=Goal("<= 1.05x ideal", ideal.name, 1.05),
    )
    ps = Result(group, "psutil terminate+wait_procs+kill", "s", baseline=ideal.name)
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        ps.skipped = "psutil is not installed"
    for i in range(rounds):
        progress(f"stop round {i + 1}/{rounds}: ideal")
        ideal.samples.append(_ideal(n))
        progress(f"stop round {i + 1}/{rounds}: fastreap.graceful_stop")
        fr.samples.append(_fastreap(n))
        if not ps.skipped:
            progress(f"stop round {i + 1}/{rounds}: psutil")
            ps.samples.append(_psutil(n))
    progress(f"stop: stdlib loop on {n_loop} children")
    measured = _stdlib_loop(n_loop)
    loop = Result(
        group,
        "stdlib p.terminate(); p.wait(grace) loop",
        "s",
        [measured * n / n_loop],
        baseline=ideal.name,
        extrapolated=True,
        note=f"extrapolated x{n // n_loop} from {n_loop} children measured in {measured:.2f} s",
    )
    return [ideal, fr, ps, loop]


# ------------------------------------------- staggered exits (issue 16's case)

STAGGER = 2.0  # child i exits STAGGER * i / (n - 1) s after SIGTERM


def _stagger_child(delay: float) -> None:
    """In a forked child: wait for SIGTERM (blocked since before the fork, so
    it is never lost), sleep ``delay``, exit."""
    signal.sigwait({signal.SIGTERM})
    time.sleep(delay)
    os._exit(0)


def _fork_staggered(n: int) -> list[int]:
    import warnings

    pids: list[int] = []
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            for i in range(n):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - child
                    try:
                        _stagger_child(STAGGER * i / max(n - 1, 1))
                    finally:
                        os._exit(1)
                pids.append(pid)
    except BaseException:
        _kill_reap(pids)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return pids


def _mp_staggered(n: int) -> list[Any]:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    procs = []
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        for i in range(n):
            p = ctx.Process(target=_stagger_child, args=(STAGGER * i / max(n - 1, 1),))
            p.start()
            procs.append(p)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return procs


def stagger_case(case: str, n: int) -> float:
    """One staggered stop by ``case``, in a fresh process (see fresh())."""
    import fastreap

    if case == "c":
        return _cref.stop_limit(_fork_staggered(n), GRACE)
    if case == "c_mp":
        procs = _mp_staggered(n)
        dt = _cref.stop_limit([p.pid for p in procs], GRACE)
        for p in procs:
            p._popen.returncode = 0  # reaped by the C loop: nothing left for multiprocessing to wait for
        return dt
    if case in ("fastreap", "stdlib"):
        procs = _mp_staggered(n)
        t0 = time.monotonic()
        if case == "fastreap":
            r = fastreap.graceful_stop(procs, GRACE)
            if r.lost or r.alive:
                raise RuntimeError("graceful_stop left a child unreaped")
        else:
            deadline = t0 + GRACE
            for p in procs:
                p.terminate()
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
            for p in procs:
                if p.exitcode is None:
                    p.kill()
            for p in procs:
                p.join()
        return time.monotonic() - t0
    pids = _fork_staggered(n)
    t0 = time.monotonic()
    if case in ("fastreap_pids", "fastreap_sigchld"):
        want = "sigchld" if case == "fastreap_sigchld" else "pidfd"
        if fastreap.counters()["backend"] != want:
            raise RuntimeError(f"the {want} backend is not in use")
        r = fastreap.graceful_stop(pids, GRACE)
        if r.lost or r.alive:
            raise RuntimeError("graceful_stop left a child unreaped")
    elif case == "psutil":
        _psutil_stop(pids)
    else:
        raise ValueError(f"unknown case {case!r}")
    return time.monotonic() - t0


def _stagger_rows(quick: bool, progress: Progress) -> list[Result]:
    """Two groups, each against the C limit on the same kind of children:
    bare ``os.fork`` children (pids, psutil) and ``multiprocessing.Process``
    children (fastreap on Process objects, the stdlib join loop). The same
    C loop takes several times longer to kill and reap 1,000
    multiprocessing children than 1,000 bare fork children (measured; they
    hold more: every earlier child's pipe ends, more written-to memory), so
    comparing one kind with the C limit on the other measures the children,
    not the stopper."""
    n = pick(quick, 1000, 100, 10)
    rounds = pick(quick, 5, 1, 1)
    how = f"child i exits {STAGGER:g} s*i/{n - 1} after SIGTERM, grace {GRACE:g} s"
    fork_group = f"stop {n:,} fork children, {how}"
    mp_group = f"stop {n:,} multiprocessing.Process (fork) children, {how}"
    limit = "C limit: TERM all, reap to one deadline, KILL rest"
    goal = Goal("<= 1.1x C limit", limit, 1.1)
    available = fastreap_backends()
    cases: list[tuple[Result, str, dict[str, str]]] = [
        (Result(fork_group, limit, "s"), "c", {}),
        (
            Result(fork_group, "fastreap.graceful_stop(pids), pidfd path", "s", baseline=limit, goal=goal),
            "fastreap_pids",
            {"FASTREAP_BACKEND": "pidfd"},
        ),
        (
            Result(fork_group, "fastreap.graceful_stop(pids), SIGCHLD path", "s", baseline=limit, goal=goal),
            "fastreap_sigchld",
            {"FASTREAP_BACKEND": "sigchld"},
        ),
        (Result(fork_group, "psutil wait_procs(timeout=grace)", "s", baseline=limit), "psutil", {}),
        (Result(mp_group, limit, "s", note="on the same multiprocessing children"), "c_mp", {}),
        (
            Result(mp_group, "fastreap.graceful_stop(processes), pidfd path", "s", baseline=limit, goal=goal),
            "fastreap",
            {},
        ),
        (
            Result(mp_group, "stdlib terminate + join(shared deadline) + kill", "s", baseline=limit),
            "stdlib",
            {},
        ),
    ]
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        cases[3][0].skipped = "psutil is not installed"
    if "pidfd" not in available:
        cases[1][0].skipped = cases[5][0].skipped = "no pidfd on this kernel"
    for i in range(rounds):
        for row, case, env in cases:
            if row.skipped:
                continue
            progress(f"staggered stop round {i + 1}/{rounds}: {case}")
            row.samples.append(fresh(__name__, "stagger_case", env=env, case=case, n=n))
    for row, _c, _e in cases:
        if not row.skipped and row.name == limit:
            row.note = "; ".join(x for x in ("each round in a fresh process", row.note) if x)
    return [row for row, _c, _e in cases]


def fastreap_backends() -> set[str]:
    """The backends this machine offers (SIGCHLD always; pidfd on Linux >= 5.3)."""
    from fastreap import _core

    out = {"sigchld"}
    if _core.IS_LINUX and _core.have_pidfd():
        out.add("pidfd")
    return out


def run(quick: bool, progress: Progress) -> list[Result]:
    """Both stop benchmarks."""
    return _mix_rows(quick, progress) + _stagger_rows(quick, progress)
