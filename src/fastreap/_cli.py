"""``fastreap run``: a small init/supervisor for containers; ``fastreap bench``.

How ``run`` works (one thread, no signal handler at all, no polling while CMD
runs), the design tini and dumb-init share:

* Before CMD starts, every signal fastreap forwards, and SIGCHLD, is
  *blocked*; the main loop takes them one at a time with ``sigtimedwait``.
  Nothing runs in signal context, so there is nothing async-signal-unsafe to
  get wrong, and a signal sent before CMD even exists stays pending until the
  loop gets to it. A real fault of fastreap itself (SIGSEGV from the kernel)
  still kills it: the kernel delivers a blocked synchronous fault with its
  default action, only a SIGSEGV sent with kill(2) waits in the queue.
* CMD gets back the signal mask fastreap had at startup (its blocked signals
  stay blocked), and signals that were ignored at startup (``nohup``, a shell's
  ``cmd &``) are left alone: not blocked, so still ignored in fastreap and
  inherited as ignored by CMD, and never forwarded.
* Forwarded: every catchable signal (1..31 and the real-time ones) except
  SIGCHLD and the job-control signals SIGTSTP/SIGTTIN/SIGTTOU; ``--rewrite``
  changes the number (0 drops it). Signals go to CMD through its ``Child``
  (pidfd, so a reused pid is never hit), or with ``--group`` to CMD's own
  process group.
* Job control (dumb-init's behaviour): SIGTSTP/SIGTTIN/SIGTTOU make fastreap
  send SIGSTOP (or their ``--rewrite``) to CMD (its group when it has one) and
  then stop itself; SIGCONT resumes fastreap (the kernel does that) and is
  forwarded to CMD.
* On SIGCHLD the loop reaps every exited child with ``fastreap.reap()``:
  orphans that reached fastreap as PID 1 or subreaper (the default on Linux),
  and CMD, whose status reaches its ``Child``.
* The stop signal starts the grace period; when it ends CMD (its group with
  ``--group``) gets SIGKILL.
* After CMD has exited, the children that are still ours (orphans adopted as
  PID 1 or subreaper) and, with ``--group``, what is left of CMD's group get
  the stop signal, then SIGKILL once the grace period is over, and are reaped.
  Without a subreaper, members of CMD's group are not ours to reap: fastreap
  waits (up to the grace period) only until none is running, never for their
  reaping, and says in ``-v`` which pids it waits for.
* On a terminal, CMD runs in its own process group and that group is made
  the terminal's foreground group (as tini does); ``--setsid`` gives CMD a new
  session instead (it then tries to make the terminal its controlling one).

Exit status: CMD's exit code, or 128 + N if a signal N killed it (0 for the
codes given to ``--remap-exit``); 2 for usage errors; 126 if CMD cannot be
executed, 127 if it is not found (as a shell does).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn

# Only fastreap's public API (imported from the package, so the layout of the
# private modules behind it does not matter here).
from . import __version__, _procfs, reap, set_subreaper, watch

if TYPE_CHECKING:
    from . import Child

JOB_CONTROL: tuple[int, ...] = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
# Never forwarded: uncatchable, or what fastreap itself lives on.
NOT_FORWARDED = frozenset({int(signal.SIGKILL), int(signal.SIGSTOP), int(signal.SIGCHLD)})
# CPython ignores these two at startup itself (and subprocess puts SIG_DFL
# back in the child), so "ignored at startup" cannot be told for them.
PYTHON_IGNORES = frozenset({int(signal.SIGPIPE), int(signal.SIGXFSZ)})
DEFAULT_GRACE = 10.0
ORPHAN_RESCAN = 0.25  # seconds; see Supervisor._drain
EXIT_USAGE = 2
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
ENV_SUBREAPER = "FASTREAP_SUBREAPER"
ENV_GROUP = "FASTREAP_GROUP"
ENV_GRACE = "FASTREAP_GRACE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


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


def _signal_arg(text: str) -> int:
    try:
        return parse_signal(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _stop_signal(text: str) -> int:
    sig = _signal_arg(text)
    if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
        raise argparse.ArgumentTypeError(f"{signame(sig)} cannot be the stop signal")
    return sig


def _pdeathsig(text: str) -> int:
    sig = _signal_arg(text)
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        raise argparse.ArgumentTypeError(
            f"{signame(sig)} cannot be forwarded; it would only kill or stop fastreap, orphaning CMD"
        )
    return sig


def _rewrite(text: str) -> tuple[int, int]:
    src, sep, dst = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FROM:TO, not {text!r}")
    frm = _signal_arg(src)
    if frm in NOT_FORWARDED:
        raise argparse.ArgumentTypeError(f"{signame(frm)} is never forwarded, so it cannot be rewritten")
    to = 0 if dst.strip() == "0" else _signal_arg(dst)
    return frm, to


def _exit_code(text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an exit code: {text!r}") from None
    if not 0 <= code <= 255:
        raise argparse.ArgumentTypeError(f"an exit code is 0..255, not {code}")
    return code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


RUN_USAGE = (
    "fastreap run [--grace S] [--stop-signal SIG] [--group] [--setsid] [--no-subreaper]\n"
    "                    [--rewrite FROM:TO]... [--remap-exit CODE]... [--pdeathsig SIG] [-v]\n"
    "                    -- CMD [ARG...]"
)


def _add_run_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument(
        "--grace",
        type=_grace,
        default=None,
        metavar="S",
        help=f"seconds CMD (and leftovers) get after the stop signal before SIGKILL "
        f"(default ${ENV_GRACE} or {DEFAULT_GRACE:g})",
    )
    r.add_argument(
        "--stop-signal",
        type=_stop_signal,
        default=int(signal.SIGTERM),
        metavar="SIG",
        help="the signal that starts the grace period: TERM, SIGTERM or 15 (default TERM)",
    )
    sr = r.add_mutually_exclusive_group()
    sr.add_argument(
        "--subreaper",
        dest="subreaper",
        action="store_const",
        const=True,
        default=None,
        help=f"become a child subreaper (Linux) so orphaned descendants are reaped here: "
        f"the default when not PID 1 (${ENV_SUBREAPER}=0 turns the default off)",
    )
    sr.add_argument(
        "--no-subreaper",
        dest="subreaper",
        action="store_const",
        const=False,
        help="do not become a subreaper",
    )
    gr = r.add_mutually_exclusive_group()
    gr.add_argument(
        "--group",
        dest="group",
        action="store_const",
        const=True,
        default=None,
        help=f"start CMD in its own process group and signal the whole group (default ${ENV_GROUP})",
    )
    gr.add_argument(
        "--no-group", dest="group", action="store_const", const=False, help=f"override ${ENV_GROUP}=1"
    )
    r.add_argument(
        "--setsid", action="store_true", help="start CMD in a new session (implies its own process group)"
    )
    r.add_argument(
        "--rewrite",
        type=_rewrite,
        action="append",
        default=[],
        metavar="FROM:TO",
        help="forward signal FROM as TO (names or numbers; TO 0 drops FROM); repeatable",
    )
    r.add_argument(
        "--remap-exit",
        type=_exit_code,
        action="append",
        default=[],
        metavar="CODE",
        help="exit 0 when CMD's status is CODE (128+N for signal N); repeatable",
    )
    r.add_argument(
        "--pdeathsig",
        type=_pdeathsig,
        default=None,
        metavar="SIG",
        help="have the kernel send fastreap SIG when its parent dies (Linux); SIG is then forwarded",
    )
    r.add_argument("-v", "--verbose", action="store_true", help="log what fastreap does on stderr")
    r.add_argument("--version", action="version", version=f"fastreap {__version__}")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")


def build_run_parser() -> argparse.ArgumentParser:
    """The parser of ``fastreap run`` on its own, so its errors show its usage."""
    r = _Parser(prog="fastreap run", usage=RUN_USAGE, description=RUN_DESCRIPTION)
    _add_run_arguments(r)
    return r


RUN_DESCRIPTION = (
    "Run CMD, forward every signal to it, reap every orphan that reaches fastreap "
    "(as PID 1 or subreaper), and exit with CMD's status (128+N if signal N killed it)."
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastreap", description="Child-process lifecycle tools.")
    p.add_argument("--version", action="version", version=f"fastreap {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{run,bench}")
    r = sub.add_parser(
        "run",
        help="run CMD as its init/supervisor: forward signals, reap orphans, stop with a grace period",
        description=RUN_DESCRIPTION,
        usage=RUN_USAGE,
    )
    _add_run_arguments(r)
    # Only for the help listing: `bench` is dispatched to fastreap._bench before parsing.
    sub.add_parser("bench", help="run the benchmark suite (fastreap bench --help)", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of ``python -m fastreap`` and the ``fastreap`` script."""
    sys.exit(_main(sys.argv[1:] if argv is None else list(argv)))


