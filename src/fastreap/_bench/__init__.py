"""``fastreap bench``: every benchmark of fastreap in one place, one table.

Loaded only by ``python -m fastreap bench`` (``main(argv)``); nothing in
fastreap's runtime imports it. One module per area, each following ``_util``
(``run(quick, progress) -> list[Result]``):

* ``flags``: the stop-flag check a worker makes, and how soon a worker thread
  learns of SIGTERM while the main thread is in a long C call.
* ``latency``: exit-to-reaped latency of an exec'd C stamping child, every
  waiting mechanism in a fresh process, against the C limits.
* ``reap``: fork/exit/reap cost, exit-to-notice latency with ``/bin/sleep``
  children, per-exit cost with up to 10,000 live children.
* ``stop``: stopping many children within one grace period.
* ``churn``: spawning and reaping many short-lived children.

The C references live in their own extension, ``fastreap._bench._cref``.
Ratios are always against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .. import __version__
from ._util import Result, describe_ratio, goal_met, ratio

# (name, module, seconds budgeted for --quick); see QUICK_PROMISE.
AREAS: list[tuple[str, str, float]] = [
    ("flags", "fastreap._bench.flags", 10.0),
    # latency before reap: reap's 10,000-child rounds leave the kernel busy
    # for seconds after (kdamond scanning, freeing), which the microsecond
    # latency cases would measure; the stop and churn cases are coarse enough.
    ("latency", "fastreap._bench.latency", 15.0),
    ("reap", "fastreap._bench.reap", 25.0),
    ("stop", "fastreap._bench.stop", 15.0),
    ("churn", "fastreap._bench.churn", 25.0),
]
QUICK_PROMISE = "under 90 s on a quiet 2-core machine"

# One line per C reference: what it does, and why nothing beats it.
C_REFERENCES: list[tuple[str, str]] = [
    (
        "C acquire load (loop in C)",
        "one atomic acquire load of a flag word per iteration in a C loop: what checking a "
        "flag costs with no interpreter at all",
    ),
    (
        "C fork/_exit/waitpid loop",
        "fork() the benchmark process, child _exit(0), waitpid(): the floor for forking THIS "
        "process (a fork copies its page tables, which is why Popen(['true']), using vfork, "
        "can beat it)",
    ),
    (
        "C pidfd_open + poll (limit)",
        "posix_spawn the stamping child, pidfd_open, poll on every live pidfd, wait4 (with "
        "rusage, as fastreap): the kernel's own notification with no interpreter in the way",
    ),
    (
        "C SIGCHLD self-pipe (limit)",
        "a C SIGCHLD handler writes a pipe, poll on it, wait4(-1, WNOHANG) (with rusage, as "
        "fastreap): the fastest way to learn of exits without pidfds",
    ),
    (
        "C limit: TERM all, reap to one deadline, KILL rest",
        "kill(SIGTERM) each, reap with waitpid(-1) on a SIGCHLD self-pipe until one shared "
        "deadline, SIGKILL and reap the rest: nobody stops the set sooner",
    ),
    (
        "C posix_spawn + waitpid(-1)",
        "posix_spawn /bin/true keeping 64 alive, reap with blocking waitpid(-1): the floor "
        "for spawning and reaping on this machine",
    ),
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
    mod = importlib.import_module(area.module)
    return list(mod.run(quick, progress))


def run_suite(quick: bool = False, json_path: str | None = None, areas: Sequence[str] | None = None) -> int:
    """Run the areas, print the table on stdout; 1 if an area failed."""
    progress = _Progress()
    t_start = time.monotonic()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs: list[AreaRun] = []
    results: list[tuple[str, Result]] = []
    todo = [a for a in AREAS if not areas or a[0] in areas]
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
    print(format_table([r for _, r in results], quick=quick, elapsed=elapsed, runs=runs))
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


def _load() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def format_table(
    results: list[Result], *, quick: bool = False, elapsed: float = 0.0, runs: Sequence[AreaRun] = ()
) -> str:
    """Medians, p90, one-direction ratios against each group's baseline and
    goals met/missed, as plain text; then what each C reference is."""
    head = (
        f"fastreap {__version__} bench{' --quick' if quick else ''}: Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{elapsed:.1f}s, {_load()} at the end"
    )
    cols = ("case", "median", "p90", "unit", "vs baseline", "goal", "")
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    body_by_group: list[tuple[str, list[tuple[str, ...]]]] = []
    for g, rs in groups.items():
        body: list[tuple[str, ...]] = []
        for r in rs:
            name = r.name + (" [extrapolated]" if r.extrapolated else "")
            met = goal_met(rs, r)
            goal = r.goal.text if r.goal else ""
            mark = "" if r.goal is None else {True: "met", False: "MISSED", None: "-"}[met]
            if r.skipped:
                body.append((name, "-", "-", r.unit, f"skipped: {r.skipped}", goal, ""))
                continue
            q = ratio(rs, r)
            if r.baseline is None or r.baseline == r.name:
                vs = "baseline" if any(o.baseline == r.name for o in rs) else ""
            elif q is None:
                vs = "- (baseline skipped)"
            else:
                vs = describe_ratio(q)
            body.append((name, _fmt(r.median), _fmt(r.p90), r.unit, vs, goal, mark))
        body_by_group.append((g, body))
    allrows = [cols] + [row for _, body in body_by_group for row in body]
    w = [max(len(row[i]) for row in allrows if not row[4].startswith("skipped") or i < 4) for i in range(7)]

    def fmt(row: tuple[str, ...]) -> str:
        if row[4].startswith("skipped"):
            return "  ".join([row[0].ljust(w[0]), row[4], row[5]]).rstrip()
        return "  ".join(
            [
                row[0].ljust(w[0]),
                row[1].rjust(w[1]),
                row[2].rjust(w[2]),
                row[3].ljust(w[3]),
                row[4].ljust(w[4]),
                row[5].ljust(w[5]),
                row[6],
            ]
        ).rstrip()

    out = [head, "", fmt(cols), "-" * len(fmt(cols))]
    for g, body in body_by_group:
        base = next((r.baseline for r in groups[g] if r.baseline), None)
        out.append(f"{g}:" + (f"  [baseline: {base}]" if base else ""))
        out += ["  " + fmt(row) for row in body]
        notes = [r for r in groups[g] if r.note and not r.skipped]
        out += [f"    - {r.name}: {r.note}" for r in notes]
    if not results:
        out.append("(no results)")
    errors = [a for a in runs if a.status != "ok" or a.message]
    if errors:
        out += ["", "areas:"] + [f"  {a.name}: {a.status} {a.message}".rstrip() for a in errors]
    shown = {r.name for r in results if not r.skipped}
    refs = [(n, d) for n, d in C_REFERENCES if n in shown]
    if refs:
        out += ["", "C references (fastreap._bench._cref, GIL released):"]
        out += [f"  {n}: {d}" for n, d in refs]
    out += [
        "",
        "Ratios: median over the named baseline's median from this run; 'slower'/'faster' say which way.",
        "[extrapolated]: not measured at the group's size; its note says from what.",
    ]
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
        "loadavg_end": list(os.getloadavg()),
        "areas": [asdict(a) for a in runs],
        "results": [
            {
                "area": a,
                "group": r.group,
                "name": r.name,
                "unit": r.unit,
                "median": None if r.skipped else r.median,
                "p90": None if r.skipped else r.p90,
                "baseline": r.baseline,
                "ratio": ratio(by_area[a], r),
                "goal": r.goal.text if r.goal else "",
                "goal_met": goal_met(by_area[a], r),
                "note": r.note,
                "skipped": r.skipped,
                "extrapolated": r.extrapolated,
                "samples": list(r.samples),
            }
            for a, r in results
        ],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``fastreap bench [--quick] [--json PATH] [--only AREA ...]``."""
    names = [a[0] for a in AREAS]
    p = argparse.ArgumentParser(
        prog="fastreap bench",
        description="Benchmarks; ratios are against baselines measured in the same run. "
        "Run on a quiet machine.",
    )
    p.add_argument("--quick", action="store_true", help=f"fewer samples; takes {QUICK_PROMISE}")
    p.add_argument("--json", metavar="PATH", help="write every sample to PATH as JSON")
    p.add_argument(
        "--only",
        action="append",
        choices=names,
        metavar="AREA",
        help=f"run only this area ({', '.join(names)}); repeatable",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    return run_suite(quick=args.quick, json_path=args.json, areas=args.only)
