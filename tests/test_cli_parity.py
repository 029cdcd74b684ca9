"""``fastreap run`` against what tini's and dumb-init's own suites check.

In our words: every catchable signal reaches CMD and never kills fastreap;
signals ignored at startup stay ignored (and the signal mask is CMD's too);
``--rewrite`` and ``--remap-exit``; job control (fastreap and CMD stop
together and resume together, seen in /proc); subreaper by default;
``--pdeathsig``; ``--setsid``; the environment defaults; the working
directory; ``--version``. Terminal handling and PID 1 are in test_cli.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conftest import PROGRAMS, read_line
from test_cli import TARGET, UNSHARE, Run

LINUX = sys.platform.startswith("linux")
JOB_CONTROL = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
FORWARDABLE = sorted(
    int(s)
    for s in signal.valid_signals()
    if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD, *JOB_CONTROL)
)


def _name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _state(pid: int) -> str:
    """The one-letter state of pid from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def _wait_state(pid: int, want: set[str], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        st = _state(pid)
        if st in want or time.monotonic() > deadline:
            return st
        time.sleep(0.005)


class CatchAll:
    """fastreap running cli_target.py catch-all; one line per signal CMD got."""

    def __init__(self, *args: str, **kw: object) -> None:
        self.r = Run(*args, "--", sys.executable, TARGET, "catch-all", **kw)  # type: ignore[arg-type]
        self.cmd_pid = int(self.r.ready().split()[1])

    def send(self, sig: int) -> None:
        self.r.send(sig)

    def got(self) -> int:
        """The signal number CMD reports next."""
        line = self.r.line()
        word, num, pid = line.split()
        assert word == "SIGNUM" and int(pid) == self.cmd_pid, line
        return int(num)

    def end(self) -> tuple[int, str, str]:
        # CMD catches everything; only SIGKILL ends it (a pid the test learnt
        # from CMD itself). fastreap then exits with 128 + 9.
        os.kill(self.cmd_pid, signal.SIGKILL)
        return self.r.finish()


@pytest.fixture(scope="module")
def catch_all() -> Iterator[CatchAll]:
    """One fastreap + catch-all CMD shared by the per-signal tests (fast)."""
    c = CatchAll("--grace", "600")  # SIGTERM starts a grace period: never ending here
    yield c
    rc, _out, err = c.end()
    assert rc == 128 + signal.SIGKILL, err


@pytest.mark.parametrize("sig", FORWARDABLE, ids=_name)
def test_every_catchable_signal_is_forwarded(catch_all: CatchAll, sig: int) -> None:
    """As with tini and dumb-init: ALRM, VTALRM, PROF, IO, PWR, XCPU, STKFLT,
    the fault signals sent with kill, URG, WINCH, CONT, the real-time ones...
    all reach CMD, and fastreap survives every one of them."""
    catch_all.send(sig)
    assert catch_all.got() == sig
    assert catch_all.r.p.poll() is None


# Under scripts/sanitize.sh every interpreter preloads ASan, whose own SIGSEGV
# handler turns a SIGSEGV sent with kill into a crash report and exit 1.
def _under_asan() -> bool:
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


_ASAN = _under_asan()


@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGALRM,
        pytest.param(
            signal.SIGSEGV,
            marks=pytest.mark.skipif(_ASAN, reason="ASan handles SIGSEGV in the preloaded CMD"),
        ),
        signal.SIGPWR,
    ],
    ids=_name,
)
def test_unlisted_signal_does_not_orphan_cmd(sig: int) -> None:
    """The regression of issue 14: a signal fastreap did not handle killed it
    (142 for SIGALRM) and left CMD running with ppid 1. Now CMD gets it and
    dies of it, and fastreap reports that."""
    r = Run("-v", "--", sys.executable, TARGET, "wait")
    cmd_pid = int(r.ready().split()[1])
    r.send(sig)
    rc, _out, err = r.finish()
    alive = _alive(cmd_pid)
    if alive:  # the bug: clean up the orphan before failing
        os.kill(cmd_pid, signal.SIGKILL)
    assert not alive
    assert rc == 128 + sig, err
    assert f"exited: killed by {_name(sig)}" in err


def _bits(line: str) -> set[int]:
    mask = int(line.split(":")[1], 16)
    return {n + 1 for n in range(64) if mask >> n & 1}


