"""Child interpreter for tests/test_flags.py: one scenario per run.

    python flags_child.py SCENARIO [ARG...]

Protocol: the program prints ``READY <pid>`` when the test may send its signal
(scenarios that need none skip it), then JSON lines ``RESULT {...}`` that the
test asserts on, and exits 0 unless the scenario is about the exit code.
Everything here changes this process's signal dispositions, which is why it
runs in its own interpreter and not in pytest's.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import json
import os
import signal
import sys
import tempfile
import threading
import time

import fastreap
from fastreap import _core, _flags

libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

if sys.platform == "darwin":  # pragma: no cover - macOS layout and flag values

    class Sigaction(ctypes.Structure):
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_uint32), ("flags", ctypes.c_int)]

    SA_ONSTACK, SA_RESTART, SA_SIGINFO = 0x1, 0x2, 0x40
    SA_RESTORER, KERNEL_MASK = 0, 4
else:  # Linux (glibc and musl): handler, 1024-bit mask, flags, restorer

    class Sigaction(ctypes.Structure):  # type: ignore[no-redef]
        _fields_ = [
            ("handler", ctypes.c_void_p),
            ("mask", ctypes.c_ulong * (128 // ctypes.sizeof(ctypes.c_ulong))),
            ("flags", ctypes.c_int),
            ("restorer", ctypes.c_void_p),
        ]

    SA_ONSTACK, SA_RESTART, SA_SIGINFO = 0x08000000, 0x10000000, 0x4
    SA_RESTORER, KERNEL_MASK = 0x04000000, 8


def sigaction(sig: int) -> Sigaction:
    """The kernel's current disposition for sig: sigaction(sig, NULL, &old)."""
    old = Sigaction()
    if libc.sigaction(sig, None, ctypes.byref(old)) != 0:
        raise OSError(ctypes.get_errno(), f"sigaction({sig})")
    return old


def disposition(sig: int) -> tuple[object, ...]:
    """Everything restore_signals must put back: Python's view and the kernel's
    (handler, flags, mask). glibc adds SA_RESTORER (its return trampoline) to
    every sigaction it makes, and fills only the kernel's 64 bits of the mask."""
    sa = sigaction(sig)
    return (
        repr(signal.getsignal(sig)),
        sa.handler or 0,
        sa.flags & ~SA_RESTORER,
        bytes(sa.mask)[:KERNEL_MASK],
    )


def ready() -> None:
    print("READY", os.getpid(), flush=True)


def result(**kw: object) -> None:
    print("RESULT", json.dumps(kw), flush=True)


def settle() -> None:
    """Give a pending Python-level handler its chance to run (it runs at the
    next bytecode boundary in the main thread; sleep's EINTR path checks too)."""
    for _ in range(3):
        time.sleep(0.001)


# --------------------------------------------------------------- scenarios


def sender(who: str = "outside") -> None:
    """Wait for SIGTERM on the default flag; report who sent it."""
    flag = fastreap.handle_signals([signal.SIGTERM])
    ready()
    if who == "self-thread":
        t = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
        t.start()
        t.join()
    woke = flag.wait(60)
    result(
        woke=woke,
        stop_requested=fastreap.stop_requested(),
        signal=flag.signal,
        sender_pid=flag.sender_pid,
        pid=os.getpid(),
    )


def thread_install() -> None:
    """handle_signals and restore_signals called from a non-main thread."""
    out: dict[str, object] = {}

    def worker() -> None:
        flag = fastreap.StopFlag()
        try:
            fastreap.handle_signals([signal.SIGUSR1], exit=True)
        except ValueError as e:
            out["exit_error"] = str(e)
        fastreap.handle_signals([signal.SIGUSR1], flag)
        out["installed_flags"] = sigaction(signal.SIGUSR1).flags & (SA_SIGINFO | SA_ONSTACK)
        ready()
        out["woke"] = flag.wait(60)
        out["signal"] = flag.signal
        out["sender_pid"] = flag.sender_pid
        fastreap.restore_signals([signal.SIGUSR1])
        out["restored_handler"] = sigaction(signal.SIGUSR1).handler or 0

    t = threading.Thread(target=worker)
    t.start()
    while t.is_alive():  # the main thread keeps running Python meanwhile
        t.join(0.05)
    result(**out)


