"""The common shape of fastreap's benchmarks.

Each area module (``flags``, ``reap``, ``latency``, ``stop``, ``churn``) defines
``run(quick: bool, progress: Callable[[str], None]) -> list[Result]``. A result
holds raw samples; ratios are always against a baseline measured in the same
run (``Result.baseline`` names it within the same group), and a case that could
not run is a result too, with ``skipped`` saying why.

Also here: running a case in a fresh interpreter (``fresh``), and the tiny C
program the exit-latency cases exec (``stamper``), compiled at bench time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Progress = Callable[[str], None]


@dataclass
class Goal:
    """A target from an issue: ``median / ref.median <= max_ratio`` (ref a
    result of the same group), or ``median <= max_value`` when ref is None."""

    text: str  # e.g. "<= 1.05x plain Python pidfd"
    ref: str | None = None
    max_ratio: float | None = None
    max_value: float | None = None
    also: Goal | None = None  # a second condition that must hold too


@dataclass
class Result:
    """One measured case (lower is better for every unit used here)."""

    group: str  # e.g. "flag check", "exit-to-notice latency, 16 live"
    name: str  # e.g. "fastreap.stop_requested()"
    unit: str  # "ns", "us", "ms" or "s"
    samples: list[float] = field(default_factory=list)
    baseline: str | None = None  # name of the result in this group to divide by
    goal: Goal | None = None
    note: str = ""
    skipped: str = ""  # why it did not run ("" if it did)
    extrapolated: bool = False  # not measured at the size the group states

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.median
        return statistics.quantiles(self.samples, n=10)[-1]


def find(results: Sequence[Result], group: str, name: str) -> Result | None:
    for b in results:
        if b.group == group and b.name == name and b.samples:
            return b
    return None


def ratio(results: Sequence[Result], r: Result) -> float | None:
    """r's median over its baseline's median (same group), or None."""
    if r.baseline is None or not r.samples:
        return None
    b = find(results, r.group, r.baseline)
    return r.median / b.median if b is not None and b.median else None


def describe_ratio(q: float) -> str:
    """One direction, with the word: "2.10x slower" / "1.30x faster"."""
    if 0.995 <= q < 1.005:
        return "1.00x (same)"
    if q >= 1:
        return f"{q:.2f}x slower"
    return f"{1 / q:.2f}x faster"


def goal_met(results: Sequence[Result], r: Result) -> bool | None:
    """Whether r meets its goal (None: no goal, or nothing to judge by)."""
    if r.goal is None or not r.samples:
        return None
    verdicts = []
    g: Goal | None = r.goal
    while g is not None:
        verdicts.append(_one_goal(results, r, g))
        g = g.also
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _one_goal(results: Sequence[Result], r: Result, g: Goal) -> bool | None:
    if g.ref is None:
        return None if g.max_value is None else r.median <= g.max_value
    ref = find(results, r.group, g.ref)
    if ref is None or not ref.median or g.max_ratio is None:
        return None
    return r.median / ref.median <= g.max_ratio


def per_call_ns(fn: Callable[[], object], *, number: int, repeat: int) -> list[float]:
    """Nanoseconds per call of fn, one sample per repeat (loop overhead included,
    the same for every case compared)."""
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        out.append((time.perf_counter_ns() - t0) / number)
    return out


# --------------------------------------------------------- fresh interpreters

_FRESH = """
import json, sys, importlib
mod, fn, kw = json.loads(sys.argv[1])
out = getattr(importlib.import_module(mod), fn)(**kw)
sys.stdout.write("\\n@@RESULT@@" + json.dumps(out) + "\\n")
"""


def fresh(module: str, fn: str, env: dict[str, str] | None = None, timeout: float = 600, **kw: Any) -> Any:
    """Call ``module.fn(**kw)`` in a new interpreter (this Python, this
    fastreap) and return its JSON-able result. ``env`` is added to ours."""
    e = dict(os.environ)
    e.pop("FASTREAP_BACKEND", None)
    e.update(env or {})
    r = subprocess.run(
        [sys.executable, "-c", _FRESH, json.dumps([module, fn, kw])],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
    )
    if r.returncode != 0 or "@@RESULT@@" not in r.stdout:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{module}.{fn} in a fresh process failed ({r.returncode}): {tail}")
    return json.loads(r.stdout.rsplit("@@RESULT@@", 1)[1])


# ------------------------------------------------------------ stamping child

STAMPER_C = r"""
/* fastreap bench's stamping child: fd 3 is a shared page, stdin a pipe. On a
 * byte it stamps CLOCK_MONOTONIC (ns) into the page and _exit(0)s at once; on
 * EOF it _exit(1)s without stamping. No libc teardown, no Python. */
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    int64_t *p = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, 3, 0);
    char c;
    ssize_t r;
    struct timespec ts;
    if (p == MAP_FAILED) _exit(2);
    while ((r = read(0, &c, 1)) < 0) {}
    if (r != 1) _exit(1);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    __atomic_store_n(p, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec, __ATOMIC_SEQ_CST);
    _exit(0);
}
"""


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastreap")


def stamper() -> tuple[str | None, str]:
    """The stamping child's executable, compiled once with the system C
    compiler into ~/.cache/fastreap (or a temporary directory): (path, "") or
    (None, why not)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler (cc) on PATH to build the stamping child"
    tag = hashlib.sha256((STAMPER_C + cc).encode()).hexdigest()[:12]
    for d in (_cache_dir(), os.path.join(tempfile.gettempdir(), f"fastreap-{os.getuid()}")):
        exe = os.path.join(d, f"stamper-{tag}")
        if os.access(exe, os.X_OK):
            return exe, ""
        try:
            os.makedirs(d, exist_ok=True)
            src = os.path.join(d, f"stamper-{tag}.c")
            with open(src, "w") as f:
                f.write(STAMPER_C)
            tmp = f"{exe}.{os.getpid()}"
            r = subprocess.run([cc, "-O2", "-o", tmp, src], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                return None, f"{cc} failed on the stamping child: {r.stderr.strip()[:200]}"
            os.replace(tmp, exe)
            return exe, ""
        except OSError:
            continue
    return None, "no writable cache directory for the stamping child"


_LIFELINE: list[int] = []


def lifeline() -> int:
    """The read end of a pipe whose write end only this process holds (both
    close-on-exec). Idle children run ``cat`` with it as stdin instead of
    ``sleep 600``: they stay until killed, and if the benchmark dies (a test's
    timeout, Ctrl-C, SIGKILL) they read EOF and exit instead of lingering."""
    if not _LIFELINE:
        import fcntl

        r, w = os.pipe()
        # Above the standard descriptors (stdin may be closed, and a dup2
        # onto itself would keep close-on-exec).
        _LIFELINE[:] = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (r, w)]
        os.close(r)
        os.close(w)
    return _LIFELINE[0]


