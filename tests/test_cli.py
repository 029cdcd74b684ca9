"""``fastreap run``: as a plain child, as a subreaper, and as PID 1 of a new PID namespace.

CMD is tests/programs/cli_target.py, which prints a line for each signal it
receives. Every fastreap run is a child interpreter (``python -m fastreap``),
so signals never reach pytest's own process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conftest import PROGRAMS, read_line, wait_ready
from fastreap import _cli, _procfs

TARGET = str(PROGRAMS / "cli_target.py")
FORWARDED = [signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH]


def _unshare_works() -> bool:
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return False
    try:
        r = subprocess.run([exe, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


UNSHARE = _unshare_works()


class Run:
    """One ``fastreap run`` in a child interpreter (optionally as PID 1 of a new PID namespace)."""

    def __init__(
        self,
        *args: str,
        ns: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        cmd = [*prefix, sys.executable, "-m", "fastreap", "run", *args]
        if ns:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
        self.ns = ns
        self.p = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
            cwd=cwd,
        )

    @property
    def fastreap_pid(self) -> int:
        """The pid (in our namespace) of the fastreap process."""
        if not self.ns:  # a prefix must exec fastreap: the same pid
            return self.p.pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # unshare's one child is fastreap
            kids = _procfs.children_of(self.p.pid)
            if kids:
                return kids[0]
            time.sleep(0.01)
        raise AssertionError("unshare started no child")

    def ready(self, word: str = "READY") -> str:
        return wait_ready(self.p, word)  # type: ignore[arg-type]

    def line(self) -> str:
        return read_line(self.p).strip()  # type: ignore[arg-type]

    def send(self, sig: int) -> None:
        os.kill(self.fastreap_pid, sig)

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.communicate()
            raise
        return self.p.returncode, out, err


@pytest.fixture(params=[False, pytest.param(True, marks=pytest.mark.pid1)], ids=["child", "pid1"])
def ns(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Run fastreap as a plain child, then as PID 1 of a new PID namespace."""
    if request.param and not UNSHARE:
        pytest.skip("unshare --pid --fork --mount-proc is not available here")
    yield request.param


# -- exit status -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (["exit", "0"], 0),
        (["exit", "3"], 3),
        (["killself", str(int(signal.SIGTERM))], 128 + signal.SIGTERM),
        (["killself", str(int(signal.SIGKILL))], 128 + signal.SIGKILL),
    ],
)
def test_exit_status_is_cmds(ns: bool, mode: list[str], expected: int) -> None:
    rc, _out, err = Run("--", sys.executable, TARGET, *mode, ns=ns).finish()
    assert rc == expected, err


def test_not_found_is_127() -> None:
    rc, _out, err = Run("--", "/nonexistent/fastreap-test-cmd").finish()
    assert rc == 127
    assert "/nonexistent/fastreap-test-cmd: no such file or directory" in err
    rc, _out, err = Run("--", "fastreap-no-such-command").finish()
    assert rc == 127
    assert "fastreap-no-such-command: command not found" in err


