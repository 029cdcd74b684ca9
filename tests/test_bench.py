"""``fastreap bench --quick`` once, as a smoke test of the suite and its JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from fastreap import _bench


@pytest.mark.bench
def test_bench_quick_json(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "bench.json")
    r = subprocess.run(
        [sys.executable, "-m", "fastreap", "bench", "--quick", "--json", path],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert r.returncode == 0, r.stderr
    with open(path) as f:
        doc = json.load(f)
    assert doc["quick"] is True
    assert doc["elapsed"] > 0 and all(a["budget"] > 0 for a in doc["areas"])
    assert {a["name"] for a in doc["areas"]} == {name for name, _m, _b in _bench.AREAS}
    for a in doc["areas"]:
        assert a["status"] in ("ok", "skipped"), a
    results = doc["results"]
    assert results
    groups: dict[str, set[str]] = {}
    for res in results:
        assert set(res) >= {"area", "group", "name", "unit", "median", "p90", "baseline", "ratio", "samples"}
        assert res["unit"] in ("ns", "us", "ms", "s")
        assert res["samples"] and all(isinstance(x, float) and x > 0 for x in res["samples"])
        assert math.isfinite(res["median"]) and res["median"] > 0
        groups.setdefault(res["group"], set()).add(res["name"])
    for res in results:
        if res["baseline"] is not None:
            assert res["baseline"] in groups[res["group"]]  # same run, same group
            assert res["ratio"] > 0
    cref = {res["name"] for res in results if res["area"] == "cref"}
    assert {
        "C fork/_exit/waitpid loop",
        "os.fork + os._exit + os.waitpid",
        "C acquire load (loop in C)",
        "fastreap.stop_requested()",
    } <= cref
    # The table shows every case with its ratio.
    for res in results:
        assert res["name"] in r.stdout
    assert "vs baseline" in r.stdout


def test_c_references_reject_bad_counts() -> None:
    from fastreap import _core

    for fn in (_core._cref_fork_wait, _core._cref_pidfd_latency, _core._cref_flag_load):
        with pytest.raises(ValueError, match="n must be > 0"):
            fn(0)


def test_c_fork_reference_leaves_no_child() -> None:
    from fastreap import _core

    assert _core._cref_fork_wait(3) > 0  # the no_leaks fixture checks for zombies
