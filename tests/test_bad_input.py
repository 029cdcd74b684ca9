"""Bad input to every public entry point: a clear exception naming the
argument, and nothing changed (no handler installed, no child watched or
signalled, no descriptor left; the autouse ``no_leaks`` fixture checks the
last part).

Foreign pids (1, our parent, a pid that does not exist) are used as targets,
so ``os.kill``, ``os.killpg`` and ``pidfd_send_signal`` are replaced for the
duration of each case by a recorder that refuses to send anything: fastreap
must refuse before it gets there, and if it did not, nothing is delivered.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

import fastreap
from fastreap import _cli, _core, _flags, _watcher, aio

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and prctl")

PR_GET_CHILD_SUBREAPER = 37
CATCHABLE = sorted(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))


def _subreaper() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    v = ctypes.c_int(-1)
    assert libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(v), 0, 0, 0) == 0
    return v.value


def _state() -> dict[str, Any]:
    """Everything a failed call must leave as it was."""
    w = _watcher.current()
    return {
        "python handlers": {s: signal.getsignal(s) for s in CATCHABLE},
        "C handler installed": [s for s in CATCHABLE if _core.is_installed(s)],
        "fastreap books": sorted(_flags._installed),
        "watched": sorted(w.children),
        "sigchld path": sorted(w.sigchld.starts),
        "pidfds": w.pidfd.count,
        "default flag": _core.default_flag.is_set(),
        "subreaper": _subreaper(),
    }


def _missing_pid() -> int:
    """A pid with no process right now (it is not our child either way)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def _noop() -> None:
    pass


class Ctx:
    """Objects the cases point at; made fresh for each case, cleaned up after."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen(["sleep", "60"])  # running, not watched
        self.live = subprocess.Popen(["sleep", "60"])
        self.child = fastreap.watch(self.live)  # running, watched
        self.unstarted = fastreap.Process(target=_noop)
        self.missing = _missing_pid()

    def close(self) -> None:
        for p in (self.popen, self.live):
            p.kill()
        fastreap.kill([self.popen, self.child])
        self.popen.wait()
        self.live.wait()
        del self.unstarted  # its shared flags hold descriptors


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    c = Ctx()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def sent(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Record (and never perform) every signal fastreap tries to send."""
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def recorder(name: str) -> Callable[..., None]:
        def rec(*args: Any) -> None:
            calls.append((name, args))

        return rec

    monkeypatch.setattr(os, "kill", recorder("os.kill"))
    monkeypatch.setattr(os, "killpg", recorder("os.killpg"))
    monkeypatch.setattr(_core, "pidfd_send_signal", recorder("pidfd_send_signal"))
    return calls


@dataclass
class Case:
    id: str
    call: Callable[[Ctx], Any]
    exc: type[BaseException]
    match: str


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


CASES: list[Case] = []


def case(id: str, exc: type[BaseException], match: str) -> Callable[[Callable[[Ctx], Any]], None]:
    def add(fn: Callable[[Ctx], Any]) -> None:
        CASES.append(Case(id, fn, exc, match))

    return add


# -- targets: one target, or an iterable of them ---------------------------------

TARGET_FUNCS: list[tuple[str, str, Callable[[Any], Any]]] = [
    ("watch", "target", fastreap.watch),
    ("terminate", "targets", fastreap.terminate),
    ("kill", "targets", fastreap.kill),
    ("graceful_stop", "targets", fastreap.graceful_stop),
    ("wait", "children", fastreap.wait),
    ("aio.wait", "child", lambda t: _run(aio.wait(t))),
    ("aio.graceful_stop", "targets", lambda t: _run(aio.graceful_stop(t))),
]
ITERABLE_FUNCS = [f for f in TARGET_FUNCS if f[1] in ("targets", "children")]

BAD_TYPES: list[Any] = [None, "123", 1.5, b"1", True, object(), {1.5: 1}]
BAD_PIDS = [0, -1, -12345]