IDLE = ["cat"]  # with lifeline() as stdin: see there


def spawn_idle(**kw: Any) -> int:
    """posix_spawn an idle child (``cat`` on the lifeline); kw: posix_spawn's."""
    actions = [(os.POSIX_SPAWN_DUP2, lifeline(), 0), *kw.pop("file_actions", [])]
    return os.posix_spawn("/bin/cat", IDLE, os.environ, file_actions=actions, **kw)


def settle(pids: Sequence[int], timeout: float = 60.0) -> None:
    """Wait until none of pids is still starting (runnable or in
    uninterruptible sleep: an idle ``cat`` settles blocked in ``read``).
    Spawning thousands leaves a backlog of them starting on the CPUs for
    seconds after the last ``posix_spawn`` returns; a case timed meanwhile
    measures that queue, not the parent (the first per-exit samples at
    10,000 live took 15-30 ms: the killed child waited for a CPU to exit on).
    Linux (``/proc``) only; elsewhere, and after ``timeout``, it returns."""
    from .._procfs import read_stat

    if not os.path.isdir("/proc/self"):
        return
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        busy = []
        for pid in left:
            try:
                st = read_stat(pid)
            except (OSError, ValueError, IndexError):
                continue
            if st is not None and st.state in ("R", "D"):
                busy.append(pid)
        left = busy
        if left:
            time.sleep(0.05)


def pick(quick: bool, full: Any, quick_value: Any, tiny: Any) -> Any:
    """A size for this run: full, --quick, or tiny (FASTREAP_BENCH_TINY=1,
    for the test suite's smoke test: structure only, figures meaningless)."""
    if os.environ.get("FASTREAP_BENCH_TINY") == "1":
        return tiny
    return quick_value if quick else full