def test_ignored_and_blocked_signals_at_startup_are_kept_for_cmd() -> None:
    """tini's signal configuration test: what was ignored or blocked when
    fastreap started is ignored or blocked in CMD, and fastreap's own
    blocking of the forwarded signals does not leak into CMD."""
    code = (
        "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); os.execv(sys.argv[1], sys.argv[1:])"
    )
    prefix = (sys.executable, "-c", code)
    r = Run("--", sys.executable, TARGET, "status", prefix=prefix)
    rc, out, err = r.finish()
    assert rc == 0, err
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert _bits(f"x:{lines['SigIgn']}") >= {int(signal.SIGHUP)}
    assert _bits(f"x:{lines['SigBlk']}") == {int(signal.SIGUSR1)}
    # Without the prefix: nothing blocked, HUP not ignored.
    rc, out, err = Run("--", sys.executable, TARGET, "status").finish()
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert _bits(f"x:{lines['SigBlk']}") == set()
    assert int(signal.SIGHUP) not in _bits(f"x:{lines['SigIgn']}")


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGQUIT], ids=_name)
def test_signal_ignored_at_startup_is_not_forwarded(sig: int) -> None:
    """``nohup fastreap run ...`` and a shell's ``fastreap run ... &``: the
    ignored signal neither reaches CMD nor stops fastreap (tini gives 0)."""
    prefix = ("sh", "-c", f"trap '' {int(sig)}; exec \"$@\"", "sh")
    r = Run("-v", "--grace", "0.2", "--", sys.executable, TARGET, "wait", prefix=prefix)
    cmd_pid = r.ready().split()[1]
    r.send(sig)
    r.send(signal.SIGUSR1)  # a signal that is forwarded, as a marker after it
    assert r.line() == f"SIG SIGUSR1 {cmd_pid}"
    r.send(signal.SIGTERM)
    rc, out, err = r.finish()
    assert rc == 0, err
    assert f"SIG {_name(sig)}" not in out
    assert f"not forwarded: {_name(sig)}" in err or f", {_name(sig)}" in err


# -- rewrite and remap --------------------------------------------------------------


def test_rewrite_swaps_and_drops() -> None:
    """dumb-init's rewrite cases: a swap, a rewrite to itself, a drop (TO 0),
    and the lowest/highest classic numbers."""
    c = CatchAll("--grace", "600", "--rewrite", "TERM:INT", "--rewrite", "INT:TERM")
    c2 = None
    try:
        for sent, want in [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)]:
            c.send(sent)
            assert c.got() == want
        c.send(signal.SIGQUIT)  # not rewritten
        assert c.got() == signal.SIGQUIT
    finally:
        c.end()
    c2 = CatchAll("--rewrite", "1:31", "--rewrite", "31:1", "--rewrite", "WINCH:0", "--rewrite", "INT:0")
    try:
        c2.send(signal.SIGINT)
        c2.send(signal.SIGWINCH)
        c2.send(1)
        assert c2.got() == 31  # INT and WINCH were dropped
        c2.send(31)
        assert c2.got() == 1
    finally:
        c2.end()


def test_rewritten_stop_signal_starts_the_grace_period() -> None:
    """The common use: the orchestrator sends SIGTERM, the program wants
    SIGQUIT; the grace period still runs from the SIGTERM."""
    r = Run("-v", "--rewrite", "TERM:QUIT", "--grace", "0.2", "--", sys.executable, TARGET, "ignore-term")
    cmd_pid = r.ready().split()[1]
    r.send(signal.SIGTERM)
    assert r.line() == f"SIG SIGQUIT {cmd_pid}"
    rc, _out, err = r.finish()
    assert rc == 128 + signal.SIGKILL, err
    assert "forwarding SIGTERM" in err and "as SIGQUIT" in err


@pytest.mark.parametrize(
    ("mode", "remap", "expected"),
    [
        (["exit", "3"], ["3"], 0),
        (["exit", "4"], ["3"], 4),
        (["exit", "4"], ["3", "4"], 0),
        (["killself", str(int(signal.SIGTERM))], ["143"], 0),  # Java's 143, as tini -e
        (["exit", "0"], ["1"], 0),
    ],
)
def test_remap_exit(mode: list[str], remap: list[str], expected: int) -> None:
    args = [a for code in remap for a in ("--remap-exit", code)]
    rc, _out, err = Run(*args, "--", sys.executable, TARGET, *mode).finish()
    assert rc == expected, err


