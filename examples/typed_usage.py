"""The public API as a typed program: `mypy --strict` checks it (scripts/lint.sh)
and it also runs (python examples/typed_usage.py), so the types it relies on are
the ones the package really returns."""

from __future__ import annotations

import signal
import subprocess
import sys

import fastreap


def worker_side() -> None:
    """Stop flags: set by hand here; by SIGTERM/SIGINT in a real worker."""
    flag: fastreap.StopFlag = fastreap.StopFlag()
    assert not flag.is_set() and not flag
    assert flag.wait(timeout=0.0) is False
    fd: int = flag.fileno()
    assert fd >= 0
    flag.set()
    assert flag.wait(0.0) and bool(flag)
    who: int | None = flag.sender_pid
    sig: int | None = flag.signal
    assert who is None and sig is None  # set by hand, not by a signal
    flag.clear()

    with fastreap.graceful([signal.SIGUSR1]) as default:
        assert isinstance(default, fastreap.StopFlag)
        stopping: bool = fastreap.stop_requested()
        assert not stopping
    mine = fastreap.handle_signals(signal.SIGUSR2, flag)
    assert mine is flag
    fastreap.restore_signals([signal.SIGUSR2])

    code: int | str | None = fastreap.Stopped(signal.SIGTERM).code
    assert code == 128 + signal.SIGTERM


def sleeper(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def parent_side() -> None:
    """Watch, wait for and stop children; read how they ended."""
    quick = fastreap.watch(sleeper(0))
    target: fastreap.Target = sleeper(60).pid  # a bare pid works too
    slow = fastreap.watch(target)
    done, pending = fastreap.wait([quick, slow], timeout=30, return_when=fastreap.FIRST_EXITED)
    assert quick in done and slow in pending

    rc: int | None = quick.wait()
    assert rc == 0 and quick.returncode == 0 and not quick.is_alive()
    status: fastreap.ExitStatus | None = quick.status
    assert status is not None and status.exit_code == 0 and status.signal is None
    user: float | None = status.user_time
    rss: int | None = status.max_rss
    print(f"pid {status.pid}: exit {status.exit_code}, user {user}, max_rss {rss}")

    report: fastreap.StopReport = fastreap.graceful_stop([slow], timeout=5.0)
    took: float = report.elapsed
    codes: dict[int, int] = report.returncodes  # only the finished: exited + killed
    assert codes[slow.pid] == -signal.SIGTERM
    assert [c.pid for c in report.exited] == [slow.pid] and not report.killed
    assert not report.lost and not report.alive
    print(f"stopped {len(report.exited)} in {took:.3f}s: {codes}")

    for stop in (fastreap.terminate, fastreap.kill):
        r = stop([sleeper(60)])
        assert r.returncodes and all(v < 0 for v in r.returncodes.values())

    leftovers: list[fastreap.ExitStatus] = fastreap.reap()  # nothing unwatched is left
    assert leftovers == []
    stats: fastreap.Counters = fastreap.counters()
    backend: str = stats["backend"]
    assert backend in ("pidfd", "sigchld", "kqueue")
    print("counters:", {k: v for k, v in sorted(stats.items()) if k != "signals"})


if __name__ == "__main__":
    worker_side()
    parent_side()
    print("typed_usage: OK")