def exit_mode(how: str = "sleep") -> None:
    """exit=True: Stopped at the next bytecode, finally runs, code 128+N."""
    fastreap.handle_signals(exit=True)
    try:
        ready()
        if how == "sleep":
            time.sleep(60)  # a blocking call: EINTR, then Python's handler raises
        else:
            deadline = time.monotonic() + 60
            n = 0
            while time.monotonic() < deadline:  # pure bytecode
                n += 1
        print("NOT STOPPED", flush=True)
    except fastreap.Stopped as e:
        result(
            caught=type(e).__name__, code=e.code, signal=e.signal, stop_requested=fastreap.stop_requested()
        )
        raise
    finally:
        print("FINALLY", flush=True)


def _asleep(tid: int) -> bool:
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "S"


def exit_elsewhere(blocking: str) -> None:
    """exit=True, the main thread blocked in a call (a pipe read or a sleep)
    and the signal delivered to another thread: Python only trips the main
    thread's handler, nothing interrupts its call, so without fastreap's kick
    Stopped would wait for the call to return (never, for the read).
    fork-read: the same in a fork child of the process that asked for exit
    mode (kick timers are per process); this process exits with its code."""
    fastreap.handle_signals(exit=True)
    if blocking == "fork-read":
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                _exit_elsewhere("read")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        child = fastreap.watch(pid)
        code = child.wait(20)
        if code is None:  # blocked for good: the bug
            child.kill()
            child.wait()
            print("CHILD BLOCKED", flush=True)
            code = 99
        sys.stdout.flush()
        os._exit(code if code >= 0 else 128 - code)
    _exit_elsewhere(blocking)


def _exit_elsewhere(blocking: str) -> None:
    main = threading.get_native_id()
    r, w = os.pipe()

    def worker() -> None:
        # The main thread is in its call once it has slept through several
        # looks while this thread holds no GIL (it could sleep waiting for
        # the GIL only while we hold it).
        seen = 0
        while seen < 5:
            time.sleep(0.01)
            seen = seen + 1 if _asleep(main) else 0
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # to this thread only

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    try:
        if blocking == "read":
            os.read(r, 1)  # nobody writes: blocks until interrupted
        else:
            time.sleep(60)
        print("NOT STOPPED", flush=True)
    except fastreap.Stopped as e:
        t.join()
        result(
            code=e.code,
            signal=e.signal,
            count=_flags.handled_signals().get(signal.SIGTERM),
            flag_signal=_flags.default_flag().signal,
        )
        raise
    finally:
        os.close(r)
        os.close(w)
        print("FINALLY", flush=True)


class _Loop:
    stop = False


def exit_loop(shape: str, rounds: str) -> None:
    """Many SIGTERMs, each into a fresh try around a busy loop: every one
    must land in that try's except and finally (python/cpython#130279 made
    the back edge of `while <test>:` skip them on 3.13). Each round re-arms
    exit mode; a thread sends the signal after a random delay."""
    import random

    caught = finally_ran = 0
    sys.setswitchinterval(1e-4)  # the killer thread gets the GIL from the busy loop at once
    for _ in range(int(rounds)):
        fastreap.handle_signals(exit=True)  # re-arm for this round
        loop = _Loop()
        killer = threading.Timer(random.uniform(0, 0.002), os.kill, (os.getpid(), signal.SIGTERM))
        guard = threading.Timer(10, setattr, (loop, "stop", True))  # never hang the test
        killer.daemon = guard.daemon = True  # an escaped Stopped must not wait for them
        guard.start()
        try:
            killer.start()
            if shape == "tight":
                while not loop.stop:  # the only signal check: the loop's back edge
                    pass
            else:
                n = 0
                while time.monotonic() > 0 and not loop.stop:
                    n += 1
            print("NOT STOPPED", flush=True)
        except fastreap.Stopped:
            caught += 1
        finally:
            finally_ran += 1
            killer.join()
            guard.cancel()
            guard.join()
    result(caught=caught, finally_ran=finally_ran)