def _env_bool(name: str, parser: argparse.ArgumentParser) -> bool | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    parser.error(f"environment variable {name}={raw!r}: expected 1/0, true/false, yes/no or on/off")


def _env_grace(parser: argparse.ArgumentParser) -> float | None:
    raw = os.environ.get(ENV_GRACE)
    if raw is None or not raw.strip():
        return None
    try:
        return _grace(raw)
    except argparse.ArgumentTypeError as e:
        parser.error(f"environment variable {ENV_GRACE}: {e}")


def _main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        return _run(argv[1:])
    if argv[:1] == ["bench"]:
        from ._bench import main as bench

        return bench(argv[1:])
    parser = build_parser()
    parser.parse_args(argv)
    parser.error("a command is required: run or bench")


def _run(argv: list[str]) -> int:
    parser = build_run_parser()
    args = parser.parse_args(argv)
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("CMD is missing (fastreap run [options] -- CMD [ARG...])")
    # Flags win over the environment; a bad environment value is a usage error.
    env_subreaper = _env_bool(ENV_SUBREAPER, parser)
    env_group = _env_bool(ENV_GROUP, parser)
    env_grace = _env_grace(parser)
    grace = args.grace if args.grace is not None else env_grace if env_grace is not None else DEFAULT_GRACE
    subreaper = args.subreaper if args.subreaper is not None else env_subreaper
    group = args.group if args.group is not None else bool(env_group)
    sup = Supervisor(
        cmd,
        grace=grace,
        stop_signal=args.stop_signal,
        subreaper=subreaper,
        group=group,
        setsid=args.setsid,
        rewrite=dict(args.rewrite),
        remap_exit=args.remap_exit,
        pdeathsig=args.pdeathsig,
        verbose=args.verbose,
    )
    try:
        return sup.run()
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"fastreap run: error: {e}", file=sys.stderr)
        return EXIT_USAGE