# -- job control ----------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize("sig", JOB_CONTROL, ids=_name)
def test_job_control_stops_and_resumes_both(sig: int) -> None:
    """dumb-init's shell-background test: TSTP/TTIN/TTOU stop CMD and
    fastreap; CONT resumes both, and CMD is told about it."""
    c = CatchAll()
    try:
        c.send(sig)
        assert _wait_state(c.r.p.pid, {"T"}) == "T"
        assert _wait_state(c.cmd_pid, {"T"}) == "T"
        c.send(signal.SIGCONT)
        assert c.got() == signal.SIGCONT
        assert _wait_state(c.cmd_pid, {"S", "R"}) in "SR"
        assert _wait_state(c.r.p.pid, {"S", "R"}) in "SR"
    finally:
        c.end()


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_job_control_signal_can_be_rewritten() -> None:
    """dumb-init: a rewritten TSTP is forwarded as asked, and fastreap still
    stops itself."""
    c = CatchAll("--rewrite", "TSTP:HUP")
    try:
        c.send(signal.SIGTSTP)
        assert c.got() == signal.SIGHUP
        assert _wait_state(c.r.p.pid, {"T"}) == "T"
        assert _state(c.cmd_pid) in "SR"
        c.send(signal.SIGCONT)
        assert c.got() == signal.SIGCONT
    finally:
        c.end()


# -- reaping leftovers: subreaper by default ---------------------------------------------

SH_TWO_SLEEPS = "sleep 100 & echo $!; sleep 100 & echo $!; wait"


def _alive(pid: int) -> bool:
    try:
        return _state(pid) not in "ZX"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not LINUX, reason="subreaper is Linux only")
def test_subreaper_by_default_leaves_nothing_running() -> None:
    """Issue 14, bug 3: not PID 1, no flag, SIGTERM: the shell dies, its
    two sleeps reach fastreap, get the stop signal and are reaped."""
    r = Run("-v", "--", "sh", "-c", SH_TWO_SLEEPS)
    pids = [int(r.line()), int(r.line())]
    r.send(signal.SIGTERM)
    rc, _out, err = r.finish()
    assert rc == 128 + signal.SIGTERM, err
    for pid in pids:
        assert f"reaped pid {pid} (returncode -{int(signal.SIGTERM)})" in err
        assert not _alive(pid)
    assert "2 orphan(s) reaped" in err


@pytest.mark.skipif(not LINUX, reason="subreaper is Linux only")
@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_subreaper_leaves_orphans_alone(how: str) -> None:
    args, env = (["--no-subreaper"], None) if how == "flag" else ([], {"FASTREAP_SUBREAPER": "0"})
    r = Run("-v", *args, "--", "sh", "-c", SH_TWO_SLEEPS, env=env)
    pids = [int(r.line()), int(r.line())]
    r.send(signal.SIGTERM)
    try:
        # The sleeps keep fastreap's stdout open: wait for fastreap itself.
        rc = r.p.wait(timeout=30)
        assert rc == 128 + signal.SIGTERM
        assert all(_alive(pid) for pid in pids)  # not ours: fastreap left them alone
    finally:
        for pid in pids:  # the test's own cleanup of the sleeps it made
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _rc, _out, err = r.finish()
    assert "no subreaper" in err


