"""``fastreap bench``: every benchmark area in one run, one table.

The areas are modules following ``_benchutil`` (``run(quick, progress) ->
list[Result]``): ``_bench_flags`` (worker side), ``_bench_reap`` (noticing and
reaping exits), ``_bench_stop`` (stopping many children), and this module's
own C references: the same work done in a C loop inside the extension, so the
table says how far from C each Python-level path is. Ratios are always against
a baseline measured in the same run on the same machine.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

from . import __version__, _core
from ._benchutil import Progress, Result, per_call_ns, ratio

# (name, module, seconds budgeted for --quick); the total stays under a minute.
AREAS: list[tuple[str, str, float]] = [
    ("flags", "fastreap._bench_flags", 12.0),
    ("reap", "fastreap._bench_reap", 15.0),
    ("stop", "fastreap._bench_stop", 15.0),
    ("cref", "fastreap._bench", 8.0),
]


@dataclass
class AreaRun:
    """What happened to one area in this run."""

    name: str
    module: str
    budget: float
    status: str = "ok"  # ok, skipped, error
    elapsed: float = 0.0
    message: str = ""


# ----------------------------------------------------------- C reference cases


def _fork_exit_waitpid(n: int) -> None:
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def _fork_watch_wait(n: int) -> None:
    from ._children import watch

    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        watch(pid).wait()


def _popen_true(n: int) -> None:
    for _ in range(n):
        subprocess.Popen(["true"]).wait()


def _timed_batches(fn: Callable[[int], object], batch: int, repeat: int) -> list[float]:
    """Microseconds per item, one sample per batch of fn(batch)."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn(batch)
        out.append((time.perf_counter_ns() - t0) / batch / 1e3)
    return out


def _latency_python(n: int, prepare: Callable[[int], Callable[[], object]]) -> list[float]:
    """Exit-to-notice latencies (us) seen from Python. The children are the C
    reference's own (forked in C, no Python runs in them: a Python child's
    after-fork work would lengthen its exit and blur the comparison); each
    stamps CLOCK_MONOTONIC just before _exit, we stamp when the waiter made by
    prepare(pid) beforehand returns."""
    out = []
    for _ in range(n):
        pid, go = _core._cref_fork_stamper()
        try:
            waiter = prepare(pid)
            os.write(go, b"x")
        finally:
            os.close(go)
        waiter()
        t1 = time.monotonic_ns()
        out.append((t1 - _core._cref_last_stamp()) / 1e3)
    return out


def _fastreap_waiter(pid: int) -> Callable[[], object]:
    from ._children import watch

    return watch(pid).wait


def _waitpid_waiter(pid: int) -> Callable[[], object]:
    return lambda: os.waitpid(pid, 0)