class Supervisor:
    """One ``fastreap run``: start CMD, then the loop described in the module docstring."""

    def __init__(
        self,
        cmd: list[str],
        *,
        grace: float = DEFAULT_GRACE,
        stop_signal: int = signal.SIGTERM,
        subreaper: bool | None = None,
        group: bool = False,
        setsid: bool = False,
        rewrite: dict[int, int] | None = None,
        remap_exit: Iterable[int] = (),
        pdeathsig: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.cmd = cmd
        self.grace = grace
        self.stop_signal = int(stop_signal)
        self.subreaper = subreaper  # None: on by default where possible
        self.group = group
        self.setsid = setsid
        self.rewrite = dict(rewrite or {})
        self.remap_exit = frozenset(remap_exit)
        self.pdeathsig = pdeathsig
        self.verbose = verbose
        self.tty_fd = -1  # the terminal whose foreground group CMD's group becomes
        self.own_group = False  # CMD leads a process group (or session) of its own
        self.reaper = False  # PID 1 or subreaper: orphans of CMD's tree come to us
        self.waited: set[int] = set()  # blocked and taken by sigtimedwait
        self.orig_mask: set[int] = set()
        self.orig_chld: object = signal.SIG_DFL
        self.forwarded = 0
        self.orphans_reaped = 0
        self.escalations = 0
        self.cmd_pid = 0

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"fastreap[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)

    # -- setting up -------------------------------------------------------------

    def _become_reaper(self) -> None:
        if os.getpid() == 1:
            self.reaper = True
            return
        if self.subreaper is False:
            self.log("not PID 1 and no subreaper: orphans of CMD's children are not reaped here")
            return
        try:
            set_subreaper(True)
        except NotImplementedError:
            if self.subreaper:
                raise UsageError("--subreaper needs Linux (PR_SET_CHILD_SUBREAPER)") from None
            self.log("not PID 1 and no subreaper on this system: orphans are not reaped here")
            return
        self.reaper = True
        self.log("child subreaper: orphaned descendants of CMD are reaped here")

    def _signals_to_take(self) -> set[int]:
        """Every catchable signal but those ignored at startup, plus SIGCHLD."""
        take: set[int] = set()
        ignored: list[str] = []
        for s in sorted(int(x) for x in signal.valid_signals()):
            if s in (signal.SIGKILL, signal.SIGSTOP):
                continue
            if s == signal.SIGCHLD:
                take.add(s)
                continue
            if s not in PYTHON_IGNORES and signal.getsignal(s) is signal.SIG_IGN:
                ignored.append(signame(s))  # stays ignored, here and in CMD
                continue
            take.add(s)
        if ignored:
            self.log(f"ignored at startup, so ignored in CMD and not forwarded: {', '.join(ignored)}")
        return take

    def _preexec(self) -> None:
        # In the child between fork and exec (only simple calls). Like tini's
        # isolate_child: a group of its own and, on a terminal we own, make
        # that group the foreground one (SIGTTOU is still blocked here, so
        # tcsetpgrp from a background group works). Then the startup mask.
        if self.setsid:
            os.setsid()
            if self.tty_fd >= 0:
                _acquire_controlling_tty(self.tty_fd)
        elif self.own_group:
            os.setpgid(0, 0)
            if self.tty_fd >= 0:
                try:
                    os.tcsetpgrp(self.tty_fd, os.getpgrp())
                except OSError:
                    pass  # not our controlling terminal: run without it
        if self.orig_chld is signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.orig_mask)

    def start(self) -> subprocess.Popen[bytes]:
        try:
            on_tty = os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
        except OSError:
            on_tty = False
        self.own_group = self.group or self.setsid or on_tty
        if on_tty:
            self.tty_fd = 0
        # close_fds=False: descriptors handed to us (socket activation,
        # inherited pipes) pass through to CMD as they would through exec.
        # fastreap's own descriptors are close-on-exec.
        return subprocess.Popen(self.cmd, close_fds=False, preexec_fn=self._preexec)

    def _start_or_report(self) -> subprocess.Popen[bytes] | int:
        name = self.cmd[0]
        try:
            return self.start()
        except FileNotFoundError:
            what = "command not found" if "/" not in name else "no such file or directory"
            print(f"fastreap: {name}: {what}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except OSError as e:  # EACCES, ENOEXEC, EISDIR...: found but cannot run
            why = "is a directory" if os.path.isdir(name) else (e.strerror or str(e))
            print(f"fastreap: {name}: {why}", file=sys.stderr)
            return EXIT_NOT_EXECUTABLE
        except subprocess.SubprocessError as e:
            print(f"fastreap: cannot start {name}: {e}", file=sys.stderr)
            return EXIT_NOT_EXECUTABLE

    # -- the loop ---------------------------------------------------------------

    def run(self) -> int:
        if self.pdeathsig is not None and not sys.platform.startswith("linux"):
            raise UsageError("--pdeathsig needs Linux (PR_SET_PDEATHSIG)")
        self._become_reaper()
        self.waited = self._signals_to_take()
        self.orig_chld = signal.getsignal(signal.SIGCHLD)
        if self.orig_chld is signal.SIG_IGN:  # children would vanish unreaped
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Blocked before CMD starts, so nothing sent in between is lost.
        self.orig_mask = {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, self.waited)}
        if self.pdeathsig is not None:
            _set_pdeathsig(self.pdeathsig)  # blocked by now: it waits for CMD if it comes early
        started = self._start_or_report()
        if isinstance(started, int):
            return started
        child = watch(started)
        self.cmd_pid = child.pid
        try:
            os.chdir("/")  # do not pin CMD's working directory's mount
        except OSError:
            pass
        how = " in a new session" if self.setsid else " in its own group" if self.own_group else ""
        self.log(f"started {self.cmd[0]!r} as pid {child.pid}{how}")
        deadline: float | None = None  # set by the stop signal
        killed = False
        while child.returncode is None:
            timeout = None if deadline is None or killed else max(0.0, deadline - time.monotonic())
            info = _take_signal(self.waited, timeout)
            if info is not None:
                sig = info.si_signo
                if sig == signal.SIGCHLD:
                    self._reap()
                    continue
                sent = self._on_signal(child, sig, info.si_pid)
                if sig == self.stop_signal and sent and deadline is None:
                    deadline = time.monotonic() + self.grace
                    self.log(f"grace period of {self.grace:g}s started")
            if deadline is not None and not killed and time.monotonic() >= deadline:
                self._reap()
                if child.is_alive():
                    self.log(f"pid {child.pid} still running after {self.grace:g}s: SIGKILL")
                    self._send(child, signal.SIGKILL, self.group)
                    self.escalations += 1
                killed = True
        status = child.status
        assert status is not None  # returncode is set
        how = f"code {status.exit_code}" if status.signal is None else f"killed by {signame(status.signal)}"
        self.log(f"pid {child.pid} exited: {how}")
        self._drain(child, deadline)
        rc = status.returncode  # -N when signal N killed it
        code = (rc if rc >= 0 else 128 - rc) & 0xFF
        if code in self.remap_exit:
            self.log(f"exit code {code} remapped to 0")
            code = 0
        self.log(
            f"exiting with {code}: {self.forwarded} signal(s) forwarded, "
            f"{self.orphans_reaped} orphan(s) reaped, {self.escalations} escalation(s) to SIGKILL"
        )
        return code

    def _on_signal(self, child: Child, sig: int, sender: int) -> bool:
        """Forward (or act on) one signal; False if --rewrite dropped it."""
        if sig in JOB_CONTROL:
            to = self.rewrite.get(sig, signal.SIGSTOP)
            if to:
                self.log(f"{signame(sig)}: {signame(to)} to CMD, then stopping fastreap")
                self._send(child, to, self.own_group)
                self.forwarded += 1
            os.kill(os.getpid(), signal.SIGSTOP)  # SIGCONT resumes us; it is then forwarded
            return bool(to)
        to = self.rewrite.get(sig, sig)
        if not to:
            self.log(f"{signame(sig)} from pid {sender} dropped (--rewrite)")
            return False
        if sig == signal.SIGCONT and self.tty_fd >= 0 and not self.setsid:
            # Resumed by the shell's ``fg``, which gave the terminal to our
            # group: hand it back to CMD's group (SIGTTOU is blocked, so that
            # is allowed). After ``bg`` the terminal is not ours to give.
            try:
                if os.tcgetpgrp(self.tty_fd) == os.getpgrp():
                    os.tcsetpgrp(self.tty_fd, child.pid)
            except OSError:
                pass
        rewritten = f" as {signame(to)}" if to != sig else ""
        target = f"group {child.pid}" if self.group else f"pid {child.pid}"
        self.log(f"forwarding {signame(sig)} from pid {sender}{rewritten} to {target}")
        self._send(child, to, self.group)
        self.forwarded += 1
        return True

    def _reap(self) -> None:
        for st in reap():
            if st.pid != self.cmd_pid:
                self.orphans_reaped += 1
            self.log(f"reaped pid {st.pid} (returncode {st.returncode})")

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        # CMD's group id is its pid; the id cannot be reused while the group
        # has members, and ESRCH means it is empty.
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def _send(self, child: Child, sig: int, group: bool) -> None:
        if group:
            self._signal_group(child.pid, sig)
        else:
            child.send_signal(sig)  # pidfd: never a reused pid

    def _drain(self, child: Child, deadline: float | None) -> None:
        """CMD is gone: stop and reap the children we still have (orphans
        adopted as PID 1 or subreaper, and what is left of CMD's group with
        --group). They get the stop signal, then SIGKILL at the deadline (the
        one the stop signal started, else a fresh grace period)."""
        pgid = child.pid
        members = _live_group_members(pgid) if self.group else []
        if not _children_of_self() and not members:
            return
        if deadline is None:
            deadline = time.monotonic() + self.grace
        if members:
            self.log(f"group {pgid} still has pids {members}: {signame(self.stop_signal)}")
            self._signal_group(pgid, self.stop_signal)
        if not self.reaper:
            self._wait_for_group(pgid, members, deadline)
            return
        stopped: set[int] = set()
        killed: set[int] = set()
        group_killed = False
        while True:
            self._reap()
            left = _children_of_self()
            members = _live_group_members(pgid) if self.group and not group_killed else []
            if not left and not members:
                return
            late = time.monotonic() >= deadline
            for pid in left:
                # Unreaped children of ours: their pids cannot have been reused.
                if pid in (killed if late else stopped):
                    continue
                sig = signal.SIGKILL if late else self.stop_signal
                self.log(f"leftover pid {pid}: {signame(sig)}")
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                (killed if late else stopped).add(pid)
                if late:
                    self.escalations += 1
            if late and members:
                self.log(f"group {pgid} still has pids {members} after {self.grace:g}s: SIGKILL")
                self._signal_group(pgid, signal.SIGKILL)
                self.escalations += 1
                group_killed = True
            # An exit of one of ours wakes us (SIGCHLD). Descendants adopted
            # when a grandchild dies send us nothing, so look again after a
            # short while: this rescan is the only timed wait in fastreap run.
            timeout = ORPHAN_RESCAN if late else min(ORPHAN_RESCAN, max(0.0, deadline - time.monotonic()))
            info = _take_signal(self.waited, timeout)
            if info is not None and info.si_signo != signal.SIGCHLD:
                self.log(f"{signame(info.si_signo)} not forwarded: CMD is gone")

    def _wait_for_group(self, pgid: int, members: list[int], deadline: float) -> None:
        """No subreaper: members of CMD's group are not ours to reap. Wait only
        until none is running (a zombie is its parent's business), SIGKILL
        the group at the deadline, and never wait for the reaping."""
        self.log(
            f"waiting up to {max(0.0, deadline - time.monotonic()):.3g}s for group {pgid} "
            f"(pids {members}, not our children: not reaped here)"
        )
        while members:
            if time.monotonic() >= deadline:
                self.log(f"group {pgid} still has pids {members} after {self.grace:g}s: SIGKILL")
                self._signal_group(pgid, signal.SIGKILL)
                self.escalations += 1
                return
            _take_signal(self.waited, min(0.05, max(0.0, deadline - time.monotonic())))
            self._reap()
            members = _live_group_members(pgid)


