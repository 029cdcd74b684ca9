"""Pid reuse: fastreap never signals a process it did not start.

Runs as PID 1 of a new PID namespace (``unshare --pid --fork --mount-proc``)
whose ``pid_max`` it lowers, so pids wrap after a few dozen processes. For each
kind of target (``subprocess.Popen``, a bare ``int`` pid, a
``multiprocessing.Process``) it watches a child, lets it exit and be reaped
(by fastreap, or behind fastreap's back by a foreign ``os.waitpid``), then
spawns and reaps dummies until a *victim* lands on the very same pid: either
our own unwatched child or someone else's (a grandchild). It then calls every
signalling entry point on the old target and checks that the victim received
nothing and is still alive, and that fastreap answered as documented.

Prints ``SKIP <reason>`` and exits 0 when ``pid_max`` cannot be lowered here;
otherwise one ``CASE`` line per scenario, a ``TOTAL`` line, then ``OK``.
The backend comes from the environment (``FASTREAP_BACKEND``,
``FASTREAP_PIDFD_BUDGET``) as for any program.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import subprocess
import sys

PID_MAX = 360  # pids then cycle through 300..359 (the kernel skips 1..299 on wrap)
RECORDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
VICTIM = f"""
import os, signal, sys
got = []
for s in {[int(s) for s in RECORDED]!r}:
    signal.signal(s, lambda n, f: got.append(n))
