"""Benchmarks for the worker side (issue 2), in the ``_util`` protocol.

Two questions, each answered against a baseline measured in the same run:

* How cheap is the check a worker loop makes? ``fastreap.stop_requested()``
  next to ``threading.Event().is_set()`` (goal: no slower) and
  ``multiprocessing.Event().is_set()`` (goal: at least 10x faster).
* How soon does a worker thread learn of SIGTERM while the main thread is
  inside one long C call (``hashlib.sha256`` over 512 MiB)? fastreap's C
  handler sets the flag and wakes the thread at once (goal: median < 1 ms); a
  ``signal.signal`` handler only runs when the C call returns. SIGTERM comes
  from a thread of this process and from another process.

Every delay is measured on CLOCK_MONOTONIC, which all processes share: the
sender reads it just before ``kill()``, the receiver just after it noticed.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import _flags
from . import _cref
from ._util import Goal, Progress, Result, per_call_ns, pick

SIG = signal.SIGTERM
BUFFER = 512 << 20

CHECK = "flag check"
CHECK_MP = "flag check vs multiprocessing.Event"
LATENCY = "SIGTERM until a worker thread sees it, main thread in sha256(512 MiB)"

TEV = "threading.Event().is_set()"
MPEV = "multiprocessing.Event().is_set()"
STOP = "fastreap.stop_requested()"
CREF = "C acquire load (loop in C)"

# The sender, as source so a thread and a separate interpreter run the same
# code: wait for "go", pause a little (so sends do not line up with anything
# periodic), read the clock, kill, report the clock reading.
_SENDER = """
import os, random, struct, time
def send(pid, sig, go, res, n, lo, hi):
    for _ in range(n):
        if not os.read(go, 1):
            break
        time.sleep(random.uniform(lo, hi))
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        os.kill(pid, sig)
        os.write(res, struct.pack("q", t0))
"""
_ns: dict[str, Any] = {}
exec(_SENDER, _ns)
_send: Callable[..., None] = _ns["send"]


def _clock() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class _Sender:
    """n kills of this process, one per byte written to ``go``, from a thread
    or from another interpreter; ``sent()`` returns their clock readings."""

    def __init__(self, kind: str, n: int, lo: float, hi: float) -> None:
        self.go_r, self.go_w = os.pipe()
        self.res_r, self.res_w = os.pipe()
        self.n = n
        args = (os.getpid(), int(SIG), self.go_r, self.res_w, n, lo, hi)
        self.thread: threading.Thread | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        if kind == "thread":
            self.thread = threading.Thread(target=_send, args=args, daemon=True)
            self.thread.start()
        else:
            code = _SENDER + f"\nsend{args!r}\n"
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(self.go_r, self.res_w))

    def go(self) -> None:
        os.write(self.go_w, b"g")

    def finish(self) -> list[int]:
        """Stop the sender (no more kills after this returns) and collect."""
        os.close(self.go_w)  # an early end: the sender's read returns b""
        if self.thread is not None:
            self.thread.join()
        if self.proc is not None:
            self.proc.wait()
        os.close(self.res_w)
        data = b""
        while chunk := os.read(self.res_r, 65536):
            data += chunk
        os.close(self.res_r)
        os.close(self.go_r)
        return [struct.unpack_from("q", data, i)[0] for i in range(0, len(data), 8)]


def _check_cost(quick: bool, progress: Progress) -> list[Result]:
    number, repeat = pick(quick, (1_000_000, 15), (500_000, 7), (2_000, 2))
    tev = threading.Event()
    # The fork context's Event unlinks its semaphore at once: no resource
    # tracker process is started just to measure it. No child is made either.
    mpev = multiprocessing.get_context("fork").Event()
    flag = _flags.default_flag()
    cases = [
        (TEV, tev.is_set, number),
        (STOP, _flags.stop_requested, number),
        ("StopFlag.is_set()", flag.is_set, number),
        (MPEV, mpev.is_set, max(number // 10, 10_000)),  # ~1 us a call: fewer, same precision
    ]
    samples: dict[str, list[float]] = {}
    # Interleaved: one sample of each in turn, so drift hits them alike. Each
    # is measured once per run; the second group reuses the same samples.
    for i in range(repeat):
        progress(f"{CHECK}: round {i + 1}/{repeat}")
        for name, fn, n in cases:
            samples.setdefault(name, []).extend(per_call_ns(fn, number=n, repeat=1))
        samples.setdefault(CREF, []).append(_cref.flag_load(number * 20))
    out = [
        Result(CHECK, TEV, "ns", samples[TEV]),
        Result(CHECK, CREF, "ns", samples[CREF], baseline=TEV, note="no Python loop around it"),
        Result(
            CHECK, STOP, "ns", samples[STOP], baseline=TEV, goal=Goal("<= 1.0x threading.Event", TEV, 1.0)
        ),
        Result(CHECK, "StopFlag.is_set()", "ns", samples["StopFlag.is_set()"], baseline=TEV),
        Result(CHECK, MPEV, "ns", samples[MPEV], baseline=TEV),
        Result(CHECK_MP, MPEV, "ns", samples[MPEV]),
        Result(
            CHECK_MP,
            STOP,
            "ns",
            samples[STOP],
            baseline=MPEV,
            goal=Goal(">= 10x faster than mp.Event", MPEV, 0.1),
            note="the same samples as above",
        ),
    ]
    return out


def _hash_while(
    data: bytes, during: threading.Thread | None, before: _Sender | None = None
) -> tuple[int, int]:
    """Hash data in this (the main) thread; start ``during`` just before and
    poke ``before`` right before entering the C call. Return its clock span."""
    if during is not None:
        during.start()
        time.sleep(0.005)
    if before is not None:
        before.go()
    t0 = _clock()
    hashlib.sha256(data).digest()  # one C call; it releases the GIL
    t1 = _clock()
    if during is not None:
        during.join()
    return t0, t1


def _fastreap_round(data: bytes, kind: str, n: int) -> tuple[list[float], int]:
    """One sha256 call, n SIGTERMs during it; delays (ms) seen by a worker
    thread blocked in the default flag's wait(), and how many fell outside."""
    flag = _flags.default_flag()
    sender = _Sender(kind, n, 0.0005, 0.002)
    seen: list[int] = []

    def worker() -> None:
        time.sleep(0.02)  # the main thread is inside sha256 by now
        for _ in range(n):
            flag.clear()
            sender.go()
            if not flag.wait(5):
                break
            t = _clock()
            if not _flags.stop_requested():  # pragma: no cover - would be a bug
                break
            seen.append(t)

    _, end = _hash_while(data, threading.Thread(target=worker))
    sent = sender.finish()
    flag.clear()
    delays = [(s - t0) / 1e6 for t0, s in zip(sent, seen, strict=False) if s <= end]
    return delays, len(sent) - len(delays)


