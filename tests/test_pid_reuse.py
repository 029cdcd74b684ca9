"""Pid reuse: fastreap never signals a process it did not start.

tests/programs/pid_reuse.py runs as PID 1 of a new PID namespace with a small
``pid_max`` and forces the pid of a watched child, once reaped (by fastreap or
behind its back), onto an unwatched victim; see its docstring. Each watcher
path runs in its own namespace: pidfd, SIGCHLD (the backend switch), and
SIGCHLD because the pidfd budget is spent (pidfds available, budget 0).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import fastreap
from conftest import PROGRAMS
from fastreap import _core, _watcher
from test_cli import UNSHARE

CASES = 12  # 3 target kinds x 2 reapers x 2 victims


@pytest.mark.pid1
@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"FASTREAP_BACKEND": "pidfd"}, "pidfd"),
        ({"FASTREAP_BACKEND": "sigchld"}, "sigchld"),
        ({"FASTREAP_BACKEND": "auto", "FASTREAP_PIDFD_BUDGET": "0"}, "sigchld"),
    ],
    ids=["pidfd", "sigchld", "over-budget"],
)
def test_reused_pid_is_never_signalled(env: dict[str, str], path: str) -> None:
    if not UNSHARE:
        pytest.skip("unshare --pid --fork --mount-proc is not available here")
    if path == "pidfd" and not _core.have_pidfd():
        pytest.skip("no pidfd on this kernel")
    p = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(PROGRAMS / "pid_reuse.py")],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=110,
    )
    if p.stdout.startswith("SKIP"):
        pytest.skip(p.stdout.strip())
    cases = [line for line in p.stdout.splitlines() if line.startswith("CASE")]
    failed = [line for line in cases if not line.endswith(" ok")]
    assert p.returncode == 0 and "OK" in p.stdout, (failed, p.stdout[-3000:], p.stderr[-3000:])
    assert len(cases) == CASES and not failed
    assert all(f"path={path} " in line for line in cases), cases
    total = dict(kv.split("=") for kv in re.findall(r"\w+=\w+", p.stdout.split("TOTAL", 1)[1]))
    assert total["reuses"] == str(CASES) and total["victim_signals"] == "0" and total["failures"] == "0"
    print(p.stdout.split("TOTAL", 1)[1].splitlines()[0])


# -- the same guards, without a namespace (the reuse itself is simulated) ------


@pytest.mark.usefixtures("backend")
def test_sigchld_path_never_signals_a_pid_that_changed_process() -> None:
    """On the SIGCHLD path a watched pid reaped behind fastreap's back may be
    reused; the start time kept at watch() tells. Simulated here by changing
    the kept start time: the live process must then be left alone."""
    if fastreap.counters()["backend"] != "sigchld":
        pytest.skip("pidfds pin the process itself")
    p = subprocess.Popen(["/bin/sleep", "30"])
    try:
        c = fastreap.watch(p)
        w = _watcher.current()
        start = w.sigchld.starts[c.pid]
        assert start is not None and c.pid not in w.pidfd_of
        w.sigchld.starts[c.pid] = start + 1  # as if the pid now named a process started at another time
        c.terminate()
        c.kill()
        assert c.lost and c.returncode is None
        assert p.poll() is None  # never signalled
        r = fastreap.graceful_stop([c], 0.1)
        assert r.returncodes == {} and r.lost == [c] and not r.killed
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


@pytest.mark.usefixtures("backend")
def test_watching_a_lost_popen_again_gives_the_lost_child() -> None:
    """A Popen reaped behind fastreap's back never gets a returncode; its pid
    may name anyone by now, so watch()/graceful_stop() must not take it."""
    p = subprocess.Popen(["/bin/sleep", "30"])
    c = fastreap.watch(p)
    p.kill()
    os.waitpid(p.pid, 0)  # the foreign reaper
    with pytest.raises(fastreap.ChildLostError):
        c.wait(30)
    assert fastreap.watch(p) is c
    r = fastreap.graceful_stop([p], 0.1)
    assert r.returncodes == {} and [x.pid for x in r.lost] == [p.pid] and not r.killed and not r.alive
    p.wait()  # ECHILD: the stdlib's own silent 0, so its __del__ stays quiet