# -- OS helpers fastreap's public API does not cover ------------------------------
# Plain system calls and /proc reads; nothing here touches fastreap internals.


def _take_signal(sigs: set[int], timeout: float | None) -> signal.struct_siginfo | None:
    """The next of the blocked ``sigs`` (None after ``timeout`` seconds;
    ``None`` timeout: wait for ever). GIL released while waiting."""
    if timeout is None:
        return signal.sigwaitinfo(sigs)
    return signal.sigtimedwait(sigs, timeout)


def _proc_is_ours() -> bool:
    """The pids in /proc are those of the PID namespace /proc was mounted for.
    If that is not ours (unshare --pid without --mount-proc), they would name
    other processes here: then trust nothing."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _children_of_self() -> list[int]:
    """Our direct children, running or zombie (Linux /proc; [] elsewhere)."""
    return _procfs.children_of("self") if _proc_is_ours() else []


def _live_group_members(pgid: int) -> list[int]:
    """Pids of process group ``pgid`` that are not zombies (Linux /proc).
    Without /proc: [pgid] while ``killpg(pgid, 0)`` finds the group."""
    if not _proc_is_ours():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    out: list[int] = []
    for pid in _procfs.pids():
        st = _procfs.live_stat(pid)
        if st is not None and st.pgrp == pgid:
            out.append(pid)
    return sorted(out)


def _acquire_controlling_tty(fd: int) -> None:
    """In a new session: make ``fd`` its controlling terminal if the kernel
    lets us (it refuses while another session holds it)."""
    import fcntl
    import termios

    try:
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    except OSError:
        pass


def _set_pdeathsig(sig: int) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)`` (Linux only); if the parent died
    before that took effect, send ``sig`` to ourselves as the kernel would."""
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), sig)