for fname, arg, fn in TARGET_FUNCS:
    for bad in BAD_TYPES:
        if arg == "target" or arg == "child" or bad is True or isinstance(bad, dict):
            match = f"^{arg}"
        else:
            match = f"^{arg} must be an iterable"
        if isinstance(bad, dict) and arg in ("targets", "children"):
            match = f"^{arg} must be a pid"  # an iterable of one float
        case(f"{fname}-type-{type(bad).__name__}", TypeError, match)(lambda c, fn=fn, bad=bad: fn(bad))
    for pid in BAD_PIDS:
        case(f"{fname}-pid{pid}", ValueError, f"^{arg} must be a pid > 0, got {pid}")(
            lambda c, fn=fn, pid=pid: fn(pid)
        )
    case(f"{fname}-pid1", ChildProcessError, f"^{arg}: pid 1 is not a child")(lambda c, fn=fn: fn(1))
    case(f"{fname}-parent", ChildProcessError, f"^{arg}: pid {os.getppid()} is not a child")(
        lambda c, fn=fn: fn(os.getppid())
    )
    case(f"{fname}-missing-pid", ChildProcessError, f"^{arg}: pid \\d+ does not exist \\(if it was a child")(
        lambda c, fn=fn: fn(c.missing)
    )
    case(f"{fname}-unstarted-Process", ValueError, f"^{arg}: .* is not started")(
        lambda c, fn=fn: fn(c.unstarted)
    )

for fname, arg, fn in ITERABLE_FUNCS:
    # A good target before a bad one: validated first, so the good one is
    # neither watched nor signalled (the state check and `sent` see that).
    for bad, exc, match in [
        (None, TypeError, f"^{arg} must be a pid"),
        (1.5, TypeError, f"^{arg} must be a pid"),
        (0, ValueError, f"^{arg} must be a pid > 0"),
        (-1, ValueError, f"^{arg} must be a pid > 0"),
        (1, ChildProcessError, f"^{arg}: pid 1 is not a child"),
        ("parent", ChildProcessError, f"^{arg}: pid \\d+ is not a child"),
    ]:
        case(f"{fname}-good-then-{bad}", exc, match)(
            lambda c, fn=fn, bad=bad: fn([c.popen, os.getppid() if bad == "parent" else bad])
        )

# -- timeouts ----------------------------------------------------------------------

TIMEOUT_FUNCS: list[tuple[str, Callable[[Ctx, Any], Any]]] = [
    ("Child.wait", lambda c, t: c.child.wait(t)),
    ("StopFlag.wait", lambda c, t: fastreap.StopFlag().wait(t)),
    ("default-flag.wait", lambda c, t: _core.default_flag.wait(t)),
    ("wait", lambda c, t: fastreap.wait([c.popen], t)),
    ("graceful_stop", lambda c, t: fastreap.graceful_stop([c.popen], timeout=t)),
    ("terminate", lambda c, t: fastreap.terminate([c.popen], timeout=t)),
    ("aio.graceful_stop", lambda c, t: _run(aio.graceful_stop([c.popen], timeout=t))),
    ("Process.stop", lambda c, t: c.unstarted.stop(t)),
]
BAD_TIMEOUTS: list[tuple[str, Any, type[BaseException], str]] = [
    ("str", "1", TypeError, "^timeout must be a number of seconds or None, not str"),
    ("list", [1], TypeError, "^timeout must be a number of seconds or None, not list"),
    ("bool", True, TypeError, "^timeout must be a number of seconds or None, not bool"),
    ("complex", 1j, TypeError, "^timeout must be a number of seconds or None, not complex"),
    ("negative", -1, ValueError, "^timeout must be >= 0, got -1"),
    ("small-negative", -1e-9, ValueError, "^timeout must be >= 0"),
    ("minus-inf", -math.inf, ValueError, "^timeout must be >= 0, got -inf"),
    ("huge-negative-int", -(10**400), ValueError, "^timeout must be >= 0"),
    ("nan", math.nan, ValueError, "^timeout must not be NaN"),
    ("decimal-snan", Decimal("sNaN"), ValueError, "^timeout must be a number of seconds"),
    ("decimal-nan", Decimal("NaN"), ValueError, "^timeout must not be NaN"),
]
for fname, fn in TIMEOUT_FUNCS:
    for tid, bad, exc, match in BAD_TIMEOUTS:
        case(f"{fname}-timeout-{tid}", exc, match)(lambda c, fn=fn, bad=bad: fn(c, bad))

case("wait-return_when", ValueError, "^return_when must be FIRST_EXITED or ALL_EXITED")(
    lambda c: fastreap.wait([c.popen], 0, "FIRST")
)
case("wait-return_when-None", ValueError, "^return_when must be")(lambda c: fastreap.wait([c.popen], 0, None))

# -- signals -------------------------------------------------------------------------

BAD_SIGNAL_TYPES: list[Any] = [None, "TERM", 1.5, True]
BAD_SIGNAL_NUMBERS = [-1, 9999, _core.NSIG, 2**31]