print("R", os.getpid(), flush=True)
sys.stdin.read()
print("SIGS", ",".join(map(str, got)), flush=True)
"""


def lower_pid_max() -> str | None:
    """Lower pid_max in this namespace; the reason it cannot be, or None."""
    if os.getpid() != 1:
        return "not PID 1 of a new PID namespace"
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            before = int(f.read())
        with open("/proc/sys/kernel/pid_max", "w") as f:
            f.write(str(PID_MAX))
        with open("/proc/sys/kernel/pid_max") as f:
            after = int(f.read())
    except OSError as e:
        return f"pid_max is not writable in a PID namespace here ({e})"
    if after != PID_MAX:
        return f"pid_max did not change ({before} -> {after})"
    if not os.path.exists("/proc/sys/kernel/ns_last_pid"):
        return "no /proc/sys/kernel/ns_last_pid"
    return None


def last_pid() -> int:
    with open("/proc/sys/kernel/ns_last_pid") as f:
        return int(f.read())


class Cycler:
    """Spawns and reaps throwaway processes to move the pid counter."""

    def __init__(self) -> None:
        self.dummies = 0
        self.wraps = 0
        self.prev = last_pid()

    def one(self) -> None:
        pid = os.posix_spawn("/bin/true", ["true"], os.environ)
        os.waitpid(pid, 0)  # our own dummy: reaping it is ours to do
        self.dummies += 1
        if pid < self.prev:
            self.wraps += 1
        self.prev = pid

    def warm_up(self) -> None:
        """Wrap once, so every pid handed out from now on is in the reused range."""
        while self.wraps == 0:
            self.one()

    def to_before(self, target: int, gap: int) -> None:
        """Move the counter so that the next ``gap`` new processes get
        target - gap + 1 ... target (every pid in between is taken)."""
        for _ in range(20 * PID_MAX):
            lp = last_pid()
            first = target - gap + 1  # where the next new process must land
            if first - 8 <= lp < first and all(os.path.exists(f"/proc/{p}") for p in range(lp + 1, first)):
                return
            self.one()
        raise AssertionError(f"could not bring the pid counter in front of {target}")


class Victim:
    """A process we never watch: ours (``own``) or our grandchild (a shell's)."""

    def __init__(self, own: bool) -> None:
        cmd = [sys.executable, "-S", "-c", VICTIM]
        if not own:
            # The shell stays the victim's parent (a trailing command keeps it from exec'ing).
            cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
        self.own = own
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        line = self.p.stdout.readline().split()
        assert line and line[0] == "R", line
        self.pid = int(line[1])

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return False
        return data[data.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")

    def finish(self) -> tuple[int, list[int] | None]:
        """Let it exit; return (its parent's returncode, signals it recorded
        or None if it never got to say)."""
        out, _ = self.p.communicate(timeout=30)
        sigs = None
        for line in out.splitlines():
            if line.startswith("SIGS"):
                sigs = [int(s) for s in line[4:].strip().split(",") if s]
        return self.p.returncode, sigs

    def kill(self) -> None:
        self.p.kill()
        self.p.communicate()


def _target(rfd: int, wfd: int) -> None:
    os.close(wfd)
    os.read(rfd, 1)
    os._exit(7)


class Target:
    """A child that exits 7 when we close its pipe."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        rfd, wfd = os.pipe()
        if kind == "popen":
            self.obj: object = subprocess.Popen(["/bin/sh", "-c", "read x; exit 7"], stdin=rfd)
            self.pid = self.obj.pid  # type: ignore[attr-defined]
        elif kind == "int":
            fa = [(os.POSIX_SPAWN_DUP2, rfd, 0), (os.POSIX_SPAWN_CLOSE, wfd)]
            self.pid = os.posix_spawn("/bin/sh", ["sh", "-c", "read x; exit 7"], os.environ, file_actions=fa)
            self.obj = self.pid
        else:
            ctx = multiprocessing.get_context("fork")
            pr = ctx.Process(target=_target, args=(rfd, wfd))
            pr.start()
            self.obj, self.pid = pr, pr.pid
        os.close(rfd)
        self.wfd = wfd

    def release(self) -> None:
        os.close(self.wfd)


def scenario(kind: str, reaper: str, own_victim: bool, cyc: Cycler) -> dict[str, object]:
    import fastreap

    t = Target(kind)
    c = fastreap.watch(t.obj)
    from fastreap import _watcher

    path = "pidfd" if c.pid in _watcher.current().pidfd_of else "sigchld"  # which watcher path holds it
    t.release()
    if reaper == "fastreap":
        assert c.wait(30) == 7, c
    else:
        # Behind fastreap's back: nothing of fastreap's runs until the reuse.
        os.waitid(os.P_PID, t.pid, os.WEXITED | os.WNOWAIT)
        os.waitpid(t.pid, 0)
    # Force the pid to be reused by a process we never watch.
    victim = None
    for _attempt in range(30):
        cyc.to_before(t.pid, 1 if own_victim else 2)
        v = Victim(own_victim)
        if v.pid == t.pid:
            victim = v
            break
        v.kill()
    assert victim is not None, f"no victim landed on pid {t.pid}"
    assert victim.alive()
    # Every entry point that could signal the old child, through the old Child first.
    errors: list[str] = []
    c.send_signal(signal.SIGUSR1)
    c.send_signal(signal.SIGTERM)
    c.terminate()
    c.kill()
    reports = [
        fastreap.graceful_stop([c], 0.2, signal=signal.SIGUSR1),
        fastreap.graceful_stop(c, 0.2),
        fastreap.terminate([c], 0.2),
        fastreap.kill([c]),
    ]
    if kind != "int":
        # The original Popen / Process object.
        reports += [
            fastreap.graceful_stop([t.obj], 0.2),
            fastreap.terminate([t.obj], 0.2),
            fastreap.kill([t.obj]),
        ]
    elif not own_victim:
        # The bare number now names someone else's process: refused.
        for fn in (fastreap.graceful_stop, fastreap.terminate, fastreap.kill, fastreap.watch):
            try:
                fn(t.pid)  # type: ignore[operator]
                errors.append(f"{fn.__name__}(pid) accepted a pid that is not our child")
            except ChildProcessError:
                pass
    # What fastreap says about the old child.
    if reaper == "fastreap":
        expect_rc: int | None = 7
        if c.returncode != 7 or c.lost:
            errors.append(f"returncode changed to {c.returncode} (lost={c.lost})")
    else:
        expect_rc = None
        try:
            c.wait(5)
            errors.append("wait() did not raise ChildLostError")
        except fastreap.ChildLostError:
            pass
        if not c.lost or c.returncode is not None:
            errors.append(f"not reported lost: lost={c.lost} returncode={c.returncode}")
    for r in reports:
        # A lost target is listed in r.lost and has no returncode entry.
        want = {} if expect_rc is None else {t.pid: expect_rc}
        lost = [c.pid for c in r.lost]
        if r.returncodes != want or r.killed or r.alive or lost != ([t.pid] if expect_rc is None else []):
            errors.append(f"report {r.returncodes} killed={r.killed} alive={r.alive} lost={lost}")
    if kind == "popen" and reaper == "fastreap" and t.obj.returncode != 7:  # type: ignore[attr-defined]
        errors.append(f"Popen.returncode {t.obj.returncode}")  # type: ignore[attr-defined]
    if kind == "mp" and reaper == "fastreap" and t.obj.exitcode != 7:  # type: ignore[attr-defined]
        errors.append(f"Process.exitcode {t.obj.exitcode}")  # type: ignore[attr-defined]
    alive = victim.alive()
    rc, sigs = victim.finish()
    if not alive or rc != 0 or sigs is None:
        errors.append(f"victim died or was reaped by fastreap: alive={alive} rc={rc}")
    return {"pid": t.pid, "path": path, "sigs": sigs or [], "errors": errors}


def main() -> int:
    reason = lower_pid_max()
    if reason is not None:
        print("SKIP", reason, flush=True)
        return 0
    faulthandler.dump_traceback_later(100, exit=True)
    import fastreap

    backend = fastreap.counters()["backend"]
    cyc = Cycler()
    cyc.warm_up()
    cases = failures = signals = 0
    for kind in ("popen", "int", "mp"):
        for reaper in ("fastreap", "foreign"):
            for own in (True, False):
                r = scenario(kind, reaper, own, cyc)
                cases += 1
                signals += len(r["sigs"])  # type: ignore[arg-type]
                bad = bool(r["errors"]) or bool(r["sigs"])
                failures += bad
                victim = "own-child" if own else "grandchild"
                print(
                    f"CASE path={r['path']} {kind} reaped-by-{reaper} victim={victim} pid={r['pid']} "
                    f"victim-signals={r['sigs']} errors={r['errors']} {'FAIL' if bad else 'ok'}",
                    flush=True,
                )
    c = fastreap.counters()
    print(
        f"TOTAL backend={backend} cases={cases} reuses={cases} dummies={cyc.dummies} wraps={cyc.wraps} "
        f"victim_signals={signals} failures={failures} lost={c['lost']} pidfds={c['pidfds']}",
        flush=True,
    )
    if failures:
        return 1
    print("OK", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
