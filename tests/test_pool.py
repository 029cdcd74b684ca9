"""fastreap.ProcessPoolExecutor (alias fastreap.Pool)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

import fastreap

# (start method, max_tasks_per_child): fork-per-task, long-lived fork, spawn
MODES = [("fork", 1), ("fork", None), ("spawn", 2)]


def _sq(x: int) -> int:
    return x * x


def _pid(_x: object = None) -> int:
    return os.getpid()


def _boom(msg: str) -> None:
    raise ValueError(msg)


def _die(code: int) -> None:
    os._exit(code)


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(10)


def _sleep(t: float) -> float:
    time.sleep(t)
    return t


def _unpicklable() -> Any:
    return lambda: None


_INIT: list[str] = []


def _init(tag: str) -> None:
    _INIT.append(tag)


def _get_init() -> list[str]:
    return list(_INIT)


def pool(mode: tuple[str, int | None], workers: int = 2, **kw: Any) -> fastreap.ProcessPoolExecutor:
    method, limit = mode
    return fastreap.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method), max_tasks_per_child=limit, **kw
    )


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_results_in_order_and_exceptions_with_remote_traceback(mode: tuple[str, int | None]) -> None:
    with pool(mode) as ex:
        assert list(ex.map(_sq, range(20))) == [x * x for x in range(20)]
        f = ex.submit(_boom, "bad")
        with pytest.raises(ValueError, match="bad") as ei:
            f.result(60)
        assert "_boom" in str(ei.value.__cause__)
        assert ex.submit(_sq, 7).result(60) == 49


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_worker_dying_mid_task_fails_that_future_and_the_pool_goes_on(
    mode: tuple[str, int | None], backend: str
) -> None:
    with pool(mode) as ex:
        f1 = ex.submit(_die, 7)
        f2 = ex.submit(_kill_self, signal.SIGKILL)
        with pytest.raises(fastreap.WorkerDiedError, match="exited with code 7") as e1:
            f1.result(60)
        assert isinstance(e1.value, BrokenProcessPool)
        assert e1.value.status is not None and e1.value.status.exit_code == 7
        with pytest.raises(fastreap.WorkerDiedError, match="SIGKILL") as e2:
            f2.result(60)
        assert e2.value.status is not None and e2.value.status.signal == signal.SIGKILL
        assert list(ex.map(_sq, range(6))) == [0, 1, 4, 9, 16, 25]


def test_max_tasks_per_child_one_gives_each_task_its_own_process() -> None:
    with pool(("fork", 1), workers=3) as ex:
        pids = list(ex.map(_pid, range(12)))
    assert len(set(pids)) == 12 and os.getpid() not in pids


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_max_tasks_per_child_n_replaces_workers(method: str) -> None:
    with pool((method, 2), workers=2) as ex:
        pids = [ex.submit(_pid).result(60) for _ in range(8)]
    counts = {p: pids.count(p) for p in set(pids)}
    assert max(counts.values()) <= 2 and len(counts) >= 4


class _MyInt(int):
    pass


def _ident(x: Any) -> Any:
    return x


_VALUES: list[Any] = [0, -5, 2**100, 1.5, 1j, True, "s", b"b", None, [1, "x"], {"a": (1,)}, _MyInt(7)]


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_results_of_every_kind_round_trip(mode: tuple[str, int | None]) -> None:
    # Scalars take plain pickle, everything else multiprocessing's pickler.
    with pool(mode) as ex:
        got = list(ex.map(_ident, _VALUES))
    assert got == _VALUES
    assert [type(g) for g in got] == [type(v) for v in _VALUES]


def _big(i: int, size: int) -> bytes:
    return bytes([i % 256]) * size + i.to_bytes(4, "big")


@pytest.mark.parametrize("size", [0, 100, 32768 - 200, 32768 * 3 + 17, 1 << 20])
def test_fork_per_task_results_of_any_size_arrive_whole(size: int) -> None:
    # Results share one socket: chunks of several children interleave on it
    # and must be put back together per task.
    with pool(("fork", 1), workers=4) as ex:
        got = list(ex.map(_big, range(12), [size] * 12))
    assert got == [_big(i, size) for i in range(12)]


def test_fork_per_task_result_bigger_than_the_socket_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    # A chunk that does not fit the socket's buffer (EMSGSIZE) is halved
    # until it does: set one far beyond any default buffer (children inherit it).
    from fastreap import _pool

    monkeypatch.setattr(_pool, "_CHUNK", 8 << 20)
    with pool(("fork", 1), workers=2) as ex:
        got = list(ex.map(_big, range(3), [3 << 20] * 3))
    assert got == [_big(i, 3 << 20) for i in range(3)]


def _log_running(path: str, t: float) -> None:
    # O_APPEND writes of one byte are atomic and land in the order they happen.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+")
        time.sleep(t)
        os.write(fd, b"-")
    finally:
        os.close(fd)


def test_fork_per_task_runs_at_most_max_workers_tasks_at_once(tmp_path: Any) -> None:
    # A child that has sent its result is replaced before it is reaped: the
    # number of tasks running at once still never exceeds max_workers.
    path = str(tmp_path / "log")
    open(path, "wb").close()
    with pool(("fork", 1), workers=3) as ex:
        list(ex.map(_log_running, [path] * 30, [0.01] * 30))
    with open(path, "rb") as f:
        log = f.read()
    assert log.count(b"+") == log.count(b"-") == 30
    running = top = 0
    for b in log:
        running += 1 if b == ord("+") else -1
        top = max(top, running)
    assert 1 <= top <= 3


def test_submit_from_many_threads_wakes_the_manager() -> None:
    # Submissions write one wake-up byte per manager wake-up, not per call:
    # none may be left unseen, whichever thread submits.
    import threading

    with pool(("fork", 1), workers=3) as ex:
        futs: list[list[concurrent.futures.Future[int]]] = [[] for _ in range(4)]

        def submit(i: int) -> None:
            for j in range(25):
                futs[i].append(ex.submit(_sq, i * 100 + j))

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(4):
            assert [f.result(60) for f in futs[i]] == [(i * 100 + j) ** 2 for j in range(25)]


def test_long_lived_workers_are_reused() -> None:
    with pool(("fork", None), workers=1) as ex:
        pids = {ex.submit(_pid).result(60) for _ in range(5)}
    assert len(pids) == 1


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_initializer_runs_in_each_worker(mode: tuple[str, int | None]) -> None:
    with pool(mode, initializer=_init, initargs=("x",)) as ex:
        assert ex.submit(_get_init).result(60) == ["x"]
    assert _INIT == []  # never in the parent


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_unpicklable_result_is_a_clear_error(mode: tuple[str, int | None]) -> None:
    with pool(mode) as ex:
        with pytest.raises(pickle.PicklingError, match="result"):
            ex.submit(_unpicklable).result(60)
        assert ex.submit(_sq, 3).result(60) == 9


def test_unpicklable_task_for_long_lived_workers() -> None:
    with pool(("spawn", None), workers=1) as ex:
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            ex.submit(_sq, lambda: 1).result(60)
        assert ex.submit(_sq, 4).result(60) == 16


def test_closures_work_in_fork_per_task_mode() -> None:
    k = 5
    with pool(("fork", 1)) as ex:
        assert ex.submit(lambda: k * 2).result(60) == 10  # nothing is pickled on the way in


def test_shutdown_twice_and_submit_after_shutdown() -> None:
    ex = pool(("fork", 1))
    assert ex.submit(_sq, 2).result(60) == 4
    ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(_sq, 2)


def test_shutdown_of_an_unused_pool_starts_nothing() -> None:
    ex = fastreap.Pool(2)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(_sq, 1)


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_shutdown_cancel_futures(mode: tuple[str, int | None]) -> None:
    ex = pool(mode, workers=1)
    first = ex.submit(_sleep, 0.5)
    rest = [ex.submit(_sq, i) for i in range(10)]
    while not first.running():
        time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == 0.5
    assert all(f.cancelled() for f in rest)


@pytest.mark.parametrize("mode", MODES, ids=str)
def test_shutdown_timeout_stops_running_workers(mode: tuple[str, int | None], backend: str) -> None:
    ex = pool(mode, workers=2)
    fs = [ex.submit(_sleep, 60) for _ in range(2)]
    queued = ex.submit(_sq, 1)
    while not all(f.running() for f in fs):
        time.sleep(0.01)
    t0 = time.monotonic()
    ex.shutdown(wait=True, timeout=0.2)
    assert time.monotonic() - t0 < 30
    for f in fs:
        with pytest.raises(fastreap.WorkerDiedError, match="SIGTERM"):
            f.result(0)
    assert queued.cancelled()


def test_shutdown_wait_false_finishes_in_background() -> None:
    ex = pool(("fork", 1))
    f = ex.submit(_sleep, 0.2)
    ex.shutdown(wait=False)
    assert f.result(60) == 0.2
    ex.shutdown(wait=True)  # joins the manager: nothing left behind


def test_executor_api_as_completed_and_pool_alias() -> None:
    assert fastreap.Pool is fastreap.ProcessPoolExecutor
    with fastreap.Pool(3, max_tasks_per_child=1) as ex:
        assert isinstance(ex, concurrent.futures.Executor)
        fs = {ex.submit(_sq, i): i for i in range(10)}
        assert sorted(f.result() for f in concurrent.futures.as_completed(fs, timeout=60)) == sorted(
            i * i for i in range(10)
        )
        assert ex.max_workers == 3


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers"),
        ({"max_workers": -1}, ValueError, "max_workers"),
        ({"max_workers": True}, TypeError, "max_workers"),
        ({"max_workers": 2.0}, TypeError, "max_workers"),
        ({"max_workers": "2"}, TypeError, "max_workers"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"max_tasks_per_child": -2}, ValueError, "max_tasks_per_child"),
        ({"max_tasks_per_child": 1.5}, TypeError, "max_tasks_per_child"),
        ({"mp_context": "fork"}, TypeError, "mp_context"),
        ({"initializer": 3}, TypeError, "initializer"),
        ({"initargs": [1]}, TypeError, "initargs"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        fastreap.ProcessPoolExecutor(**kwargs)


def test_bad_submit_and_shutdown_arguments() -> None:
    with fastreap.Pool(1) as ex:
        with pytest.raises(TypeError, match="fn"):
            ex.submit(3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="wait"):
            ex.shutdown(wait="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="cancel_futures"):
            ex.shutdown(cancel_futures=1)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            ex.shutdown(timeout=-1)
        assert ex.submit(_sq, 2).result(60) == 4  # none of those shut it down
