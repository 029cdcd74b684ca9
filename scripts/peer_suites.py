"""Run CPython's own process/signal test suites with fastreap active in the same interpreter.

    python scripts/peer_suites.py [--plain | --install] [regrtest args...]

fastreap is imported, its C handler installed for SIGTERM (SIGTERM is not used by
these suites on the test process itself; SIGUSR1/SIGALRM are, and handling them
would make test_signal test fastreap instead of CPython, so they are left alone),
and a background thread spawns short-lived children the whole time, watches them
with fastreap.watch() and waits for each (no stealing). Then regrtest runs
in-process (never -j, which would start interpreters without fastreap).
--plain runs the same tests without fastreap, to tell environmental failures apart.
--install runs them with fastreap.install() active (subprocess.Popen,
multiprocessing.Process and asyncio subprocesses then wait through fastreap's
watcher), by default on test_subprocess and test_asyncio.test_subprocess
(through regrtest) and then a CI-sized subset of test_multiprocessing_fork
(MP_CLASSES: process, join, subclassing, pool, pool worker lifetime/errors,
wait; run through unittest from test._test_multiprocessing, as the
test_multiprocessing_fork module does, because some builds ship without that
module). Combine with --plain to run the same selection without fastreap.
The churn thread is off in --install mode unless --churn is given: a thread
waiting through the watcher reaps every installed child the moment it exits
and writes its returncode into the Popen, and a few tests assert exactly the
stdlib's laziness (returncode still None before poll(), a ResourceWarning
from __del__ of a finished child, os.waitpid(popen.pid) by hand); those are
the documented differences of install(), listed in the README.
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
INSTALL_TESTS = ["test_subprocess", "test_asyncio.test_subprocess"]
# The documented differences of install(), not failures: the watcher holds a
# Popen started under install() until its child exits, so dropping a running
# one neither warns "still running" (ResourceWarning) from __del__ nor puts it
# in subprocess._active (fastreap reaps it instead, at the next wait/poll or
# Popen()). These two tests assert exactly that stdlib bookkeeping. And a
# watched child that has already exited when it is watched (fast /bin/true
# under posix_spawn) gets its returncode at once, before any poll():
# test_broken_pipe_cleanup asserts it is still None, and test_stopped and
# test_send_signal_race reap such a child by hand (os.waitpid(proc.pid)).
INSTALL_IGNORE = [
    "test_zombie_fast_process_del",
    "test_leak_fast_process_del_killed",
    "test_broken_pipe_cleanup",
    "test_stopped",
    "test_send_signal_race",
]
# test_multiprocessing_fork whole takes tens of minutes; these classes cover
# what install() changes (start, join, is_alive, exitcode, terminate/kill,
# sentinels, pools with maxtasksperchild) in a few minutes.
MP_CLASSES = [
    "WithProcessesTestProcess",
    "WithProcessesTestSubclassingProcess",
    "WithProcessesTestPool",
    "WithProcessesTestPoolWorkerErrors",
    "WithProcessesTestPoolWorkerLifetime",
    "TestWait",
    "TestInitializers",
    "TestPoolNotLeakOnFailure",
]


def run_mp_subset() -> int:
    """The MP_CLASSES of test_multiprocessing_fork, through unittest."""
    import types
    import unittest

    import test._test_multiprocessing as tm

    # A real module: Pool tests pickle bound methods of these classes.
    mod = types.ModuleType("test_multiprocessing_fork_subset")
    sys.modules[mod.__name__] = mod
    ns: dict[str, object] = mod.__dict__
    import inspect

    if "only_type" in inspect.signature(tm.install_tests_in_module_dict).parameters:
        tm.install_tests_in_module_dict(ns, "fork", only_type=None)
    else:  # 3.10: no only_type (it installs every type)
        tm.install_tests_in_module_dict(ns, "fork")
    loader = unittest.TestLoader()
    suite = unittest.TestSuite(loader.loadTestsFromTestCase(ns[name]) for name in MP_CLASSES)  # type: ignore[arg-type]
    ns["setUpModule"]()  # type: ignore[operator]
    try:
        result = unittest.TextTestRunner(verbosity=1).run(suite)
    finally:
        ns["tearDownModule"]()  # type: ignore[operator]
    print(f"peer_suites: test_multiprocessing_fork subset: {result.testsRun} tests", flush=True)
    return 0 if result.wasSuccessful() else 1


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
        except ChildProcessError:
            # ChildLostError, or watch() itself: the suites' waitpid(-1) took
            # the child between Popen() and watch() (its status is gone).
            stats["lost"] += 1
        except Exception as e:
            stats["errors"] += 1
            print(f"peer_suites: churn error: {e!r}", file=sys.stderr)


def main() -> int:
    args = sys.argv[1:]
    if args == ["--mp-only"]:
        # The multiprocessing subset in an interpreter of its own with only
        # install() active: the regrtest run above leaves state behind (and
        # its SIGTERM handler, inherited by fork children, would make
        # terminate() ask instead of kill, as any inherited handler would).
        import fastreap

        fastreap.install()
        return run_mp_subset()
    plain = "--plain" in args
    install = "--install" in args
    churn_on = not install or "--churn" in args
    args = [a for a in args if a not in ("--plain", "--install", "--churn")]
    mp_subset = install and not any(not a.startswith("-") for a in args)
    if not any(not a.startswith("-") for a in args):
        args += INSTALL_TESTS if install else TESTS
    if install and not plain:
        for name in INSTALL_IGNORE:
            args += ["-i", name]
    t = None
    if not plain:
        import fastreap

        fastreap.handle_signals([signal.SIGTERM])
        if install:
            fastreap.install()
        if churn_on:
            t = threading.Thread(target=churn, name="fastreap-churn", daemon=True)
            t.start()
    from test.libregrtest.main import main as regrtest_main

    sys.argv = ["regrtest", *args]
    code = 0
    try:
        regrtest_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    if mp_subset:
        cmd = [sys.executable, __file__, "--mp-only"]
        if plain:
            cmd = [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {sys.path[0]!r}); "
                "import peer_suites as p; sys.exit(p.run_mp_subset())",
            ]
        code = subprocess.run(cmd, check=False).returncode or code
    if t is not None:
        stop.set()
        t.join(60)
        print(f"peer_suites: churn thread: {stats}", flush=True)
        if stats["errors"] or stats["reaped"] == 0:
            code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