def _python_handler_round(data: bytes, kind: str) -> float:
    """One sha256 call, one SIGTERM early in it; the delay (ms) until a
    signal.signal handler runs (only after the call returns)."""
    got: list[int] = []

    def handler(signum: int, frame: object) -> None:
        got.append(_clock())

    old = signal.signal(SIG, handler)
    try:
        sender = _Sender(kind, 1, 0.02, 0.02)
        _hash_while(data, None, before=sender)
        sent = sender.finish()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.0001)  # bytecodes and EINTR: the handler's chance
    finally:
        signal.signal(SIG, old)
    return (got[0] - sent[0]) / 1e6 if got and sent else float("nan")


def _latency(quick: bool, progress: Progress) -> list[Result]:
    if threading.current_thread() is not threading.main_thread():
        return []  # signal.signal and exit-style delivery need the main thread
    if SIG in _flags._installed:
        return []  # this process already handles SIGTERM; do not disturb it
    rounds, per_round, py_rounds = pick(quick, (3, 50, 5), (1, 50, 2), (1, 3, 1))
    progress(f"{LATENCY}: allocating {BUFFER >> 20} MiB")
    data = bytes(BUFFER)
    out: list[Result] = []
    try:
        for kind, who in (("thread", "a thread"), ("process", "another process")):
            progress(f"{LATENCY}: fastreap, sent by {who}")
            _flags.handle_signals([SIG])
            delays: list[float] = []
            late = 0
            try:
                for _ in range(rounds):
                    d, n_late = _fastreap_round(data, kind, per_round)
                    delays += d
                    late += n_late
            finally:
                _flags.restore_signals([SIG])
            progress(f"{LATENCY}: signal.signal handler, sent by {who}")
            py = [_python_handler_round(data, kind) for _ in range(py_rounds)]
            base = f"signal.signal handler, sent by {who}"
            out.append(Result(LATENCY, base, "ms", py))
            out.append(
                Result(
                    LATENCY,
                    f"fastreap flag + wait(), sent by {who}",
                    "ms",
                    delays,
                    baseline=base,
                    goal=Goal("median < 1 ms", max_value=1.0),
                    note=f"{len(delays)} signals during the call; the handler runs when the call returns"
                    + (f", {late} after it (dropped)" if late else ""),
                )
            )
    finally:
        del data
    return out


def run(quick: bool, progress: Progress) -> list[Result]:
    """The worker-side benchmarks (about 10 s with quick=True)."""
    return _check_cost(quick, progress) + _latency(quick, progress)