for bad in BAD_SIGNAL_TYPES:
    t = type(bad).__name__
    case(f"send_signal-{t}", TypeError, f"^sig must be a signal number, not {t}")(
        lambda c, bad=bad: c.child.send_signal(bad)
    )
    case(f"graceful_stop-signal-{t}", TypeError, f"^signal must be a signal number, not {t}")(
        lambda c, bad=bad: fastreap.graceful_stop([c.popen], signal=bad)
    )
    case(f"aio.graceful_stop-signal-{t}", TypeError, "^signal must be a signal number")(
        lambda c, bad=bad: _run(aio.graceful_stop([c.popen], signal=bad))
    )
    if bad is not None:  # None means "all" for restore_signals
        case(f"restore_signals-{t}", TypeError, "^signals must be a signal number")(
            lambda c, bad=bad: fastreap.restore_signals(bad)
        )
    case(f"handle_signals-{t}", TypeError, "^signals must be a signal number")(
        lambda c, bad=bad: fastreap.handle_signals(bad)
    )
    case(f"handle_signals-list-{t}", TypeError, f"^signals must be a signal number, not {t}")(
        lambda c, bad=bad: fastreap.handle_signals([signal.SIGUSR1, bad])
    )
    case(f"graceful-{t}", TypeError, "^signals must be a signal number")(
        lambda c, bad=bad: fastreap.graceful(bad).__enter__()
    )
for n in BAD_SIGNAL_NUMBERS:
    case(f"send_signal-{n}", ValueError, f"^sig must be a valid signal number, got {n}")(
        lambda c, n=n: c.child.send_signal(n)
    )
    case(f"graceful_stop-signal-{n}", ValueError, f"^signal must be a valid signal number, got {n}")(
        lambda c, n=n: fastreap.graceful_stop([c.popen], signal=n)
    )
    case(f"handle_signals-{n}", ValueError, f"^signals must be a valid signal number, got {n}")(
        lambda c, n=n: fastreap.handle_signals([signal.SIGUSR1, n])
    )
    case(f"restore_signals-{n}", ValueError, f"^signals must be a valid signal number, got {n}")(
        lambda c, n=n: fastreap.restore_signals(n)
    )
    case(f"graceful-{n}", ValueError, f"^signals must be a valid signal number, got {n}")(
        lambda c, n=n: fastreap.graceful([signal.SIGUSR2, n]).__enter__()
    )
case("graceful_stop-signal-0", ValueError, "^signal must be a valid signal number, got 0")(
    lambda c: fastreap.graceful_stop([c.popen], signal=0)  # 0 only probes: no stop signal
)
case("handle_signals-0", ValueError, "^signals must be a valid signal number, got 0")(
    lambda c: fastreap.handle_signals(0)
)
for sig in (signal.SIGKILL, signal.SIGSTOP):
    case(f"handle_signals-{sig.name}", ValueError, f"^signals: {sig.name} cannot be caught")(
        lambda c, sig=sig: fastreap.handle_signals([signal.SIGUSR1, sig])
    )
    case(f"graceful-{sig.name}", ValueError, f"^signals: {sig.name} cannot be caught")(
        lambda c, sig=sig: fastreap.graceful(sig).__enter__()
    )
    case(f"restore_signals-{sig.name}", ValueError, f"^signals: {sig.name} cannot be caught")(
        lambda c, sig=sig: fastreap.restore_signals(sig)
    )
_reserved = [s for s in range(1, _core.NSIG) if s not in signal.valid_signals()]
for s in _reserved[:2]:  # glibc keeps 32 and 33 for itself
    case(f"handle_signals-reserved-{s}", ValueError, f"^signals: {s} is not a signal this platform")(
        lambda c, s=s: fastreap.handle_signals([signal.SIGUSR1, s])
    )

# -- other arguments --------------------------------------------------------------------

case("handle_signals-flag", TypeError, "^flag must be a fastreap.StopFlag or None, not int")(
    lambda c: fastreap.handle_signals(signal.SIGUSR1, 1)  # type: ignore[arg-type]
)
case("handle_signals-exit", TypeError, "^exit must be a bool, not str")(
    lambda c: fastreap.handle_signals(signal.SIGUSR1, exit="yes")  # type: ignore[arg-type]
)
case("graceful-exit", TypeError, "^exit must be a bool, not int")(
    lambda c: fastreap.graceful(signal.SIGUSR1, exit=1).__enter__()  # type: ignore[arg-type]
)
for v in ("x", 1, None):
    t = type(v).__name__
    case(f"StopFlag-shared-{t}", TypeError, f"^shared must be a bool, not {t}")(
        lambda c, v=v: fastreap.StopFlag(shared=v)
    )
    case(f"set_subreaper-{t}", TypeError, f"^on must be a bool, not {t}")(
        lambda c, v=v: fastreap.set_subreaper(v)
    )
    case(f"graceful_stop-kill_after-{t}", TypeError, f"^kill_after must be a bool, not {t}")(
        lambda c, v=v: fastreap.graceful_stop([c.popen], kill_after=v)
    )
    case(f"graceful_stop-group-{t}", TypeError, f"^group must be a bool, not {t}")(
        lambda c, v=v: fastreap.graceful_stop([c.popen], group=v)
    )
    case(f"Process-exit_on_stop-{t}", TypeError, f"^exit_on_stop must be a bool, not {t}")(
        lambda c, v=v: fastreap.Process(target=_noop, exit_on_stop=v)
    )