def exit_repeat() -> None:
    """A second SIGTERM while the first one's Stopped is being handled sets
    the flag but raises nothing, so the cleanup runs to its end; a new
    handle_signals(exit=True) re-arms."""
    out: dict[str, object] = {}
    fastreap.handle_signals(exit=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        settle()
        out["first"] = "not raised"
    except fastreap.Stopped:
        out["first"] = "raised"
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # during the cleanup
            signal.raise_signal(signal.SIGINT)  # another handled signal, too
            settle()
            out["second"] = "not raised"
        finally:
            out["cleanup_done"] = True
    out["counts"] = {
        str(s): n for s, n in _flags.handled_signals().items() if s in (signal.SIGTERM, signal.SIGINT)
    }
    out["flag_signal"] = _flags.default_flag().signal
    # Kicks armed (Linux): one for the first signal, none while the latch is
    # spent (nothing would be raised), one after the re-arm.
    kicks = [_core.kicks_armed()]
    fastreap.handle_signals(exit=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        settle()
        out["rearmed"] = "not raised"
    except fastreap.Stopped as e:
        out["rearmed"] = e.code
    kicks.append(_core.kicks_armed())
    out["kicks"] = kicks
    result(**out)


def exit_atexit() -> None:
    """A handled signal while the interpreter exits arms no kick: CPython puts
    SIG_DFL back for Python-handled signals after the atexit callbacks, and a
    kick landing then would kill the process."""

    def at_exit() -> None:  # registered first, so it runs after fastreap's own
        before = _core.kicks_armed()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            settle()
        except fastreap.Stopped:
            pass
        result(kicks=_core.kicks_armed() - before, count=_flags.handled_signals().get(signal.SIGTERM))

    atexit.register(at_exit)
    fastreap.handle_signals(exit=True)


def restore() -> None:
    """Every kind of previous disposition comes back exactly, and works."""
    calls: list[int] = []

    def py_handler(signum: int, frame: object) -> None:
        calls.append(signum)

    signal.signal(signal.SIGUSR1, py_handler)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    sigs = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGINT, signal.SIGTERM]
    before = {s: disposition(s) for s in sigs}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    flag = fastreap.handle_signals(sigs)
    during = {s: sigaction(s) for s in sigs}
    out: dict[str, object] = {
        "ours_everywhere": len({sa.handler for sa in during.values()}) == 1
        and all(during[s].handler != before[s][1] for s in sigs),
        "flags_during": {str(s): during[s].flags for s in sigs},
        "SA_ONSTACK": SA_ONSTACK,
        "SA_SIGINFO": SA_SIGINFO,
        "SA_RESTART": SA_RESTART,
    }

    ki_during = False
    try:
        signal.raise_signal(signal.SIGINT)
        settle()
    except KeyboardInterrupt:
        ki_during = True
    out["ki_during"] = ki_during
    out["flag_after_sigint"] = flag.signal
    flag.clear()
    signal.raise_signal(signal.SIGUSR1)
    settle()
    out["py_handler_during"] = list(calls)  # chained: still runs with exit=False
    out["flag_after_sigusr1"] = flag.signal
    flag.clear()
    signal.raise_signal(signal.SIGUSR2)  # was SIG_IGN: now sets the flag
    signal.raise_signal(signal.SIGHUP)  # was SIG_DFL: now sets the flag, no death
    settle()
    out["flag_after_hup"] = flag.signal
    flag.clear()

    fastreap.restore_signals()
    after = {s: disposition(s) for s in sigs}
    out["same"] = {str(s): after[s] == before[s] for s in sigs}
    out["getsignal_int_is_default"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler

    ki_after = False
    try:
        signal.raise_signal(signal.SIGINT)
        settle()
    except KeyboardInterrupt:
        ki_after = True
    out["ki_after"] = ki_after
    calls.clear()
    signal.raise_signal(signal.SIGUSR1)
    signal.raise_signal(signal.SIGUSR2)  # ignored again
    settle()
    out["py_handler_after"] = list(calls)
    out["flag_after_restore"] = flag.is_set()
    result(**out)
    os.kill(os.getpid(), signal.SIGHUP)  # SIG_DFL again: this process dies of it
    time.sleep(10)
    print("SURVIVED SIGHUP", flush=True)


def restore_exit() -> None:
    """restore_signals after exit=True puts Python-level handlers back too."""
    calls: list[int] = []

    def py_handler(signum: int, frame: object) -> None:
        calls.append(signum)

    signal.signal(signal.SIGUSR1, py_handler)
    sigs = [signal.SIGUSR1, signal.SIGINT, signal.SIGTERM]
    before = {s: disposition(s) for s in sigs}
    fastreap.handle_signals(sigs, exit=True)
    out: dict[str, object] = {}
    try:
        signal.raise_signal(signal.SIGUSR1)
        settle()
        out["stopped"] = None
    except fastreap.Stopped as e:
        out["stopped"] = e.code
    out["py_handler_during"] = list(calls)  # replaced by Stopped in exit mode
    fastreap.restore_signals()
    after = {s: disposition(s) for s in sigs}
    out["same"] = {str(s): after[s] == before[s] for s in sigs}
    signal.raise_signal(signal.SIGUSR1)
    settle()
    out["py_handler_after"] = list(calls)
    try:
        signal.raise_signal(signal.SIGINT)
        settle()
        out["ki_after"] = False
    except KeyboardInterrupt:
        out["ki_after"] = True
    result(**out)


def chain_c() -> None:
    """A C-level handler installed behind Python's back is chained to and
    restored: faulthandler.register, and a libc function set with ctypes."""
    import faulthandler

    out: dict[str, object] = {}
    with tempfile.TemporaryFile() as log:
        faulthandler.register(signal.SIGUSR1, file=log, chain=False)
        # srand(signo) as a handler: observable through rand(), no Python involved.
        srand = ctypes.cast(libc.srand, ctypes.c_void_p).value
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal(signal.SIGUSR2, srand)
        out["getsignal_sees_them"] = [repr(signal.getsignal(s)) for s in (signal.SIGUSR1, signal.SIGUSR2)]
        before = {s: disposition(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
        libc.srand(1)
        seed1 = libc.rand()
        libc.srand(signal.SIGUSR2)
        seed_sig = libc.rand()
        out["seeds_differ"] = seed1 != seed_sig

        flag = fastreap.handle_signals([signal.SIGUSR1, signal.SIGUSR2])
        signal.raise_signal(signal.SIGUSR1)
        log.seek(0)
        out["faulthandler_wrote_during"] = len(log.read())
        out["flag_usr1"] = flag.signal
        flag.clear()
        libc.srand(1)
        signal.raise_signal(signal.SIGUSR2)
        out["srand_chained"] = libc.rand() == seed_sig
        out["flag_usr2"] = flag.signal
        flag.clear()

        fastreap.restore_signals()
        out["same"] = [disposition(s) == before[s] for s in before]
        log.seek(0)
        n = len(log.read())
        signal.raise_signal(signal.SIGUSR1)
        log.seek(0)
        out["faulthandler_after"] = len(log.read()) > n
        out["flag_after_restore"] = flag.is_set()
        faulthandler.unregister(signal.SIGUSR1)
    result(**out)


def wakeup_fd() -> None:
    """fastreap never takes or changes signal.set_wakeup_fd (asyncio owns it)."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    out: dict[str, object] = {}
    out["initial"] = signal.set_wakeup_fd(w)  # -1: nobody had it
    flag = fastreap.handle_signals([signal.SIGUSR1, signal.SIGTERM])
    with fastreap.graceful([signal.SIGUSR2]):
        pass
    out["after_handle"] = signal.set_wakeup_fd(w) == w
    signal.raise_signal(signal.SIGUSR1)
    out["flag"] = flag.signal
    fastreap.restore_signals()
    out["after_restore"] = signal.set_wakeup_fd(-1) == w
    # and with nobody owning it, fastreap does not claim it either
    fastreap.handle_signals([signal.SIGUSR1])
    out["unclaimed"] = signal.set_wakeup_fd(-1)
    fastreap.restore_signals()
    os.close(r)
    os.close(w)
    result(**out)


def partial() -> None:
    """A call that fails installs nothing and leaves earlier state intact."""
    sigs = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM]
    before = {s: disposition(s) for s in sigs}
    out: dict[str, object] = {}

    for bad in ([signal.SIGTERM, signal.SIGKILL], [signal.SIGUSR1, 0], [signal.SIGUSR1, 65]):
        try:
            fastreap.handle_signals(bad)
            out[str(bad)] = "no error"
        except ValueError as e:
            out[str(bad)] = str(e)
    out["same_after_bad"] = [disposition(s) == before[s] for s in sigs]
    out["books_after_bad"] = sorted(_flags._installed)

    # Fill SIGUSR2's binding table, then ask for SIGUSR1 + SIGUSR2 with one more flag.
    flags = [fastreap.StopFlag() for _ in range(fastreap._core.MAX_BOUND)]
    for f in flags:
        fastreap.handle_signals([signal.SIGUSR2], f)
    usr2 = disposition(signal.SIGUSR2)
    extra = fastreap.StopFlag()
    try:
        fastreap.handle_signals([signal.SIGUSR1, signal.SIGUSR2], extra)
        out["full_table"] = "no error"
    except OSError as e:
        out["full_table"] = str(e)
    out["usr1_untouched"] = disposition(signal.SIGUSR1) == before[signal.SIGUSR1]
    out["books_after_full"] = sorted(_flags._installed)
    # and an exit=True upgrade of a handled signal that fails is rolled back
    try:
        fastreap.handle_signals([signal.SIGUSR2], extra, exit=True)
        out["upgrade"] = "no error"
    except OSError:
        out["upgrade"] = "failed"
    out["usr2_as_before_upgrade"] = disposition(signal.SIGUSR2) == usr2
    try:
        signal.raise_signal(signal.SIGUSR2)
        settle()
        out["stopped"] = False
    except fastreap.Stopped:
        out["stopped"] = True
    out["bound_flags_set"] = sum(f.is_set() for f in flags)
    out["extra_set"] = extra.is_set()
    fastreap.restore_signals()
    out["same_at_end"] = [disposition(s) == before[s] for s in sigs]
    result(**out)


def sigaction_flags() -> None:
    """How the handler is installed, as the kernel reports it."""
    before = sigaction(signal.SIGTERM)
    fastreap.handle_signals([signal.SIGTERM])
    sa = sigaction(signal.SIGTERM)
    result(
        flags=sa.flags,
        handler_changed=sa.handler != before.handler,
        mask_empty=not any(bytes(sa.mask)[:KERNEL_MASK]),
        SA_ONSTACK=SA_ONSTACK,
        SA_SIGINFO=SA_SIGINFO,
        SA_RESTART=SA_RESTART,
    )


def capsule_spin(module_dir: str) -> None:
    """A nogil Cython loop in the main thread, polling the default flag
    through fastreap/_core.pxd, stops when SIGTERM arrives."""
    sys.path.insert(0, module_dir)
    import frspin  # compiled by the test

    fastreap.handle_signals([signal.SIGTERM])
    ready()
    n = frspin.spin_default(60.0)  # one C call; Python handlers cannot run in it
    result(stopped=n >= 0, signal=_flags.default_flag().signal)


SCENARIOS = {
    "sender": sender,
    "thread_install": thread_install,
    "exit": exit_mode,
    "exit_elsewhere": exit_elsewhere,
    "exit_atexit": exit_atexit,
    "exit_loop": exit_loop,
    "exit_repeat": exit_repeat,
    "restore": restore,
    "restore_exit": restore_exit,
    "chain_c": chain_c,
    "wakeup_fd": wakeup_fd,
    "partial": partial,
    "sigaction_flags": sigaction_flags,
    "capsule_spin": capsule_spin,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](*sys.argv[2:])
