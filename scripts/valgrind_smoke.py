"""A short run through fastreap's compiled paths, for valgrind (scripts/valgrind_smoke.sh).

Stop flags (private, shared, default), handler install/restore with real
signals to this process, exit=True, graceful(), watch/wait/reap through the
watcher (pidfd+epoll, or the SIGCHLD ring with FASTREAP_BACKEND=sigchld),
graceful_stop with an escalation to SIGKILL, reap(), asyncio, and a
fork-started fastreap.Process. Prints OK and exits 0 when every check holds.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import threading

import fastreap
from fastreap import _core, aio


def _stop_target() -> None:
    while not fastreap.stop_requested():
        _core.default_flag.wait(1.0)


def flags() -> None:
    for f in (fastreap.StopFlag(), fastreap.StopFlag(shared=True)):
        assert not f and not f.is_set() and f.signal is None
        assert f.wait(0.01) is False
        fd = f.fileno()
        assert fd >= 0 and f.address != 0
        threading.Timer(0.02, f.set).start()
        assert f.wait(5.0) is True and f.is_set()
        f.clear()
        assert not f.is_set()
    cap = _core._stop_flag_capsule
    assert cap is not None


def handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    flag = fastreap.StopFlag()
    fastreap.handle_signals([signal.SIGUSR1, signal.SIGUSR2], flag)
    fastreap.handle_signals(signal.SIGUSR1, flag)  # idempotent
    os.kill(os.getpid(), signal.SIGUSR1)
    assert flag.wait(5.0) and flag.signal == signal.SIGUSR1 and flag.sender_pid == os.getpid()
    fastreap.restore_signals([signal.SIGUSR1, signal.SIGUSR2])
    assert signal.getsignal(signal.SIGUSR1) == before
    try:
        with fastreap.graceful(signal.SIGUSR1, exit=True):
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(10_000_000):  # Stopped arrives at the next bytecode
                pass
            raise AssertionError("Stopped not raised")
    except fastreap.Stopped as e:
        assert e.code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before
    assert not _core.is_installed(signal.SIGUSR1)
    _core.default_flag.clear()


def children() -> None:
    ps = [subprocess.Popen(["sleep", "60"]) for _ in range(4)]
    kids = [fastreap.watch(p) for p in ps]
    quick = fastreap.watch(subprocess.Popen(["sh", "-c", "exit 7"]))
    assert quick.wait(10.0) == 7 and quick.status is not None and quick.status.exit_code == 7
    kids[0].terminate()
    done, pending = fastreap.wait(kids, 10.0)
    assert done == {kids[0]} and kids[0].returncode == -signal.SIGTERM
    stubborn = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo; while :; do sleep 0.05; done"], stdout=subprocess.PIPE
    )
    assert stubborn.stdout is not None
    stubborn.stdout.readline()  # its trap is set: SIGTERM sent before would kill it
    stubborn.stdout.close()
    r = fastreap.graceful_stop([*pending, stubborn], timeout=0.5)
    assert stubborn.pid in {c.pid for c in r.killed}, r
    assert not r.lost and not r.alive
    assert [p.wait() for p in ps[1:]] == [-signal.SIGTERM] * 3
    # The stealing opt-in: children nobody watches.
    loose = [subprocess.Popen(["true"]) for _ in range(3)]
    got: set[int] = set()
    while len(got) < 3:
        got |= {s.pid for s in fastreap.reap()}
        if len(got) < 3:
            threading.Event().wait(0.01)
    assert got == {p.pid for p in loose}
    for p in loose:
        p.returncode = 0  # reaped above; keep Popen.__del__ quiet

    async def amain() -> int:
        p = subprocess.Popen(["sleep", "60"])
        task = asyncio.ensure_future(aio.wait(p))
        await asyncio.sleep(0.05)
        p.kill()
        rc = await task
        r2 = await aio.graceful_stop([subprocess.Popen(["sleep", "60"])], timeout=5.0)
        assert list(r2.returncodes.values()) == [-signal.SIGTERM]
        return rc

    assert asyncio.run(amain()) == -signal.SIGKILL


def process() -> None:
    p = fastreap.Process(
        target=_stop_target, exit_on_stop=False, mp_context=multiprocessing.get_context("fork")
    )
    p.start()
    rc = p.stop(timeout=60.0)
    assert rc == 0, rc


def main() -> int:
    flags()
    handlers()
    children()
    process()
    c = fastreap.counters()
    assert c["watched"] == 0, c
    print("OK", c["backend"], "reaped", c["reaped"], "escalations", c["escalations"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
