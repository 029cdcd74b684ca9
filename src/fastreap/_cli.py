"""``fastreap run``: a small init/supervisor for containers; ``fastreap bench``.

How ``run`` works (one thread, no polling):

* fastreap's C handler is installed for the forwarded signals and SIGCHLD with
  ``handle_signals`` and a private ``StopFlag``. The handler only bumps a
  per-signal counter, sets the flag and pokes the global wake-up descriptor;
  the forwarding happens here, in the main loop, never in the handler.
* The main loop sleeps in the watcher (epoll on CMD's pidfd plus the global
  wake-up descriptor) until CMD exits, a signal arrives or a deadline passes.
  On each wake it clears the flag, reaps every exited child with
  ``fastreap.reap()`` (orphans that reached us as PID 1 or subreaper, and CMD,
  whose status still reaches its Child), then forwards the signals whose
  counters moved since the last round.
* Signals go to CMD through its ``Child`` (pidfd, so a reused pid is never
  hit), or with ``--group`` to CMD's own process group.
* The stop signal starts the grace period; when it ends CMD (its group with
  ``--group``) gets SIGKILL.
* After CMD has exited, children that are still ours (orphans adopted as
  PID 1 or subreaper) and, with ``--group``, what is left of CMD's group get
  the stop signal, then SIGKILL once the grace period is over; fastreap exits
  when it has no child left (and the group is gone or killed).
* With ``--group`` on a terminal, CMD's group is made the terminal's
  foreground group (as tini does), so it can read the terminal and gets
  Ctrl-C / Ctrl-Z itself; fastreap ignores SIGTTIN/SIGTTOU meanwhile.
  Known limit (tini's too): when Ctrl-Z stops CMD, fastreap does not stop
  itself, so the shell does not regain the terminal.

Exit status: CMD's exit code, or 128 + N if a signal N killed it; 2 for usage
errors; 126 if CMD cannot be executed, 127 if it is not found (as a shell does).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from . import _children, _core
from ._children import reap, set_subreaper, watch
from ._flags import StopFlag, handle_signals

if TYPE_CHECKING:
    from ._children import Child, _Watcher

FORWARDED: tuple[int, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
DEFAULT_GRACE = 10.0
ORPHAN_RESCAN = 0.25  # seconds; see Supervisor._drain_orphans
EXIT_USAGE = 2
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class UsageError(Exception):
    """A bad command line: reported on stderr, exit status 2."""


def parse_signal(text: str) -> int:
    """``TERM``, ``SIGTERM``, ``sigterm`` or ``15`` -> 15; ValueError otherwise."""
    t = text.strip()
    if t.isdigit():
        n = int(t)
        if not 0 < n < signal.NSIG:
            raise ValueError(f"no signal number {n}")
        return n
    name = t.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {text!r}") from None


def signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _grace(text: str) -> float:
    try:
        g = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(g) or g < 0 or math.isinf(g):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text!r}")
    return g


def _stop_signal(text: str) -> int:
    try:
        sig = parse_signal(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
        raise argparse.ArgumentTypeError(f"{signame(sig)} cannot be the stop signal")
    return sig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"fastreap: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastreap", description="Child-process lifecycle tools.")
    sub = p.add_subparsers(dest="command", metavar="{run,bench}")
    r = sub.add_parser(
        "run",
        help="run CMD as its init/supervisor: forward signals, reap orphans, stop with a grace period",
        description="Run CMD, forward signals to it, reap every orphan that reaches fastreap "
        "(as PID 1 or subreaper), and exit with CMD's status (128+N if signal N killed it).",
        usage="fastreap run [--grace S] [--stop-signal SIG] [--subreaper] [--group] [-v] -- CMD [ARG...]",
    )
    r.add_argument(
        "--grace",
        type=_grace,
        default=DEFAULT_GRACE,
        metavar="S",
        help=f"seconds CMD gets after the stop signal before SIGKILL (default {DEFAULT_GRACE:g})",
    )
    r.add_argument(
        "--stop-signal",
        type=_stop_signal,
        default=int(signal.SIGTERM),
        metavar="SIG",
        help="the signal that starts the grace period: TERM, SIGTERM or 15 (default TERM)",
    )
    r.add_argument(
        "--subreaper",
        action="store_true",
        help="become a child subreaper (Linux) so orphaned descendants are reaped here",
    )
    r.add_argument(
        "--group", action="store_true", help="start CMD in its own process group and signal the whole group"
    )
    r.add_argument("-v", "--verbose", action="store_true", help="log what fastreap does on stderr")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")
    # Only for the help listing: `bench` is dispatched to fastreap._bench before parsing.
    sub.add_parser("bench", help="run the benchmark suite (fastreap bench --help)", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``python -m fastreap`` and the ``fastreap`` script."""
    sys.exit(_main(sys.argv[1:] if argv is None else list(argv)))