def test_not_executable_is_126(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "noexec.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o644)
    rc, _out, err = Run("--", script).finish()
    assert rc == 126
    assert "Permission denied" in err
    rc, _out, err = Run("--", str(tmp_path)).finish()  # a directory
    assert rc == 126
    assert "is a directory" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "CMD is missing"),
        (["--"], "CMD is missing"),
        (["--grace", "soon", "--", "true"], "not a number of seconds"),
        (["--grace", "-1", "--", "true"], ">= 0"),
        (["--grace", "nan", "--", "true"], ">= 0"),
        (["--stop-signal", "KILL", "--", "true"], "SIGKILL cannot be the stop signal"),
        (["--stop-signal", "NOPE", "--", "true"], "unknown signal"),
        (["--stop-signal", "999", "--", "true"], "no signal number 999"),
        (["--bogus", "--", "true"], "unrecognized arguments"),
        (["--rewrite", "TERM", "--", "true"], "expected FROM:TO"),
        (["--rewrite", "TERM:NOPE", "--", "true"], "unknown signal"),
        (["--rewrite", "CHLD:TERM", "--", "true"], "SIGCHLD is never forwarded"),
        (["--remap-exit", "256", "--", "true"], "an exit code is 0..255"),
        (["--remap-exit", "x", "--", "true"], "not an exit code"),
        (["--pdeathsig", "KILL", "--", "true"], "SIGKILL cannot be forwarded"),
        (["--subreaper", "--no-subreaper", "--", "true"], "not allowed with argument"),
        (["--group", "--no-group", "--", "true"], "not allowed with argument"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    rc, _out, err = Run(*args).finish()
    assert rc == 2
    assert message in err
    assert "usage: fastreap run" in err  # run's own usage, not the top level's


def test_no_command_is_usage_error() -> None:
    r = subprocess.run([sys.executable, "-m", "fastreap"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "a command is required" in r.stderr


@pytest.mark.parametrize("text", ["TERM", "SIGTERM", "sigterm", "15", " term "])
def test_parse_signal_spellings(text: str) -> None:
    assert _cli.parse_signal(text) == signal.SIGTERM


# -- signals ------------------------------------------------------------------------


def test_each_forwarded_signal_reaches_cmd(ns: bool) -> None:
    r = Run("--", sys.executable, TARGET, "wait", ns=ns)
    cmd_pid = r.ready().split()[1]
    for sig in FORWARDED:
        r.send(sig)
        assert r.line() == f"SIG {signal.Signals(sig).name} {cmd_pid}"
    r.send(signal.SIGINT)
    assert r.line() == f"SIG SIGINT {cmd_pid}"  # CMD exits 0 on SIGINT
    rc, _out, err = r.finish()
    assert rc == 0, err


def test_stop_signal_is_forwarded_and_cmd_exit_code_kept(ns: bool) -> None:
    r = Run("-v", "--grace", "30", "--", sys.executable, TARGET, "wait", ns=ns)
    cmd_pid = r.ready().split()[1]
    r.send(signal.SIGTERM)
    assert r.line() == f"SIG SIGTERM {cmd_pid}"
    rc, _out, err = r.finish()
    assert rc == 0, err  # CMD exited 0 on its own, within the grace period
    assert "0 escalation(s) to SIGKILL" in err and ": SIGKILL" not in err


def test_grace_escalates_to_sigkill(ns: bool) -> None:
    r = Run("-v", "--grace", "0.3", "--", sys.executable, TARGET, "ignore-term", ns=ns)
    cmd_pid = r.ready().split()[1]
    r.send(signal.SIGTERM)
    assert r.line() == f"SIG SIGTERM {cmd_pid}"
    rc, _out, err = r.finish()
    assert rc == 128 + signal.SIGKILL, err
    assert "SIGKILL" in err


def test_custom_stop_signal() -> None:
    r = Run("--stop-signal", "HUP", "--grace", "0.3", "--", sys.executable, TARGET, "ignore-term")
    cmd_pid = r.ready().split()[1]
    r.send(signal.SIGHUP)  # ignore-term prints SIGHUP and carries on: escalation follows
    assert r.line() == f"SIG SIGHUP {cmd_pid}"
    rc, _out, err = r.finish()
    assert rc == 128 + signal.SIGKILL, err


def test_group_signals_whole_group(ns: bool) -> None:
    r = Run("--group", "--", sys.executable, TARGET, "group", ns=ns)
    ready = dict(r.ready("READY").split()[1:] for _ in range(2))
    child, leader = ready["child"], ready["leader"]
    r.send(signal.SIGUSR1)
    got = {r.line(), r.line()}
    assert got == {f"SIG SIGUSR1 {child}", f"SIG SIGUSR1 {leader}"}
    r.send(signal.SIGTERM)
    rc, out, err = r.finish()
    assert rc == 0, err
    assert f"SIG SIGTERM {child}" in out and f"SIG SIGTERM {leader}" in out


@pytest.mark.parametrize("subreaper", [True, False], ids=["subreaper", "no-subreaper"])
def test_group_member_ignoring_sigterm_is_killed_after_grace(subreaper: bool) -> None:
    # --group means fastreap does not leave before the group is gone. As a
    # subreaper (the default) the orphaned member becomes fastreap's child and
    # is reaped; without one it is not ours: fastreap says what it waits for
    # and does not wait for its reaping.
    args = [] if subreaper else ["--no-subreaper"]
    r = Run("-v", "--group", *args, "--grace", "0.3", "--", sys.executable, TARGET, "group-stubborn")
    ready = dict(r.ready("READY").split()[1:] for _ in range(2))
    r.send(signal.SIGTERM)
    rc, out, err = r.finish()
    assert rc == 0, err  # the leader's code
    member = ready["child"]
    assert f"SIG SIGTERM {member}" in out
    assert "after 0.3s: SIGKILL" in err
    if subreaper:
        assert f"reaped pid {member} (returncode -{int(signal.SIGKILL)})" in err
    else:
        assert "not our children: not reaped here" in err
        assert f"reaped pid {member}" not in err


# -- orphans ---------------------------------------------------------------------------


def _assert_orphan_reaped(out: str, err: str) -> None:
    orphan = int(next(line.split()[1] for line in out.splitlines() if line.startswith("ORPHAN")))
    assert f"leftover pid {orphan}: SIGTERM" in err, err
    assert f"reaped pid {orphan} (returncode -{int(signal.SIGTERM)})" in err, err


@pytest.mark.pid1
def test_pid1_reaps_and_stops_daemonized_grandchild() -> None:
    if not UNSHARE:
        pytest.skip("unshare --pid --fork --mount-proc is not available here")
    rc, out, err = Run("-v", "--grace", "10", "--", sys.executable, TARGET, "orphan", ns=True).finish()
    assert rc == 0, err
    orphan = int(next(line.split()[1] for line in out.splitlines() if line.startswith("ORPHAN")))
    # Pids printed inside the namespace are that namespace's; the log proves
    # fastreap (PID 1) adopted, stopped and reaped it before exiting, and the
    # namespace is gone now that its PID 1 exited.
    assert f"leftover pid {orphan}: SIGTERM" in err
    assert f"reaped pid {orphan} (returncode -{int(signal.SIGTERM)})" in err


def test_subreaper_reaps_and_stops_daemonized_grandchild() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("subreaper is Linux only")
    rc, out, err = Run("-v", "--subreaper", "--grace", "10", "--", sys.executable, TARGET, "orphan").finish()
    assert rc == 0, err
    _assert_orphan_reaped(out, err)


def test_orphan_ignoring_sigterm_is_killed_after_grace() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("subreaper is Linux only")
    r = Run("-v", "--subreaper", "--grace", "0.3", "--", sys.executable, TARGET, "orphan", "stubborn")
    rc, out, err = r.finish()
    assert rc == 0, err
    orphan = int(out.split()[1])
    assert f"leftover pid {orphan}: SIGTERM" in err
    assert f"leftover pid {orphan}: SIGKILL" in err
    assert f"reaped pid {orphan} (returncode -{int(signal.SIGKILL)})" in err


# -- terminal ----------------------------------------------------------------------------


@pytest.mark.parametrize("group", [True, False], ids=["group", "default"])
def test_terminal_stays_usable_for_cmd(group: bool) -> None:
    """On a controlling terminal, CMD can read it: by default (as tini does)
    and with --group its own group is made the foreground group, so Ctrl-C
    and Ctrl-Z reach CMD's group and no SIGTTIN stops it."""
    args = ["--group"] if group else []
    r = subprocess.run(
        [sys.executable, str(PROGRAMS / "cli_tty.py"), *args], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    assert "RESULT FG True OWNGROUP True" in r.stdout
    assert "RESULT GOT hello" in r.stdout
    assert "EXIT 0" in r.stdout