def run(quick: bool, progress: Progress) -> list[Result]:
    """fastreap's paths next to the same work in C (and the stdlib)."""
    batch, repeat = (40, 9) if quick else (100, 15)
    res: list[Result] = []
    with warnings.catch_warnings():
        # os.fork() warns when the process has threads (3.12+); the children
        # here only _exit, which is safe.
        warnings.simplefilter("ignore", DeprecationWarning)

        # Cases are interleaved (one batch or one child of each in turn) so
        # that drift from other load on the machine hits them all alike.
        g = "fork + exit + reap, per child"
        base = "C fork/_exit/waitpid loop"
        cases: list[tuple[str, Callable[[int], object], int, str]] = [
            (base, _core._cref_fork_wait, batch, "fastreap._core._cref_fork_wait"),
            ("os.fork + os._exit + os.waitpid", _fork_exit_waitpid, batch, ""),
            ("os.fork + fastreap.watch(pid).wait()", _fork_watch_wait, batch, ""),
            (
                "subprocess.Popen(['true']).wait()",
                _popen_true,
                max(5, batch // 2),
                "fork+exec (vfork/posix_spawn path) of true",
            ),
        ]
        rows = [
            Result(g, name, "us", baseline=None if name == base else base, note=note)
            for name, _fn, _b, note in cases
        ]
        for i in range(repeat):
            progress(f"{g}: round {i + 1}/{repeat}")
            for row, (_name, fn, b, _note) in zip(rows, cases, strict=True):
                row.samples += _timed_batches(fn, b, 1)
        res += rows

        g = "exit-to-notice latency"
        n = 100 if quick else 300
        pidfd = _core.IS_LINUX and _core.have_pidfd()
        wp_name = "os.waitpid (blocking)"
        base = "C pidfd + poll" if pidfd else wp_name
        c_row = Result(g, "C pidfd + poll", "us", note="fastreap._core._cref_pidfd_latency")
        wp_row = Result(g, "os.waitpid (blocking)", "us", baseline=None if base == wp_name else base)
        fr_row = Result(
            g,
            "fastreap.watch(pid).wait()",
            "us",
            baseline=base,
            note="watch() made before the child is let go",
        )
        for i in range(n):
            if i % 20 == 0:
                progress(f"{g}: child {i + 1}/{n}")
            if pidfd:
                c_row.samples.append(_core._cref_pidfd_latency(1)[0] / 1e3)
            wp_row.samples += _latency_python(1, _waitpid_waiter)
            fr_row.samples += _latency_python(1, _fastreap_waiter)
        res += ([c_row] if pidfd else []) + [wp_row, fr_row]

    g = "stop-flag check, per check"
    base = "C acquire load (loop in C)"
    number, frepeat = (300_000, 9) if quick else (1_000_000, 15)
    progress(f"{g}: C")
    res.append(
        Result(
            g,
            base,
            "ns",
            [_core._cref_flag_load(number * 50) for _ in range(frepeat)],
            note="fastreap._core._cref_flag_load",
        )
    )
    from ._flags import default_flag, stop_requested

    event = threading.Event()
    flag = default_flag()
    checks: list[tuple[str, Callable[[], object]]] = [
        ("fastreap.stop_requested()", stop_requested),
        ("StopFlag.is_set()", flag.is_set),
        ("threading.Event.is_set()", event.is_set),
    ]
    for name, check in checks:
        progress(f"{g}: {name}")
        res.append(
            Result(
                g,
                name,
                "ns",
                per_call_ns(check, number=number, repeat=frepeat),
                baseline=base,
                note="Python loop overhead included",
            )
        )
    return res


# ------------------------------------------------------------------ the suite


class _Progress:
    """One status line on stderr (rewritten in place on a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.prefix = ""
        self.t0 = time.monotonic()
        self.width = 0

    def __call__(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:5.1f}s] {self.prefix}{msg}"
        if self.tty:
            pad = max(0, self.width - len(line))
            sys.stderr.write("\r" + line + " " * pad)
            self.width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0

    def say(self, msg: str) -> None:
        self.done()
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()


def _run_area(area: AreaRun, quick: bool, progress: _Progress) -> list[Result]:
    try:
        mod = importlib.import_module(area.module)
    except ModuleNotFoundError as e:
        if e.name != area.module:
            raise
        area.status = "skipped"
        area.message = f"{area.module} is not in this build"
        return []
    fn = mod.run
    kw = {}
    if "budget" in inspect.signature(fn).parameters:
        kw["budget"] = area.budget if quick else None
    return list(fn(quick, progress, **kw))


def run_suite(quick: bool = False, json_path: str | None = None, areas: list[str] | None = None) -> int:
    """Run the areas, print the table on stdout; 1 if an area failed."""
    progress = _Progress()
    t_start = time.monotonic()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs: list[AreaRun] = []
    results: list[tuple[str, Result]] = []
    todo = [a for a in AREAS if areas is None or a[0] in areas]
    for i, (name, module, budget) in enumerate(todo, 1):
        area = AreaRun(name, module, budget)
        runs.append(area)
        progress.prefix = f"{i}/{len(todo)} {name}: "
        progress("starting")
        t0 = time.monotonic()
        try:
            got = _run_area(area, quick, progress)
        except Exception as e:  # one broken area must not hide the others
            area.status = "error"
            area.message = f"{type(e).__name__}: {e}"
            got = []
        area.elapsed = time.monotonic() - t0
        results += [(name, r) for r in got]
        if area.status != "ok":
            progress.say(f"fastreap bench: {name}: {area.status}: {area.message}")
        elif quick and area.elapsed > area.budget:
            area.message = f"over its --quick budget ({area.elapsed:.1f}s > {area.budget:g}s)"
            progress.say(f"fastreap bench: {name}: {area.message}")
    progress.done()
    elapsed = time.monotonic() - t_start
    print(format_table([r for _, r in results], quick=quick, elapsed=elapsed))
    if json_path is not None:
        _write_json(json_path, runs, results, quick=quick, started=started, elapsed=elapsed)
    return 1 if any(a.status == "error" for a in runs) else 0


def _fmt(x: float) -> str:
    if math.isnan(x):
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def format_table(results: list[Result], *, quick: bool = False, elapsed: float = 0.0) -> str:
    """Medians, p90 and ratios against each group's baseline, as plain text."""
    head = (
        f"fastreap {__version__} bench{' --quick' if quick else ''}: Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{elapsed:.1f}s"
    )
    rows = [("case", "median", "p90", "unit", "vs baseline", "goal")]
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    lines_by_group = []
    for g, rs in groups.items():
        body = []
        names = {r.name for r in rs}
        for r in rs:
            q = ratio(rs, r)
            if r.baseline is None:
                vs = "baseline" if any(o.baseline == r.name for o in rs) else ""
            elif q is None:
                vs = f"({r.baseline} missing)" if r.baseline not in names else "-"
            else:
                vs = f"{q:.2f}x"
            body.append((r.name, _fmt(r.median), _fmt(r.p90), r.unit, vs, r.goal))
        lines_by_group.append((g, body))
    allrows = rows + [row for _, body in lines_by_group for row in body]
    w = [max(len(row[i]) for row in allrows) for i in range(6)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(
            [
                row[0].ljust(w[0]),
                row[1].rjust(w[1]),
                row[2].rjust(w[2]),
                row[3].ljust(w[3]),
                row[4].rjust(w[4]),
                row[5],
            ]
        ).rstrip()

    out = [head, "", fmt(rows[0]), "-" * len(fmt(rows[0]))]
    for g, body in lines_by_group:
        out.append(f"{g}:")
        out += ["  " + fmt(row) for row in body]
    if not results:
        out.append("(no results)")
    return "\n".join(out)


def _write_json(
    path: str,
    runs: list[AreaRun],
    results: list[tuple[str, Result]],
    *,
    quick: bool,
    started: str,
    elapsed: float,
) -> None:
    by_area: dict[str, list[Result]] = {}
    for a, r in results:
        by_area.setdefault(a, []).append(r)
    doc = {
        "fastreap": __version__,
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "started": started,
        "elapsed": elapsed,
        "areas": [asdict(a) for a in runs],
        "results": [
            {
                "area": a,
                "group": r.group,
                "name": r.name,
                "unit": r.unit,
                "median": r.median,
                "p90": r.p90,
                "baseline": r.baseline,
                "ratio": ratio(by_area[a], r),
                "goal": r.goal,
                "note": r.note,
                "samples": list(r.samples),
            }
            for a, r in results
        ],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