def _main(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        from ._bench import main as bench

        return bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        parser.error("a command is required: run or bench")
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("run: CMD is missing (fastreap run [options] -- CMD [ARG...])")
    sup = Supervisor(
        cmd,
        grace=args.grace,
        stop_signal=args.stop_signal,
        subreaper=args.subreaper,
        group=args.group,
        verbose=args.verbose,
    )
    try:
        return sup.run()
    except UsageError as e:
        print(f"fastreap: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _children_of_self() -> list[int]:
    """Our direct children, running or zombie (Linux /proc; [] elsewhere)."""
    # The pids in /proc are those of the PID namespace /proc was mounted
    # for. If that is not ours (unshare --pid without --mount-proc), they
    # would name other processes here: then trust nothing.
    kids: list[int] = []
    task = "/proc/self/task"
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return kids
        tids = os.listdir(task)
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"{task}/{tid}/children") as f:
                kids.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return kids


class Supervisor:
    """One ``fastreap run``: start CMD, then the loop described in the module docstring."""

    def __init__(
        self,
        cmd: list[str],
        *,
        grace: float = DEFAULT_GRACE,
        stop_signal: int = signal.SIGTERM,
        subreaper: bool = False,
        group: bool = False,
        verbose: bool = False,
    ) -> None:
        self.cmd = cmd
        self.grace = grace
        self.stop_signal = int(stop_signal)
        self.subreaper = subreaper
        self.group = group
        self.verbose = verbose
        self.signals = tuple(dict.fromkeys((*FORWARDED, self.stop_signal)))
        self.seen = dict.fromkeys(self.signals, 0)
        self.tty_fd = -1  # the terminal handed to CMD's group (--group with a TTY)

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"fastreap[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)

    # -- starting CMD ---------------------------------------------------------

    def _preexec(self) -> None:
        # In the child, between fork and exec (so only simple calls). Like
        # tini's isolate_child: a group of its own and, if there is a
        # terminal, make that group its foreground group so CMD can read it
        # and gets Ctrl-C/Ctrl-Z itself. SIGTTOU is ignored here (inherited
        # from the parent) so tcsetpgrp from a background group works; the
        # default dispositions are put back before exec.
        os.setpgid(0, 0)
        if self.tty_fd >= 0:
            try:
                os.tcsetpgrp(self.tty_fd, os.getpgrp())
            except OSError:
                pass  # not our controlling terminal: run without it
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        signal.signal(signal.SIGTTIN, signal.SIG_DFL)

    def start(self) -> subprocess.Popen[bytes]:
        kw: dict[str, object] = {}
        if self.group:
            if os.isatty(0):
                self.tty_fd = 0
                # While CMD's group owns the terminal we are in the
                # background: reading or configuring it must not stop us.
                signal.signal(signal.SIGTTOU, signal.SIG_IGN)
                signal.signal(signal.SIGTTIN, signal.SIG_IGN)
            kw["preexec_fn"] = self._preexec
        # close_fds=False: descriptors handed to us (socket activation,
        # inherited pipes) pass through to CMD as they would through exec.
        # fastreap's own descriptors are close-on-exec.
        return subprocess.Popen(self.cmd, close_fds=False, **kw)  # type: ignore[call-overload, no-any-return]

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        if self.subreaper:
            try:
                set_subreaper(True)
            except NotImplementedError:
                raise UsageError("--subreaper needs Linux (PR_SET_CHILD_SUBREAPER)") from None
        wake = StopFlag()
        # Handled before CMD starts so nothing sent in between is lost; the
        # counters already moved by earlier signals are the starting point.
        handle_signals((*self.signals, signal.SIGCHLD), wake)
        self.seen = {s: _core_count(s) for s in self.signals}
        try:
            proc = self.start()
        except FileNotFoundError as e:
            print(f"fastreap: {self.cmd[0]}: {e.strerror or 'not found'}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except OSError as e:  # EACCES, ENOEXEC, EISDIR...: found but cannot run
            print(f"fastreap: {self.cmd[0]}: {e.strerror or e}", file=sys.stderr)
            return EXIT_NOT_EXECUTABLE
        except subprocess.SubprocessError as e:
            print(f"fastreap: cannot start {self.cmd[0]}: {e}", file=sys.stderr)
            return EXIT_NOT_EXECUTABLE
        child = watch(proc)
        self.log(f"started {self.cmd[0]!r} as pid {child.pid}" + (" in its own group" if self.group else ""))
        watcher = _children._get_watcher()
        deadline: float | None = None  # set by the stop signal
        killed = False
        while True:
            timeout = -1.0 if deadline is None or killed else max(0.0, deadline - time.monotonic())
            watcher.wait_until(lambda: wake.is_set() or child._done(), timeout)
            wake.clear()  # before reading the counters: a later signal sets it again
            self._reap()
            arrived = self._new_signals()
            if child._done():
                break
            for sig in arrived:
                self._forward(child, sig)
                if sig == self.stop_signal and deadline is None:
                    deadline = time.monotonic() + self.grace
                    self.log(f"grace period of {self.grace:g}s started")
            if deadline is not None and not killed and time.monotonic() >= deadline:
                self.log(f"pid {child.pid} still running after {self.grace:g}s: SIGKILL")
                self._send(child, signal.SIGKILL)
                killed = True
        status = child.status
        if status is None:  # reaped behind our back (cannot happen: we are its only reaper)
            print(f"fastreap: the exit status of pid {child.pid} was lost", file=sys.stderr)
            self._drain_orphans(child, wake, watcher, deadline)
            return 1
        how = f"code {status.exit_code}" if status.signal is None else f"killed by {signame(status.signal)}"
        self.log(f"pid {child.pid} exited: {how}")
        self._drain_orphans(child, wake, watcher, deadline)
        rc = status.returncode  # -N when signal N killed it
        return rc if rc >= 0 else 128 - rc

    def _new_signals(self) -> list[int]:
        """The handled signals whose counters moved since the last call."""
        out = []
        for s in self.signals:
            n = _core_count(s)
            if n != self.seen[s]:
                self.seen[s] = n
                out.append(s)
        return out

    def _reap(self) -> None:
        for st in reap():
            self.log(f"reaped pid {st.pid} (returncode {st.returncode})")

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        # CMD's group id is its pid; the id cannot be reused while the group
        # has members, and ESRCH means it is empty.
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def _send(self, child: Child, sig: int) -> None:
        if self.group:
            self._signal_group(child.pid, sig)
        else:
            child.send_signal(sig)  # pidfd: never a reused pid

    def _forward(self, child: Child, sig: int) -> None:
        self.log(f"forwarding {signame(sig)} to {'group' if self.group else 'pid'} {child.pid}")
        self._send(child, sig)

    def _drain_orphans(self, child: Child, wake: StopFlag, watcher: _Watcher, deadline: float | None) -> None:
        """CMD is gone: stop and reap the children we still have (orphans
        adopted as PID 1 or subreaper, and what is left of CMD's group with
        --group). They get the stop signal, then SIGKILL at the deadline (the
        one the stop signal started, else a fresh grace period)."""
        if not _children_of_self() and not self.group:
            return
        if deadline is None:
            deadline = time.monotonic() + self.grace
        pgid = child.pid
        # Members of CMD's group need not be our children (without PID 1 or
        # --subreaper they are not): "done" once the group is empty or SIGKILLed.
        group_done = not self.group
        if self.group:
            self._signal_group(pgid, self.stop_signal)
        stopped: set[int] = set()
        killed: set[int] = set()
        while True:
            self._reap()
            self._new_signals()  # CMD is gone: there is nobody to forward to
            left = _children_of_self()
            if not group_done and not _group_exists(pgid):
                group_done = True
            if not left and group_done:
                return
            late = time.monotonic() >= deadline
            for pid in left:
                # Unreaped children of ours: their pids cannot have been reused.
                if pid in (killed if late else stopped):
                    continue
                sig = signal.SIGKILL if late else self.stop_signal
                self.log(f"orphan pid {pid}: {signame(sig)}")
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                (killed if late else stopped).add(pid)
            if late and not group_done:
                self.log(f"group {pgid} still there after {self.grace:g}s: SIGKILL")
                self._signal_group(pgid, signal.SIGKILL)
                group_done = True
            wake.clear()
            if _core.peek_any() > 0:
                continue  # a zombie is ready now
            # An exit of one of ours wakes us (SIGCHLD). Descendants adopted
            # when a grandchild dies send us nothing, so look again after a
            # short while: this rescan is the only timed wait in fastreap run.
            timeout = ORPHAN_RESCAN if late else min(ORPHAN_RESCAN, max(0.0, deadline - time.monotonic()))
            watcher.wait_until(wake.is_set, timeout)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _core_count(sig: int) -> int:
    return int(_core.signal_count(sig))
