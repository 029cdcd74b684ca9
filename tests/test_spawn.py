"""fastreap.spawn (a Popen watched from birth) and fastreap.run_all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

import fastreap
from fastreap import _core

# ---- spawn ------------------------------------------------------------------


def test_spawn_is_a_real_popen_with_pipes_env_cwd(backend: str, tmp_path: object) -> None:
    c = fastreap.spawn(
        [
            sys.executable,
            "-c",
            "import os,sys; print(os.environ['X'], os.getcwd()); sys.stdin.read(); sys.exit(3)",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "X": "hello"},
        cwd=str(tmp_path),
        text=True,
    )
    assert isinstance(c, fastreap.Child)
    p = c.popen
    assert isinstance(p, subprocess.Popen) and p.pid == c.pid
    out, _ = p.communicate("")
    assert out.split() == ["hello", str(tmp_path)]
    assert c.wait(10) == 3 and p.returncode == 3 and p.wait() == 3
    assert c.status is not None and c.status.exit_code == 3


def test_spawn_signal_status(backend: str) -> None:
    c = fastreap.spawn(["/bin/sleep", "60"])
    c.kill()
    assert c.wait(10) == -signal.SIGKILL
    assert c.popen is not None and c.popen.wait() == -signal.SIGKILL


@pytest.mark.parametrize("code", [0, 5])
def test_spawn_then_popen_wait_in_another_thread_never_races(backend: str, code: int) -> None:
    """Watched from birth: a thread waiting on the Popen and the watcher both
    see the true code, and nobody gets ChildProcessError or a lost child."""
    results: list[object] = []
    for _ in range(20):
        c = fastreap.spawn(["/bin/sh", "-c", f"exit {code}"])
        p = c.popen
        assert p is not None
        t = threading.Thread(target=lambda p=p: results.append(p.wait()))
        t.start()
        assert c.wait(10) == code
        t.join(10)
        assert not c.lost
    assert results == [code] * 20


def test_child_popen_is_none_for_a_pid() -> None:
    p = subprocess.Popen(["/bin/true"])
    c = fastreap.watch(p.pid)
    assert c.popen is None
    assert c.wait(10) == 0
    assert p.wait() == 0  # ECHILD: the stdlib's own answer


def test_spawn_bad_input_leaves_nothing() -> None:
    with pytest.raises(TypeError):
        fastreap.spawn(123)
    with pytest.raises(FileNotFoundError):
        fastreap.spawn(["/nonexistent/program"])
    with pytest.raises(TypeError):
        fastreap.spawn(["/bin/true"], no_such_argument=1)
    assert fastreap.counters()["watched"] == 0


def test_ctrl_c_between_popen_and_watch_stops_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    # A KeyboardInterrupt landing in spawn() after the Popen started (in
    # watch: taking the watcher lock, registering) left that child running
    # with nobody holding it: run_all's Ctrl-C clean-up could not stop it.
    from fastreap import _spawn

    made: list[subprocess.Popen[bytes]] = []

    def interrupted_watch(p: subprocess.Popen[bytes]) -> fastreap.Child:
        made.append(p)
        raise KeyboardInterrupt

    monkeypatch.setattr(_spawn, "watch", interrupted_watch)
    with pytest.raises(KeyboardInterrupt):
        fastreap.spawn(["/bin/sleep", "60"])
    assert made[0].returncode == -signal.SIGKILL


# ---- run_all ------------------------------------------------------------------


def test_run_all_yields_each_index_once_with_its_true_status(backend: str) -> None:
    cmds = [["/bin/sh", "-c", f"exit {i}"] for i in range(20)] + [
        ["/bin/sh", "-c", "kill -9 $$"],
        "/bin/true",
    ]
    got = dict(fastreap.run_all(cmds, max_concurrent=4))
    assert sorted(got) == list(range(22))
    for i in range(20):
        assert got[i].returncode == i and got[i].exit_code == i
    assert got[20].signal == signal.SIGKILL and got[20].returncode == -9
    assert got[21].returncode == 0


def test_run_all_in_finishing_order() -> None:
    cmds = [["/bin/sleep", "60"], "/bin/true"]
    # The first never finishes by itself: the second must come out first.
    it = fastreap.run_all(cmds, max_concurrent=2)
    idx, st = next(it)
    assert (idx, st.returncode) == (1, 0)
    it.close()  # stops the first


def test_run_all_caps_concurrency(backend: str) -> None:
    seen = []
    for _ in fastreap.run_all([["/bin/sh", "-c", "exit 0"]] * 30, max_concurrent=3):
        seen.append(fastreap.counters()["watched"])
    assert len(seen) == 30 and max(seen) <= 3


def test_run_all_timeout_stops_the_rest_and_raises(backend: str) -> None:
    cmds = ["/bin/true", ["/bin/sleep", "60"], ["/bin/sleep", "60"], ["/bin/sleep", "60"]]
    got = []
    with pytest.raises(TimeoutError, match="timeout"):
        for item in fastreap.run_all(cmds, max_concurrent=3, timeout=0.5):
            got.append(item[0])
    assert got == [0]
    assert fastreap.counters()["watched"] == 0  # the sleepers were stopped and reaped


def test_run_all_close_early_stops_the_rest() -> None:
    it = fastreap.run_all(["/bin/true", ["/bin/sleep", "60"], ["/bin/sleep", "60"]], max_concurrent=3)
    assert next(it)[0] == 0
    it.close()
    assert fastreap.counters()["watched"] == 0


def test_run_all_stop_flag_ends_quietly() -> None:
    fastreap.handle_signals([signal.SIGUSR2])
    try:
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR2))
        timer.start()
        got = list(fastreap.run_all([["/bin/sleep", "60"]] * 4, max_concurrent=2))
        timer.join()
        assert got == []
        assert fastreap.counters()["watched"] == 0
    finally:
        fastreap.restore_signals([signal.SIGUSR2])
        _core.default_flag.clear()


def test_run_all_keyboard_interrupt_stops_the_rest() -> None:
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in fastreap.run_all([["/bin/sleep", "60"]] * 4, max_concurrent=2):
            pass  # pragma: no cover
    timer.join()
    assert fastreap.counters()["watched"] == 0


def test_run_all_command_that_cannot_start_raises_after_stopping_the_rest() -> None:
    with pytest.raises(FileNotFoundError):
        list(fastreap.run_all([["/bin/sleep", "60"], ["/nonexistent/x"]], max_concurrent=2))
    assert fastreap.counters()["watched"] == 0


def test_run_all_starts_nothing_until_iterated() -> None:
    it = fastreap.run_all([["/bin/sleep", "60"]])
    assert fastreap.counters()["watched"] == 0
    it.close()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"commands": "/bin/true"}, TypeError, "commands"),
        ({"commands": 3}, TypeError, "commands"),
        ({"commands": [3]}, TypeError, r"commands\[0\]"),
        ({"commands": [["/bin/true", 3]]}, TypeError, r"commands\[0\]"),
        ({"commands": [[]]}, ValueError, r"commands\[0\] is empty"),
        ({"commands": [], "max_concurrent": 0}, ValueError, "max_concurrent"),
        ({"commands": [], "max_concurrent": -3}, ValueError, "max_concurrent"),
        ({"commands": [], "max_concurrent": True}, TypeError, "max_concurrent"),
        ({"commands": [], "max_concurrent": 2.0}, TypeError, "max_concurrent"),
        ({"commands": [], "timeout": -1}, ValueError, "timeout"),
        ({"commands": [], "timeout": "1"}, TypeError, "timeout"),
    ],
)
def test_run_all_bad_input_raises_at_call_time(kwargs: dict[str, object], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        fastreap.run_all(**kwargs)  # type: ignore[arg-type]


def test_run_all_empty() -> None:
    assert list(fastreap.run_all([])) == []
