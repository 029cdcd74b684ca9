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

from conftest import PROGRAMS
from fastreap import _core
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