case("StopFlag-positional", TypeError, "positional argument")(lambda c: fastreap.StopFlag(True))  # type: ignore[misc]
case("StopFlag-unknown-keyword", TypeError, "bogus")(lambda c: fastreap.StopFlag(bogus=1))  # type: ignore[call-arg]
case("StopFlag-pickle-private", TypeError, "private StopFlag cannot be pickled")(
    lambda c: pickle.dumps(fastreap.StopFlag())
)
case("StopFlag-pickle-shared-outside-spawn", RuntimeError, "only as a Process argument")(
    lambda c: pickle.dumps(fastreap.StopFlag(shared=True))
)
case("Process-mp_context", TypeError, "^mp_context must be a multiprocessing context")(
    lambda c: fastreap.Process(target=_noop, mp_context="fork")  # type: ignore[arg-type]
)
case("Process.stop-unstarted", ValueError, "^stop: .* is not started")(lambda c: c.unstarted.stop())
case("Child-direct", TypeError, "made by fastreap.watch")(
    lambda c: fastreap.Child(1, None, None).kill()  # type: ignore[arg-type]
)
case("Child.add_done_callback", TypeError, "^fn must be callable, not NoneType")(
    lambda c: c.child.add_done_callback(None)  # type: ignore[arg-type]
)
case("aio.wait-collection", TypeError, "^child must be one pid.*not a collection")(
    lambda c: _run(aio.wait([c.popen]))
)
case("aio.wait_for_stop-flag", TypeError, "^flag must be a fastreap.StopFlag or None, not int")(
    lambda c: _run(aio.wait_for_stop(1))  # type: ignore[arg-type]
)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input(bad: Case, ctx: Ctx, sent: list[tuple[str, tuple[Any, ...]]]) -> None:
    before = _state()
    with pytest.raises(bad.exc, match=bad.match):
        bad.call(ctx)
    assert _state() == before
    assert sent == [], "fastreap tried to send a signal"
    assert ctx.popen.poll() is None and ctx.child.returncode is None


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# -- closed and finished objects: defined behaviour, no error ---------------------------


def test_reaped_child_is_a_no_op_target(sent: list[tuple[str, tuple[Any, ...]]], ctx: Ctx) -> None:
    p = subprocess.Popen(["true"])
    c = fastreap.watch(p)
    assert c.wait() == 0
    before = _state()
    for sig in (0, signal.SIGTERM, signal.SIGKILL):
        c.send_signal(sig)
    c.terminate()
    c.kill()
    assert (c.wait(), c.wait(0), c.is_alive(), c.returncode) == (0, 0, False, 0)
    assert fastreap.graceful_stop([c]).returncodes == {p.pid: 0}
    assert fastreap.wait([c], 0) == ({c}, set())
    assert p.wait() == 0
    assert sent == []
    assert _state() == before
    # Still validated: a bad signal is an error even once it is a no-op.
    with pytest.raises(ValueError, match=r"^sig must be a valid signal number"):
        c.send_signal(-1)
    # Its pid is nobody's child now (or somebody else's): refused.
    with pytest.raises(ChildProcessError, match=f"^target: pid {p.pid} (does not exist|is not a child)"):
        fastreap.watch(p.pid)


def test_waited_popen_is_reported_not_signalled(sent: list[tuple[str, tuple[Any, ...]]], ctx: Ctx) -> None:
    p = subprocess.Popen(["sh", "-c", "exit 3"])
    assert p.wait() == 3
    before = _state()
    c = fastreap.watch(p)
    assert (c.returncode, c.is_alive()) == (3, False)
    r = fastreap.graceful_stop([p], timeout=0)
    assert (r.returncodes, r.killed) == ({p.pid: 3}, [])
    assert _run(aio.wait(p)) == 3
    assert sent == []
    assert _state() == before  # a finished Popen is never registered


