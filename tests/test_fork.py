"""The fork rule (issue 13): ``import fastreap`` loads only the compiled core,
and a fork child runs nothing of fastreap until it uses it (see
src/fastreap/_fork.py); after that first use it works as any process does.
Each scenario runs in a fresh interpreter (tests/programs/fork_lazy.py):
what is imported and what a fork child inherits must not depend on what
pytest or other tests loaded. The per-fork cost itself is measured by
``fastreap bench --only churn``, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).parent / "programs" / "fork_lazy.py"


def run(scenario: str) -> dict:
    p = subprocess.run([sys.executable, str(PROGRAM), scenario], capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    res = [json.loads(line[7:]) for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert res, out
    return res[-1]


def test_import_loads_only_the_core() -> None:
    r = run("lazy_import")
    assert r["heavy"] == [] and r["ours"] == ["fastreap._core"], r
    assert r["missing"] == [] and r["star"] and r["dir"], r
    assert r["watcher_now"], r  # resolving the names loaded the rest


def test_fork_child_runs_nothing_until_it_uses_fastreap() -> None:
    r = run("untouched_until_used")
    assert r == {"code": 42, "parent_flag": False, "parent_fd": False, "gen": 0}


def test_fork_rearms_the_one_stopped_latch() -> None:
    r = run("stopped_rearmed")
    assert r == {"first": "raised", "child": 40, "again": "not raised"}


def test_grandchild_of_an_unused_child_has_its_own_state() -> None:
    r = run("grandchild")
    assert r == {"code": 43, "parent_set": False}


@pytest.mark.linux_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lists /proc/self/fd")
def test_signal_and_thread_race_to_renew_a_flag_descriptor() -> None:
    r = run("refresh_race")
    assert r == {"bad": [], "parent_fd": False, "parent_flag": False}
