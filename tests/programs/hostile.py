"""Child interpreter for tests/test_hostile.py: one scenario per run.

    python hostile.py SCENARIO [ARG...]

Prints ``RESULT <json>`` lines that the test asserts on. The scenarios change
signal dispositions or run under the fault-injection shim (LD_PRELOAD of
tests/programs/faultshim.c, configured by FASTREAP_FAULT), which is why they
run in their own interpreter and not in pytest's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import fastreap
from fastreap import _core


def result(**kw: object) -> None:
    print("RESULT", json.dumps(kw), flush=True)


def restore_python(exit: str = "") -> None:
    """restore_signals() after signal.signal(): the newer Python handler stays
    (with exit=True too, where fastreap had set a Python-level handler itself)."""
    got = []
    if exit:
        fastreap.handle_signals(signal.SIGUSR1, exit=True)
    else:
        fastreap.handle_signals(signal.SIGUSR1, fastreap.StopFlag())
    signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    fastreap.restore_signals()
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.05)  # the Python handler runs at the next bytecode boundary
    result(got=got, handler_is_ours=_core.is_installed(signal.SIGUSR1))


def restore_ctypes() -> None:
    """restore_signals() after a C handler was installed through ctypes (libc's
    _exit, async-signal-safe: the process exits with the signal number as its
    code): that handler stays."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fastreap.handle_signals(signal.SIGUSR1, fastreap.StopFlag())
    if (
        libc.signal(signal.SIGUSR1, ctypes.cast(libc._exit, ctypes.c_void_p).value)
        == ctypes.c_void_p(-1).value
    ):
        raise OSError(ctypes.get_errno(), "signal")
    fastreap.restore_signals()
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(1)
    result(survived=True)


def install_bad_signo() -> None:
    """Out-of-range signal numbers are refused before any table is read."""
    out = []
    for signo in (2**31 - 1, -(2**31), 4096, 65):
        try:
            _core.install(signo, False, False)
        except OSError as e:
            out.append(e.errno)
    result(errnos=out)


def _fds() -> list[int]:
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


def _eventfd_id(fd: int) -> int | None:
    """The kernel's id of the eventfd behind fd (Linux >= 5.18 shows it), or None."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("eventfd-id:"):
                return int(line.split()[1])
    return None


def reopen_fails(fault: str = "") -> None:
    """In a fork child, making the inherited wake-up descriptors (the global
    one, a private flag's) its own, with dup3 or eventfd failing if the shim
    is told so: nothing leaks, both keep working (on the parent's eventfds
    after a failure), and without a fault they are new eventfds."""
    gw = _core.global_wake_fd()
    flag = fastreap.StopFlag()
    ffd = flag.fileno()
    before = _fds()
    ids = [_eventfd_id(gw), _eventfd_id(ffd)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked child
        code = 1
        try:
            os.environ["FASTREAP_FAULT"] = fault
            same = _core.global_wake_fd() == gw  # its first use here
            flag.set()
            ok = flag.wait(0) and flag.is_set() and flag.fileno() == ffd
            flag.clear()
            ok = ok and not flag.is_set()
            after = _fds()
            del os.environ["FASTREAP_FAULT"]
            kept = [a == b for a, b in zip(ids, [_eventfd_id(gw), _eventfd_id(ffd)], strict=True)]
            result(before=before, after=after, same=same, flag_ok=ok, kept=kept, ids=ids[0] is not None)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


def wait_one(script: str = "exit 7") -> None:
    """Watch one child through whatever backend and fault the environment chose."""
    p = subprocess.Popen(["sh", "-c", script])
    c = fastreap.watch(p)
    code = c.wait(10)
    code2 = fastreap.watch(subprocess.Popen(["sh", "-c", "exit 3"])).wait(10)
    try:
        zombie = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        zombie = None
    result(code=code, code2=code2, popen=p.returncode, zombie=zombie, backend=fastreap.counters()["backend"])


def _set_it(flag: _core.StopFlag) -> None:
    flag.set()


def shared_flag() -> None:
    """StopFlag(shared=True) and fastreap.Process when memfd_create fails."""
    flag = fastreap.StopFlag(shared=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        flag.set()
        os._exit(0)
    os.waitpid(pid, 0)
    forked = flag.wait(5)
    ctx = multiprocessing.get_context("spawn")
    flag2 = fastreap.StopFlag(shared=True)
    q = ctx.Process(target=_set_it, args=(flag2,))
    q.start()
    q.join(30)
    spawned = flag2.wait(5)
    p = fastreap.Process(target=time.sleep, args=(60,), mp_context=ctx)
    p.start()
    code = p.stop(timeout=30)
    kinds = sorted(
        {os.readlink(f"/proc/self/fd/{n}").split(" ")[0] for n in map(str, _fds()) if _readable(n)}
    )
    result(forked=forked, spawned=spawned, spawned_code=q.exitcode, process_code=code, fd_kinds=kinds)


def _readable(n: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{n}")
        return True
    except OSError:
        return False


LIST_FDS = (
    "import os\n"
    "for n in os.listdir('/proc/self/fd'):\n"
    "    try: print('FD', n, os.readlink('/proc/self/fd/' + n))\n"
    "    except OSError: pass\n"
)


def _exec_grandchild(flag: _core.StopFlag) -> None:
    """In a spawn/forkserver child: exec a grandchild that inherits every
    inheritable descriptor and lists them."""
    out = subprocess.run([sys.executable, "-c", LIST_FDS], close_fds=False, capture_output=True, text=True)
    flag.set()  # the rebuilt flag still works
    print(out.stdout, end="", flush=True)


def grandchild_fds(method: str) -> None:
    ctx = multiprocessing.get_context(method)
    flag = fastreap.StopFlag(shared=True)
    p = ctx.Process(target=_exec_grandchild, args=(flag,))
    p.start()
    p.join(60)
    result(exitcode=p.exitcode, set=flag.is_set())


class _Alarm(Exception):
    pass


def _raise_alarm(signum: int, frame: object) -> None:
    raise _Alarm


def wait_race() -> None:
    """A signal that lands between fastreap's last look for pending signals
    and the start of its wait (the shim's FASTREAP_WAIT_DELAY_US widens that
    window; the alarm fires inside it) must still interrupt the wait: every
    wait here has no timeout, so a lost signal hangs this program."""
    signal.signal(signal.SIGALRM, _raise_alarm)
    r, w = os.pipe()
    flag = fastreap.StopFlag()
    sleeper = subprocess.Popen(["sleep", "60"])
    child = fastreap.watch(sleeper)
    waits = {
        "wait_readable": lambda: _core.wait_readable(r, -1, -1.0),
        "flag_wait": lambda: flag.wait(),
        "child_wait": lambda: child.wait(),
    }
    out = {}
    for name, wait in waits.items():
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.0002)
            wait()
            out[name] = "returned"
        except _Alarm:
            out[name] = "interrupted"
    child.kill()
    child.wait()
    os.close(r)
    os.close(w)
    result(**out)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