# -- pdeathsig, setsid, cwd, environment, version -----------------------------------------


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_pdeathsig_forwarded_when_parent_dies(tmp_path: os.PathLike[str]) -> None:
    """tini -p: fastreap's parent exits; the kernel sends fastreap SIGUSR1,
    which reaches CMD."""
    out = os.path.join(tmp_path, "out")
    p = subprocess.run(
        [sys.executable, str(PROGRAMS / "cli_pdeathsig.py"), out, TARGET],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    fastreap_pid = int(p.stdout)
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        with open(out) as f:
            text = f.read()
        if f"SIGNUM {int(signal.SIGUSR1)}" in text:
            break
        time.sleep(0.01)
    try:
        assert f"SIGNUM {int(signal.SIGUSR1)}" in text
    finally:
        # Not our child any more: end it (grace 0.3 s, then CMD is SIGKILLed).
        try:
            os.kill(fastreap_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        while time.monotonic() < deadline + 10 and _alive(fastreap_pid):
            time.sleep(0.01)


def test_setsid_and_cwd(tmp_path: os.PathLike[str]) -> None:
    """--setsid: CMD leads a new session. fastreap moves itself to / once
    CMD runs; CMD keeps the working directory it was given."""
    c = Run("--setsid", "--", sys.executable, TARGET, "ids", cwd=str(tmp_path))
    ids = c.ready("IDS").split()
    pgrp, sid, cwd, pid = int(ids[1]), int(ids[2]), ids[3], int(ids[4])
    assert pid == pgrp == sid
    assert os.path.samefile(cwd, tmp_path)
    c.ready()
    if LINUX:
        assert os.readlink(f"/proc/{c.p.pid}/cwd") == "/"
    os.kill(pid, signal.SIGKILL)
    rc, _out, err = c.finish()
    assert rc == 128 + signal.SIGKILL, err


def test_default_no_tty_shares_our_group_and_group_env() -> None:
    """Off a terminal CMD stays in fastreap's group unless --group (or
    FASTREAP_GROUP=1, which --no-group overrides)."""
    for args, env, own in [
        ([], None, False),
        ([], {"FASTREAP_GROUP": "1"}, True),
        (["--no-group"], {"FASTREAP_GROUP": "yes"}, False),
        (["--group"], {"FASTREAP_GROUP": "0"}, True),
    ]:
        c = Run(*args, "--", sys.executable, TARGET, "ids", env=env)
        ids = c.ready("IDS").split()
        pgrp, pid = int(ids[1]), int(ids[4])
        assert (pgrp == pid) is own, (args, env)
        assert pgrp == (pid if own else os.getpgid(c.p.pid))
        os.kill(pid, signal.SIGKILL)
        c.finish()


def test_grace_from_environment_and_flag_wins() -> None:
    r = Run("-v", "--", sys.executable, TARGET, "ignore-term", env={"FASTREAP_GRACE": "0.2"})
    r.ready()
    r.send(signal.SIGTERM)
    rc, _out, err = r.finish()
    assert rc == 128 + signal.SIGKILL, err
    assert "grace period of 0.2s started" in err
    r = Run("-v", "--grace", "0.1", "--", sys.executable, TARGET, "ignore-term", env={"FASTREAP_GRACE": "50"})
    r.ready()
    r.send(signal.SIGTERM)
    rc, _out, err = r.finish()
    assert "grace period of 0.1s started" in err


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FASTREAP_GRACE": "soon"}, "FASTREAP_GRACE: not a number of seconds"),
        ({"FASTREAP_GRACE": "-2"}, "FASTREAP_GRACE: must be a finite number"),
        ({"FASTREAP_SUBREAPER": "maybe"}, "FASTREAP_SUBREAPER='maybe'"),
        ({"FASTREAP_GROUP": "2"}, "FASTREAP_GROUP='2'"),
    ],
)
def test_bad_environment_is_usage_error(env: dict[str, str], message: str) -> None:
    rc, _out, err = Run("--", "true", env=env).finish()
    assert rc == 2
    assert message in err
    assert "usage: fastreap run" in err


@pytest.mark.parametrize("argv", [["--version"], ["run", "--version"]])
def test_version(argv: list[str]) -> None:
    import fastreap

    r = subprocess.run([sys.executable, "-m", "fastreap", *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    assert r.stdout.strip() == f"fastreap {fastreap.__version__}"


def test_summary_line_under_verbose() -> None:
    r = Run("-v", "--", sys.executable, TARGET, "wait")
    r.ready()
    r.send(signal.SIGUSR1)
    r.line()
    r.send(signal.SIGTERM)
    rc, _out, err = r.finish()
    assert rc == 0, err
    last = err.strip().splitlines()[-1]
    assert "exiting with 0: 2 signal(s) forwarded, 0 orphan(s) reaped, 0 escalation(s) to SIGKILL" in last


@pytest.mark.pid1
def test_pid1_forwards_unlisted_signals_and_remaps() -> None:
    if not UNSHARE:
        pytest.skip("unshare --pid --fork --mount-proc is not available here")
    r = Run("--remap-exit", str(128 + signal.SIGALRM), "--", sys.executable, TARGET, "catch-all", ns=True)
    r.ready()
    r.send(signal.SIGVTALRM)
    assert read_line(r.p).split()[:2] == ["SIGNUM", str(int(signal.SIGVTALRM))]  # type: ignore[arg-type]
    rc, _out, err = Run(
        "--remap-exit", str(128 + signal.SIGALRM), "--", sys.executable, TARGET, "killself", "14", ns=True
    ).finish()
    assert rc == 0, err
    os.kill(r.fastreap_pid, signal.SIGKILL)  # PID 1 of its namespace: takes CMD with it
    r.finish()
