"""``fastreap bench`` as a smoke test: tiny sizes (FASTREAP_BENCH_TINY=1), the
table's and the JSON's structure, the C references' arguments. No timing is
asserted anywhere here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from fastreap import _bench
from fastreap._bench import _cref, _util
from fastreap._bench._util import Goal, Result


@pytest.mark.bench
@pytest.mark.timeout(300)
def test_bench_tiny_json_and_table(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "bench.json")
    r = subprocess.run(
        [sys.executable, "-m", "fastreap", "bench", "--quick", "--json", path],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "FASTREAP_BENCH_TINY": "1"},
    )
    assert r.returncode == 0, r.stderr
    with open(path) as f:
        doc = json.load(f)
    assert doc["quick"] is True
    assert doc["elapsed"] > 0 and all(a["budget"] > 0 for a in doc["areas"])
    assert [a["name"] for a in doc["areas"]] == [name for name, _m, _b in _bench.AREAS]
    for a in doc["areas"]:
        assert a["status"] == "ok", a
    results = doc["results"]
    groups: dict[str, set[str]] = {}
    for res in results:
        assert set(res) >= {
            "area",
            "group",
            "name",
            "unit",
            "median",
            "baseline",
            "ratio",
            "goal",
            "goal_met",
        }
        assert res["unit"] in ("ns", "us", "ms", "s")
        if res["skipped"]:  # a skipped case says why and has no figure
            assert res["samples"] == [] and res["median"] is None and res["ratio"] is None
            assert res["name"] in r.stdout and f"skipped: {res['skipped']}" in r.stdout
            continue
        assert res["samples"] and all(isinstance(x, float) and x > 0 for x in res["samples"]), res
        assert math.isfinite(res["median"]) and res["median"] > 0
        groups.setdefault(res["group"], set()).add(res["name"])
    for res in results:
        if res["baseline"] is not None and not res["skipped"]:
            assert res["baseline"] in groups[res["group"]]  # same run, same group
            assert res["ratio"] > 0
        if res["goal"] and not res["skipped"]:
            assert res["goal_met"] in (True, False), res
    names = {res["name"] for res in results}
    for need in (
        "C acquire load (loop in C)",
        "C fork/_exit/waitpid loop",
        "C pidfd_open + poll (limit)",
        "C SIGCHLD self-pipe (limit)",
        "C limit: TERM all, reap to one deadline, KILL rest",
        "C posix_spawn + waitpid(-1)",
        "fastreap.spawn + wait(FIRST_EXITED)",  # a row even while skipped
    ):
        assert need in names
    # One measurement per baseline per run: a name has one median per area.
    medians: dict[tuple[str, str], set[float]] = {}
    for res in results:
        if not res["skipped"]:
            medians.setdefault((res["area"], res["name"]), set()).add(res["median"])
    assert (
        medians[("flags", "fastreap.stop_requested()")]
        and len(medians[("flags", "fastreap.stop_requested()")]) == 1
    )
    assert sum(1 for res in results if res["name"] == "threading.Event().is_set()") == 1
    # The table: one ratio direction with its word, goals judged, C references explained.
    out = r.stdout
    assert "vs baseline" in out and "goal" in out
    assert " faster" in out or " slower" in out
    assert "met" in out or "MISSED" in out
    assert "[extrapolated]" in out
    assert "C references" in out
    for name, _desc in _bench.C_REFERENCES:
        assert f"  {name}: " in out


def test_table_marks_extrapolated_skipped_and_ratio_direction() -> None:
    g = "g"
    rows = [
        Result(g, "base", "us", [10.0, 10.0]),
        Result(g, "slow", "us", [21.0], baseline="base", goal=Goal("<= 1.05x base", "base", 1.05)),
        Result(g, "fast", "us", [5.0], baseline="base", goal=Goal("<= 1.05x base", "base", 1.05)),
        Result(g, "guess", "us", [30.0], baseline="base", extrapolated=True, note="from 2 of 10"),
        Result(g, "absent", "us", baseline="base", skipped="psutil is not installed"),
    ]
    t = _bench.format_table(rows)
    lines = {ln.split()[0]: ln for ln in t.splitlines() if ln.startswith("  ") and not ln.startswith("    ")}
    assert "2.10x slower" in lines["slow"] and "MISSED" in lines["slow"]
    assert "2.00x faster" in lines["fast"] and "met" in lines["fast"]
    assert "[extrapolated]" in lines["guess"]
    assert "skipped: psutil is not installed" in lines["absent"]
    assert "x faster" not in lines["base"] and "baseline" in lines["base"]


def test_goal_with_two_conditions() -> None:
    rs = [
        Result("g", "a", "us", [10.0]),
        Result("g", "c", "us", [5.0]),
        Result("g", "x", "us", [8.0], goal=Goal("", "a", 1 / 1.1, also=Goal("", "c", 1.3))),
    ]
    assert _util.goal_met(rs, rs[2]) is False  # faster than a, but 1.6x c
    rs[2].samples = [6.0]
    assert _util.goal_met(rs, rs[2]) is True


def test_c_references_reject_bad_arguments() -> None:
    for fn in (_cref.fork_wait, _cref.flag_load):
        with pytest.raises(ValueError, match="n must be > 0"):
            fn(0)
    with pytest.raises(ValueError, match="mode must be"):
        _cref.exit_latency("kqueue", "/bin/true", 0, 1, 1)
    with pytest.raises(ValueError, match="live must be > 0"):
        _cref.exit_latency("pidfd", "/bin/true", 0, 1, 0)
    with pytest.raises(ValueError, match="pid must be > 0"):
        _cref.stop_limit([0], 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        _cref.stop_limit([], 1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        _cref.spawn_churn("/bin/true", 1, 0)


def test_c_fork_reference_leaves_no_child() -> None:
    assert _cref.fork_wait(3) > 0  # the no_leaks fixture checks for zombies
    assert _cref.flag_load(1000) > 0


# The references that reap with waitpid(-1) and install a SIGCHLD handler run
# in a fresh interpreter, as the benchmark runs them.
_CHILD = """
import json, os, signal, sys, time
from fastreap._bench import _cref, _util, latency
what = sys.argv[1]
if what == "stop":
    pids = []
    for i in range(4):
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:
            signal.sigwait({signal.SIGTERM})
            time.sleep(0.0 if i < 2 else 30)
            os._exit(0)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        pids.append(pid)
    dt = _cref.stop_limit(pids, 0.3)
    out = {"dt": dt}
