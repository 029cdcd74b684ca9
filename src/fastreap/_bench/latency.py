"""Exit-to-reaped latency of an exec'd C child, every mechanism in a fresh process.

The child is a tiny C program (``_util.STAMPER_C``, compiled at bench time
with the system ``cc``) that waits for a byte on stdin, stamps
CLOCK_MONOTONIC into a shared page and ``_exit``\\s: no Python teardown in the
child, so the figure is the parent's mechanism. The clock stops when the
waiter returns with the child reaped. Each case runs in its own fresh
interpreter (one per round; cases interleaved round by round), with m = 1 and
m = 16 live children (the m - 1 others stay alive, watched by the same
mechanism). Ratios are against the C limit of the same run: pidfd_open + poll
for the pidfd cases, a SIGCHLD self-pipe for the SIGCHLD ones. Beside
``fastreap.aio`` runs plain asyncio with no fastreap (a loop reader on each
child's pidfd and a future): what asyncio itself costs over a blocking wait.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import signal
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _cref
from ._util import Goal, Progress, Result, fresh, pick, stamper

C_PIDFD = "C pidfd_open + poll (limit)"
PY_PIDFD = "plain Python os.pidfd_open + select.poll + os.waitpid"
FR_WATCH = "fastreap.watch(pid).wait(), pidfd path"
FR_WAIT = "fastreap.wait(FIRST_EXITED), pidfd path"
C_SIGCHLD = "C SIGCHLD self-pipe (limit)"
PY_SIGCHLD = "plain Python SIGCHLD + set_wakeup_fd + waitpid(-1, WNOHANG)"
FR_SIGCHLD = "fastreap.watch(pid).wait(), SIGCHLD path"
FR_AIO = "asyncio: await gather(fastreap.aio.wait(child)), pidfd path"
PY_AIO = "plain asyncio: loop.add_reader(os.pidfd_open) + future, await gather"

# name -> (case key, extra environment, baseline, goal)
CASES: list[tuple[str, str, dict[str, str], str | None, Goal | None]] = [
    (C_PIDFD, "c_pidfd", {}, None, None),
    (PY_PIDFD, "py_pidfd", {}, C_PIDFD, None),
    (FR_WATCH, "fr_watch", {}, C_PIDFD, Goal("<= 1.05x plain Python pidfd", PY_PIDFD, 1.05)),
    (FR_WAIT, "fr_wait", {}, C_PIDFD, Goal("<= 1.05x plain Python pidfd", PY_PIDFD, 1.05)),
    (FR_AIO, "fr_aio", {}, C_PIDFD, Goal("<= 1.2x blocking fastreap.wait", FR_WAIT, 1.2)),
    (PY_AIO, "py_aio", {}, C_PIDFD, None),
    (C_SIGCHLD, "c_sigchld", {}, None, None),
    (PY_SIGCHLD, "py_sigchld", {}, C_SIGCHLD, None),
    (
        FR_SIGCHLD,
        "fr_sigchld",
        {"FASTREAP_BACKEND": "sigchld"},
        C_SIGCHLD,
        Goal("<= 1.1x plain Python SIGCHLD", PY_SIGCHLD, 1.1),
    ),
]
LIVES = (1, 16)
# fastreap reaps with rusage (ExitStatus.user_time, system_time, max_rss:
# wait4, or waitid P_PIDFD with its rusage argument), which costs the kernel
# a few microseconds per exit; every baseline here does the same work (the C
# limits wait4, the plain Python loops os.wait4), so the rows compare the
# mechanisms, like for like. (The plain Python rows keep their names.)
RUSAGE = "reaps with rusage (wait4), as fastreap does"
# No fastreap in it, and no goal: what asyncio itself costs over a blocking
# wait, beside fastreap.aio's row (its goal is against the blocking
# fastreap.wait, which this floor shows asyncio alone already spends part of).
PY_AIO_NOTE = (
    "no fastreap: the asyncio floor; one reader per child whose callback removes it, "
    "closes the pidfd, wait4s and sets the future"
)


def _high(fd: int) -> int:
    """fd moved to >= 10 (close-on-exec), so a posix_spawn dup2 onto 0 or 3
    never finds its source already there (stdin may be closed)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    return _high(r), _high(w)


class _Stamps:
    """The shared page the stamping child writes (a memfd, passed as fd 3)."""

    def __init__(self) -> None:
        self.fd = _high(os.memfd_create("fastreap-bench-stamp", 0))
        os.ftruncate(self.fd, 4096)
        self.mm = mmap.mmap(self.fd, 4096)

    def clear(self) -> None:
        struct.pack_into("q", self.mm, 0, 0)

    def get(self) -> int:
        v: int = struct.unpack_from("q", self.mm, 0)[0]
        return v

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


