"""Run CPython's own process/signal test suites with fastreap active in the same interpreter.

    python scripts/peer_suites.py [--plain] [regrtest args...]

fastreap is imported, its C handler installed for SIGTERM (SIGTERM is not used by
these suites on the test process itself; SIGUSR1/SIGALRM are, and handling them
would make test_signal test fastreap instead of CPython, so they are left alone),
and a background thread spawns short-lived children the whole time, watches them
with fastreap.watch() and waits for each (no stealing). Then regrtest runs
in-process (never -j, which would start interpreters without fastreap).
--plain runs the same tests without fastreap, to tell environmental failures apart.
At the end the churn thread's figures are printed. These suites steal children
themselves (test_wait3 and asyncio's child watchers call waitpid(-1), regrtest's
reap_children too); fastreap must then report ChildLostError rather than hang or
invent a status, so "lost" is expected and shown; any other churn error fails.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

TESTS = ["test_subprocess", "test_signal", "test_wait3", "test_wait4", "test_asyncio.test_subprocess"]

# Bound before the suites run: test_subprocess patches subprocess.Popen to
# record the instances its code under test creates; the churn must not show up.
_Popen = subprocess.Popen
stats = {"spawned": 0, "reaped": 0, "lost": 0, "errors": 0}
stop = threading.Event()


def churn() -> None:
    import fastreap

    while not stop.is_set():
        try:
            p = _Popen(["/bin/sleep", "0.01"])
            stats["spawned"] += 1
            c = fastreap.watch(p)
            rc = c.wait(timeout=30)
            if rc is None:
                c.kill()
                c.wait()
            stats["reaped"] += 1
        except fastreap.ChildLostError:
            stats["lost"] += 1
        except Exception as e:
            stats["errors"] += 1
            print(f"peer_suites: churn error: {e!r}", file=sys.stderr)


def main() -> int:
    args = sys.argv[1:]
    plain = "--plain" in args
    args = [a for a in args if a != "--plain"]
    if not any(not a.startswith("-") for a in args):
        args += TESTS
    t = None
    if not plain:
        import fastreap

        fastreap.handle_signals([signal.SIGTERM])
        t = threading.Thread(target=churn, name="fastreap-churn", daemon=True)
        t.start()
    from test.libregrtest.main import main as regrtest_main

    sys.argv = ["regrtest", *args]
    code = 0
    try:
        regrtest_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    if t is not None:
        stop.set()
        t.join(60)
        print(f"peer_suites: churn thread: {stats}", flush=True)
        if stats["errors"] or stats["reaped"] == 0:
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