elif what == "churn":
    out = {"dt": _cref.spawn_churn("/bin/true", 20, 4)}
else:
    exe, why = _util.stamper()
    if exe is None:
        out = {"skip": why}
    else:
        s = latency._Stamps()
        out = {"lat": _cref.exit_latency(what, exe, s.fd, 3, 4)}
# SigCgt: the signals with a handler installed (C-level, not Python's view)
cgt = next(int(ln.split()[1], 16) for ln in open("/proc/self/status") if ln.startswith("SigCgt:"))
print(json.dumps({**out, "sigchld": not (cgt >> (signal.SIGCHLD - 1)) & 1}))
try:
    os.waitpid(-1, os.WNOHANG)
    print("CHILD LEFT")
except ChildProcessError:
    print("NO CHILD")
"""


@pytest.mark.parametrize("what", ["stop", "churn", "pidfd", "sigchld"])
@pytest.mark.linux_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_c_references_reap_everything_and_restore_sigchld(what: str) -> None:
    if what == "pidfd" and not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd")
    r = subprocess.run([sys.executable, "-c", _CHILD, what], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    first, last = r.stdout.strip().splitlines()[-2:]
    doc = json.loads(first)
    if "skip" in doc:
        pytest.skip(doc["skip"])
    assert last == "NO CHILD"
    assert doc["sigchld"] is True
    if what == "stop":
        assert 0.3 <= doc["dt"] < 20  # the two 30 s sleepers were killed at the deadline
    elif what == "churn":
        assert doc["dt"] > 0
    else:
        assert len(doc["lat"]) == 3 and all(x > 0 for x in doc["lat"])


def test_stamper_child_stamps_then_exits() -> None:
    exe, why = _util.stamper()
    if exe is None:
        pytest.skip(why)
    from fastreap._bench import latency

    s = latency._Stamps()
    try:
        go_r, go_w = latency._pipe()
        pid = latency._spawn(exe, go_r, s)
        os.close(go_r)
        s.clear()
        os.write(go_w, b"x")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert s.get() > 0
        # EOF instead of a byte: exit 1, no stamp
        go_r, go_w = latency._pipe()
        pid = latency._spawn(exe, go_r, s)
        os.close(go_r)
        s.clear()
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 1 and s.get() == 0
    finally:
        s.close()


def test_bench_help_and_bad_area() -> None:
    r = subprocess.run([sys.executable, "-m", "fastreap", "bench", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--quick" in r.stdout and "churn" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "fastreap", "bench", "--only", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr
