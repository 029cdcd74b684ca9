"""fastreap.Process: the drop-in multiprocessing.Process with stop()."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import fastreap
from fastreap import _core

Ctx = multiprocessing.context.BaseContext


# Targets live at module level so spawn and forkserver children can import them.


def _ignores_requests(started: Any, path: str) -> None:
    """Never looks at a stop request; its finally must still run (Stopped)."""
    try:
        with open(path, "w") as f:
            f.write("started")
        started.set()
        while True:
            sum(range(1000))  # busy in bytecode: Stopped lands at the next one
    finally:
        with open(path, "a") as f:
            f.write(" finally")


def _checks_requests(started: Any, path: str) -> None:
    """Returns on its own once stop_requested() says so."""
    me = multiprocessing.current_process()
    started.set()
    while not fastreap.stop_requested():
        time.sleep(0.01)
    with open(path, "w") as f:
        f.write(f"flag={me.stop_flag.is_set()} signal={fastreap.stop_requested()}")  # type: ignore[attr-defined]


def _blocks_sigterm(started: Any) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    started.set()
    time.sleep(60)


def _busy() -> None:
    while True:
        sum(range(1000))


def _exit5() -> None:
    os._exit(5)


def _report_inherited_flag(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(fastreap.stop_requested()))


def test_ignoring_target_gets_stopped_and_finally_runs(mp_context: Ctx, tmp_path: Path) -> None:
    started = mp_context.Event()
    out = tmp_path / "out"
    p = fastreap.Process(target=_ignores_requests, args=(started, str(out)), mp_context=mp_context)
    p.start()
    assert started.wait(60)
    assert p.stop(60) == 143
    assert p.exitcode == 143
    assert out.read_text() == "started finally"
    p.join()  # nothing left: the watcher reaped it and wrote the code back
    assert p.exitcode == 143


def test_checking_target_returns_zero(mp_context: Ctx, tmp_path: Path) -> None:
    started = mp_context.Event()
    out = tmp_path / "out"
    p = fastreap.Process(
        target=_checks_requests, args=(started, str(out)), exit_on_stop=False, mp_context=mp_context
    )
    assert p.exit_on_stop is False
    p.start()
    assert started.wait(60)
    assert p.stop(60) == 0
    assert out.read_text() == "flag=True signal=True"


def test_blocked_sigterm_is_killed(mp_context: Ctx) -> None:
    started = mp_context.Event()
    p = fastreap.Process(target=_blocks_sigterm, args=(started,), mp_context=mp_context)
    p.start()
    assert started.wait(60)
    assert p.stop(0.5) == -9
    assert p.exitcode == -9


def test_stop_right_after_start(mp_context: Ctx) -> None:
    # The signal waits for the child's handlers: never the -15 that SIGTERM's
    # default action would give a child still starting up.
    p = fastreap.Process(target=_busy, mp_context=mp_context)
    p.start()
    assert p.stop(60) == 143


def test_start_method_is_the_contexts(mp_context: Ctx) -> None:
    p = fastreap.Process(target=_exit5, mp_context=mp_context)
    p.start()
    assert p._start_method == mp_context.get_start_method()
    assert type(p._popen).__module__.startswith(f"multiprocessing.popen_{mp_context.get_start_method()}")
    p.join()
    assert p.exitcode == 5
    assert p.stop() == 5  # already finished: its code, nothing sent


def test_default_context() -> None:
    p = fastreap.Process(target=_exit5)
    p.start()
    assert p._start_method == multiprocessing.get_start_method()
    p.join()
    assert p.stop(60) == 5


def test_fork_child_starts_without_the_parents_request(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _core.default_flag.set()
    try:
        p = fastreap.Process(
            target=_report_inherited_flag, args=(str(out),), mp_context=multiprocessing.get_context("fork")
        )
        p.start()
    finally:
        _core.default_flag.clear()
    p.join()
    assert p.exitcode == 0 and out.read_text() == "False"


def test_is_a_multiprocessing_process() -> None:
    p = fastreap.Process(target=_exit5)
    assert isinstance(p, multiprocessing.Process)
    assert p.stop_flag.shared and not p.stop_flag.is_set()
    with pytest.raises(ValueError, match="not started"):
        p.stop()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="mp_context"):
        fastreap.Process(target=_exit5, mp_context="spawn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="exit_on_stop"):
        fastreap.Process(target=_exit5, exit_on_stop=1)  # type: ignore[arg-type]
    p = fastreap.Process(target=_exit5, mp_context=multiprocessing.get_context("fork"))
    p.start()
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            p.stop(bad)
    p.join()
    assert p.stop(60) == 5
    p.close()
    with pytest.raises(ValueError, match="closed"):
        p.stop()
