"""Fresh interpreters for tests/test_fork.py: what ``import fastreap`` loads,
and what a fork child runs of fastreap (nothing, until it uses it).

    python fork_lazy.py SCENARIO

Prints ``RESULT <json>`` (the parent's, after its children) and exits 0 when
the scenario ran to the end; a child that fails exits non-zero and the
parent reports its code.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import traceback

# Modules that `import fastreap` must not load (their import time, memory
# and at-fork hooks would be paid by every program and every fork of it).
HEAVY = [
    "asyncio",
    "concurrent.futures",
    "dataclasses",
    "inspect",
    "logging",
    "multiprocessing",
    "subprocess",
    "threading",
    "typing",
    "weakref",
]


def result(**kw: object) -> None:
    print("RESULT", json.dumps(kw), flush=True)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def in_child(fn: object) -> int:
    """Run fn() in a fork child; its exit code (1 and a traceback on failure)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child
        code = 1
        try:
            code = fn()  # type: ignore[operator]
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def lazy_import() -> None:
    before = set(sys.modules)
    import fastreap

    loaded = sorted(set(sys.modules) - before)
    heavy = [m for m in HEAVY if m in sys.modules and m not in before]
    ours = [m for m in loaded if m.startswith("fastreap.")]
    # Every public name resolves on first access, and then the modules load.
    names = {n: hasattr(fastreap, n) for n in fastreap.__all__}
    ns: dict[str, object] = {}
    exec("from fastreap import *", ns)
    star = sorted(n for n in fastreap.__all__ if n in ns)
    result(
        heavy=heavy,
        ours=ours,
        missing=[n for n, ok in names.items() if not ok],
        star=star == sorted(fastreap.__all__),
        dir=set(fastreap.__all__) <= set(dir(fastreap)),
        watcher_now="fastreap._watcher" in sys.modules,
    )


def untouched_until_used() -> None:
    """After using watch/wait and handle_signals: a fork child finds the
    parent's state exactly as the fork left it (no Python hook ran), then
    its first use gives it its own, and it works."""
    import fastreap
    from fastreap import _core, _flags, _watcher

    assert fastreap.watch(_forked_exit(3)).wait(30) == 3
    flag = fastreap.handle_signals(signal.SIGUSR1, fastreap.StopFlag())
    ffd = flag.fileno()
    parent_w = _watcher.current()
    pfd = parent_w.pfd
    gen = _core.fork_generation()
    books = sorted(_flags._books._by_gen)
    assert pfd >= 0 and books == [gen]

    def child() -> int:
        # Before any use: the generation moved, nothing else did.
        assert _core.fork_generation() == gen + 1
        assert _watcher._current is parent_w and parent_w.pfd == pfd and not parent_w._closed
        os.fstat(pfd)  # still open: nothing was closed at fork time
        assert sorted(_flags._books._by_gen) == books
        assert parent_w.closed  # but it reports itself as the parent's
        # Our own signal: the handler gives the flag its own descriptor
        # (same number) before writing it, with no fastreap call from us.
        os.kill(os.getpid(), signal.SIGUSR1)
        assert readable(ffd) and flag.is_set()
        # First use: our own watcher; the parent's is closed here.
        w = _watcher.current()
        assert w is not parent_w and w.gen == gen + 1 and parent_w.pfd == -1
        assert fastreap.watch(_forked_exit(5)).wait(30) == 5
        f2 = fastreap.handle_signals(signal.SIGUSR2, fastreap.StopFlag())
        os.kill(os.getpid(), signal.SIGUSR2)
        assert f2.wait(10) and f2.signal == signal.SIGUSR2
        assert sorted(_flags._books._by_gen) == [gen + 1]
        fastreap.restore_signals()
        return 42

    code = in_child(child)
    # The child's signal reached neither our flag nor its descriptor.
    result(code=code, parent_flag=flag.is_set(), parent_fd=readable(ffd), gen=_core.fork_generation())
    fastreap.restore_signals()


def _forked_exit(code: int) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child
        os._exit(code)
    return pid


def stopped_rearmed() -> None:
    """One Stopped per handle_signals(exit=True), and a fork re-arms it."""
    import fastreap

    fastreap.handle_signals(signal.SIGTERM, exit=True)
    out: dict[str, object] = {}
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        out["first"] = "not raised"
    except fastreap.Stopped:
        out["first"] = "raised"

    def child() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            return 2  # not raised: the latch came over spent
        except fastreap.Stopped as e:
            return 40 if e.code == 143 else 3

    out["child"] = in_child(child)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        out["again"] = "not raised"  # spent here
    except fastreap.Stopped:
        out["again"] = "raised"
    fastreap.restore_signals()
    result(**out)


def grandchild() -> None:
    """A child that never used fastreap forks; the grandchild (two
    generations on) uses it: its own watcher, its children, its signals."""
    import fastreap

    assert fastreap.watch(_forked_exit(1)).wait(30) == 1
    fastreap.handle_signals(signal.SIGUSR1)

    def grand() -> int:
        from fastreap import _core

        assert _core.fork_generation() == 2
        assert fastreap.watch(_forked_exit(6)).wait(30) == 6
        os.kill(os.getpid(), signal.SIGUSR1)
        assert fastreap.stop_requested()
        flag = fastreap.handle_signals(signal.SIGUSR1)  # the default flag, already set here
        assert flag.wait(10) and readable(flag.fileno())
        return 43

    code = in_child(lambda: in_child(grand))
    result(code=code, parent_set=fastreap.stop_requested())
    fastreap.restore_signals()


def _fds() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


def refresh_race() -> None:
    """In each of many fork children, a handled signal (the C handler) and
    another thread's first flag call both try to give the flag its own
    descriptor, in whichever order they come: one replaces it (nothing
    leaks), the number stays, and the set flag's descriptor is readable; the
    parent's never is. (The CAS on the stamp decides; the window where both
    are inside at once is a few system calls, so this is a smoke test of
    the protocol, not proof.)"""
    import threading

    import fastreap

    flag = fastreap.handle_signals(signal.SIGUSR1, fastreap.StopFlag())
    ffd = flag.fileno()
    before = _fds()
    rounds = int(os.environ.get("ROUNDS", "100"))

    def child() -> int:
        go = threading.Event()
        got: list[int] = []

        def touch() -> None:
            go.wait()
            got.append(flag.fileno())
            flag.is_set()

        t = threading.Thread(target=touch)
        t.start()
        go.set()
        os.kill(os.getpid(), signal.SIGUSR1)
        t.join()
        ok = got == [ffd] and flag.is_set() and flag.wait(0) and readable(ffd)
        flag.clear()
        ok = ok and not readable(ffd) and _fds() == before
        return 44 if ok else 4

    codes = [in_child(child) for _ in range(rounds)]
    result(bad=[c for c in codes if c != 44], parent_fd=readable(ffd), parent_flag=flag.is_set())
    fastreap.restore_signals()


if __name__ == "__main__":
    globals()[sys.argv[1]]()