def _spawn(exe: str, go_r: int, stamps: _Stamps) -> int:
    return os.posix_spawn(
        exe,
        [exe],
        os.environ,
        file_actions=[(os.POSIX_SPAWN_DUP2, go_r, 0), (os.POSIX_SPAWN_DUP2, stamps.fd, 3)],
    )


def _clock() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _py_loop(
    exe: str,
    stamps: _Stamps,
    n: int,
    live: int,
    setup: Callable[[list[int]], Any],
    register: Callable[[Any, int], Any],
    block: Callable[[Any, Any], None],
    finish: Callable[[Any, list[int]], None],
) -> list[float]:
    """n samples: spawn the child, register it (before it may exit), let it
    go, block until it is reaped; live - 1 others alive throughout."""
    idle_r, idle_w = _pipe()
    others = [_spawn(exe, idle_r, stamps) for _ in range(live - 1)]
    os.close(idle_r)
    out: list[float] = []
    state = setup(others)
    try:
        for _ in range(n):
            go_r, go_w = _pipe()
            stamps.clear()
            pid = _spawn(exe, go_r, stamps)
            os.close(go_r)
            h = register(state, pid)
            os.write(go_w, b"x")
            os.close(go_w)
            block(state, h)
            t1 = _clock()
            out.append((t1 - stamps.get()) / 1e3)
    finally:
        os.close(idle_w)  # the others read EOF and exit
        finish(state, others)
    return out


def _waitpids(pids: list[int]) -> None:
    for p in pids:
        os.waitpid(p, 0)


def _py_pidfd(exe: str, stamps: _Stamps, n: int, live: int) -> list[float]:
    def setup(others: list[int]) -> list[int]:
        return [os.pidfd_open(p) for p in others]

    def register(fds: list[int], pid: int) -> tuple[int, int]:
        return pid, os.pidfd_open(pid)

    def block(fds: list[int], h: tuple[int, int]) -> None:
        pid, fd = h
        p = select.poll()
        p.register(fd, select.POLLIN)
        for o in fds:
            p.register(o, select.POLLIN)
        p.poll()
        os.wait4(pid, 0)  # with rusage, as fastreap's reap (the row's name predates that: see RUSAGE)
        os.close(fd)

    def finish(fds: list[int], others: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        _waitpids(others)

    return _py_loop(exe, stamps, n, live, setup, register, block, finish)


def _fr(exe: str, stamps: _Stamps, n: int, live: int, first_exited: bool) -> list[float]:
    import fastreap

    def setup(others: list[int]) -> list[fastreap.Child]:
        return [fastreap.watch(p) for p in others]

    def register(kids: list[fastreap.Child], pid: int) -> fastreap.Child:
        return fastreap.watch(pid)

    def block(kids: list[fastreap.Child], c: fastreap.Child) -> None:
        if first_exited:
            fastreap.wait([c, *kids], None, fastreap.FIRST_EXITED)
        else:
            c.wait()

    def finish(kids: list[fastreap.Child], others: list[int]) -> None:
        for k in kids:
            k.wait()

    return _py_loop(exe, stamps, n, live, setup, register, block, finish)


def _py_sigchld(exe: str, stamps: _Stamps, n: int, live: int) -> list[float]:
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    old = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    old_fd = signal.set_wakeup_fd(w)
    poll = select.poll()
    poll.register(r, select.POLLIN)

    def block(state: None, pid: int) -> None:
        while True:
            poll.poll()
            try:
                while os.read(r, 512):
                    pass
            except BlockingIOError:
                pass
            while True:
                got, _st, _ru = os.wait4(-1, os.WNOHANG)  # with rusage: see RUSAGE
                if got == pid:
                    return
                if got == 0:
                    break

    try:
        return _py_loop(
            exe, stamps, n, live, lambda o: None, lambda s, pid: pid, block, lambda s, o: _waitpids(o)
        )
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGCHLD, old)
        os.close(r)
        os.close(w)


