"""CMD for fastreap run tests: prints each signal it receives, then acts.

    cli_target.py MODE [ARG]
MODE: exit N            exit with N at once
      wait              print READY, then print SIG <name> per signal; exit 0 on SIGTERM/SIGINT
      ignore-term       like wait, but SIGTERM is printed and ignored
      orphan [stubborn] start a daemonized grandchild (double fork, new session) that
                        sleeps (ignoring SIGTERM if stubborn); print ORPHAN <pid>; exit 0
      group             start a child in the same process group, both print SIG lines
      group-stubborn    the same, but the child (not the leader) ignores SIGTERM
      killself N        kill itself with signal N
      catch-all         catch every catchable signal but SIGCHLD; print READY, then
                        SIGNUM <number> per signal (never exits on its own)
      status            print the SigBlk and SigIgn lines of /proc/self/status; exit 0
      ids               print IDS <pgrp> <sid> <cwd>, then like catch-all
"""

import os
import signal
import sys
import time

mode = sys.argv[1]
out = sys.stdout


def say(msg: str) -> None:
    out.write(f"{msg} {os.getpid()}\n")
    out.flush()


def watch_signals(exit_on=(signal.SIGTERM, signal.SIGINT)) -> None:
    def h(sig, frame):
        say(f"SIG {signal.Signals(sig).name}")
        if sig in exit_on:
            sys.exit(0)

    for s in (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
    ):
        signal.signal(s, h)


def idle() -> None:
    # Not signal.pause(): a signal landing between Python's last check for
    # pending signals and the pause() call is handled only after the NEXT
    # signal (a lost wake-up that hung tests under load). A short sleep runs
    # the handler at most 50 ms late.
    time.sleep(0.05)


def catch_all() -> None:
    def h(sig, frame):
        say(f"SIGNUM {sig}")

    for s in signal.valid_signals():
        if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            signal.signal(s, h)
    say("READY")
    while True:
        idle()


if mode == "exit":
    sys.exit(int(sys.argv[2]))
elif mode == "killself":
    os.kill(os.getpid(), int(sys.argv[2]))
    time.sleep(5)
elif mode in ("wait", "ignore-term"):
    watch_signals(() if mode == "ignore-term" else (signal.SIGTERM, signal.SIGINT))
    say("READY")
    while True:
        idle()
elif mode in ("group", "group-stubborn"):
    pid = os.fork()
    watch_signals(() if pid == 0 and mode == "group-stubborn" else (signal.SIGTERM, signal.SIGINT))
    if pid == 0:
        say("READY child")
    else:
        time.sleep(0.2)
        say("READY leader")
    while True:
        idle()
elif mode == "orphan":
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            if sys.argv[2:] == ["stubborn"]:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # before it is announced
            os.close(r)
            os.write(w, f"{os.getpid()}\n".encode())
            os.close(w)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    gpid = int(os.read(r, 100).split()[0])
    print(f"ORPHAN {gpid}", flush=True)
    sys.exit(0)
elif mode == "catch-all":
    catch_all()
elif mode == "status":
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("SigBlk", "SigIgn")):
                print(line.strip(), flush=True)
elif mode == "ids":
    say(f"IDS {os.getpgrp()} {os.getsid(0)} {os.getcwd()}")
    catch_all()
else:
    sys.exit(f"unknown mode {mode}")