def test_closed_process() -> None:
    p = fastreap.Process(target=_noop, mp_context=multiprocessing.get_context("spawn"))
    p.start()
    p.join()
    p.close()
    before = _state()
    with pytest.raises(ValueError, match=r"^stop: .* is closed"):
        p.stop()
    with pytest.raises(ValueError, match=r"^target: .* is closed"):
        fastreap.watch(p)
    with pytest.raises(ValueError, match=r"^targets: .* is closed"):
        fastreap.graceful_stop([p])
    assert _state() == before


# -- huge timeouts mean "no limit" -------------------------------------------------------


@pytest.mark.parametrize(
    "t", [math.inf, 1e300, 10**400, Decimal("Infinity")], ids=["inf", "1e300", "10**400", "Decimal-inf"]
)
def test_huge_timeout_is_no_limit(t: Any) -> None:
    if t != 1e300:
        assert _core.check_timeout(t) == -1.0 == _core.check_timeout(None)
    flag = fastreap.StopFlag()
    timer = threading.Timer(0.05, flag.set)
    timer.start()
    try:
        assert flag.wait(t) is True  # waited until set, not returned at once
    finally:
        timer.join()
    p = subprocess.Popen(["sleep", "60"])
    c = fastreap.watch(p)
    timer = threading.Timer(0.05, c.terminate)
    timer.start()
    try:
        assert c.wait(t) == -signal.SIGTERM
        assert fastreap.wait([c], t) == ({c}, set())
    finally:
        timer.join()
        p.wait()
    p = subprocess.Popen(["sleep", "60"])
    r = fastreap.graceful_stop([p], timeout=t)
    assert (r.returncodes, r.killed) == ({p.pid: -signal.SIGTERM}, [])
    assert p.wait() == -signal.SIGTERM


# -- the CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, match",
    [
        (["run", "--grace", "abc", "--", "true"], "--grace: not a number of seconds"),
        (["run", "--grace", "-1", "--", "true"], "--grace: must be a finite number"),
        (["run", "--grace", "nan", "--", "true"], "--grace: must be a finite number"),
        (["run", "--grace", "inf", "--", "true"], "--grace: must be a finite number"),
        (["run", "--stop-signal", "KILL", "--", "true"], "--stop-signal: SIGKILL cannot be the stop signal"),
        (["run", "--stop-signal", "STOP", "--", "true"], "--stop-signal: SIGSTOP cannot be the stop signal"),
        (["run", "--stop-signal", "CHLD", "--", "true"], "--stop-signal: SIGCHLD cannot be the stop signal"),
        (["run", "--stop-signal", "9999", "--", "true"], "--stop-signal: no signal number 9999"),
        (["run", "--stop-signal", "0", "--", "true"], "--stop-signal: no signal number 0"),
        (["run", "--stop-signal", "-1", "--", "true"], "--stop-signal"),
        (["run", "--stop-signal", "BOGUS", "--", "true"], "--stop-signal: unknown signal 'BOGUS'"),
        (["run", "--"], "CMD is missing"),
        (["run"], "CMD is missing"),
        ([], "a command is required"),
        (["walk"], "invalid choice: 'walk'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_cli_usage_errors(args: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _state()
    with pytest.raises(SystemExit) as e:
        _cli._main(args)
    assert e.value.code == _cli.EXIT_USAGE
    assert match in capsys.readouterr().err
    assert _state() == before


@pytest.mark.parametrize("cmd, code", [(["/nonexistent/fastreap-cmd"], 127), (["/"], 126)])
def test_cli_cmd_cannot_run(cmd: list[str], code: int) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fastreap", "run", "--", *cmd], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == code, r.stderr
    assert cmd[0] in r.stderr


@pytest.mark.parametrize(
    "value, ok",
    [("", "auto"), ("sigchld", "sigchld"), ("pidfd", "pidfd"), ("SIGCHLD", None), ("epoll", None)],
)
def test_backend_variable(value: str, ok: str | None) -> None:
    """FASTREAP_BACKEND: set but empty means unset (auto); anything but the
    three names fails at import with a ValueError that names the variable."""
    code = "import fastreap, fastreap._watcher as w; print(w.BACKEND)"
    env = dict(os.environ, FASTREAP_BACKEND=value)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    if ok is None:
        assert r.returncode != 0, r
        assert "ValueError: FASTREAP_BACKEND must be auto, pidfd or sigchld" in r.stderr, r
    else:
        assert r.returncode == 0 and r.stdout.strip() == ok, r