def _aio_loop(
    exe: str, stamps: _Stamps, n: int, live: int, arm: Callable[[int], Awaitable[Any]]
) -> list[float]:
    """_py_loop on an asyncio loop: arm(pid), called right after each spawn
    (before its child may exit), gives what to await for that child; the
    live - 1 others' awaitables stay pending meanwhile, the measured child's
    is awaited through asyncio.gather."""
    import asyncio

    async def main() -> list[float]:
        idle_r, idle_w = _pipe()
        pending = [asyncio.ensure_future(arm(_spawn(exe, idle_r, stamps))) for _ in range(live - 1)]
        os.close(idle_r)
        out: list[float] = []
        try:
            for _ in range(n):
                go_r, go_w = _pipe()
                stamps.clear()
                waiting = arm(_spawn(exe, go_r, stamps))
                os.close(go_r)
                os.write(go_w, b"x")
                os.close(go_w)
                await asyncio.gather(waiting)
                t1 = _clock()
                out.append((t1 - stamps.get()) / 1e3)
        finally:
            os.close(idle_w)
            await asyncio.gather(*pending)
        return out

    return asyncio.run(main())


def _fr_aio(exe: str, stamps: _Stamps, n: int, live: int) -> list[float]:
    import fastreap
    import fastreap.aio

    return _aio_loop(exe, stamps, n, live, lambda pid: fastreap.aio.wait(fastreap.watch(pid)))


def _py_aio(exe: str, stamps: _Stamps, n: int, live: int) -> list[float]:
    """What asyncio itself costs: one loop reader per child on its pidfd, a
    future set by the reader's callback (remove the reader, close the pidfd,
    wait4 with rusage)."""
    import asyncio

    def arm(pid: int) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fd = os.pidfd_open(pid)
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            os.wait4(pid, 0)  # with rusage: see RUSAGE
            fut.set_result(None)

        loop.add_reader(fd, ready)
        return fut

    return _aio_loop(exe, stamps, n, live, arm)


def case(case: str, exe: str, n: int) -> dict[str, list[float]]:
    """One case at each m, in this (fresh) process; latencies in us."""
    import warnings

    stamps = _Stamps()
    out: dict[str, list[float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for live in LIVES:
                if case in ("c_pidfd", "c_sigchld"):
                    ns = _cref.exit_latency(case[2:], exe, stamps.fd, n, live)
                    got = [x / 1e3 for x in ns]
                elif case == "py_pidfd":
                    got = _py_pidfd(exe, stamps, n, live)
                elif case == "fr_watch":
                    got = _fr(exe, stamps, n, live, first_exited=False)
                elif case == "fr_wait":
                    got = _fr(exe, stamps, n, live, first_exited=True)
                elif case == "fr_sigchld":
                    import fastreap

                    if fastreap.counters()["backend"] != "sigchld":
                        raise RuntimeError("FASTREAP_BACKEND=sigchld did not take effect")
                    got = _fr(exe, stamps, n, live, first_exited=False)
                elif case == "py_sigchld":
                    got = _py_sigchld(exe, stamps, n, live)
                elif case == "fr_aio":
                    got = _fr_aio(exe, stamps, n, live)
                elif case == "py_aio":
                    got = _py_aio(exe, stamps, n, live)
                else:
                    raise ValueError(f"unknown case {case!r}")
                if any(x <= 0 for x in got):
                    raise RuntimeError(f"{case}: a child did not stamp")
                out[str(live)] = got
    finally:
        stamps.close()
    return out


def run(quick: bool, progress: Progress) -> list[Result]:
    rounds, n = pick(quick, (15, 20), (3, 8), (1, 2))
    groups = {live: f"exit-to-reaped latency, exec'd C stamping child, {live} live" for live in LIVES}
    rows = {
        (live, name): Result(groups[live], name, "us", baseline=base, goal=goal)
        for live in LIVES
        for name, _k, _e, base, goal in CASES
    }
    out = list(rows.values())
    exe, why = stamper()
    have_pidfd = hasattr(os, "pidfd_open")
    if exe is None or not have_pidfd:
        reason = why or "no pidfd on this system (Linux >= 5.3)"
        for r in out:
            r.skipped = reason
        if exe is not None:  # the SIGCHLD cases run without pidfds
            for r in out:
                if "SIGCHLD" in r.name:
                    r.skipped = ""
        else:
            return out
    for i in range(rounds):
        for name, key, env, _b, _g in CASES:
            if rows[(1, name)].skipped:
                continue
            progress(f"exit latency round {i + 1}/{rounds}: {key}")
            got = fresh(__name__, "case", env=env, case=key, exe=exe, n=n)
            for live in LIVES:
                rows[(live, name)].samples += got[str(live)]
    how = f"{rounds} rounds x {n} children per case, each round a fresh process; {RUSAGE}"
    for live in LIVES:
        rows[(live, C_PIDFD)].note = how
        for name in (C_SIGCHLD, PY_PIDFD, PY_SIGCHLD):
            rows[(live, name)].note = RUSAGE
        rows[(live, PY_AIO)].note = PY_AIO_NOTE
    return out
