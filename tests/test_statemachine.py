"""Property-based: random spawn / watch / signal / stop / wait / reap sequences.

A hypothesis ``RuleBasedStateMachine`` drives short ``/bin/sh`` children
(exiting with a random code, sleeping a little first, ignoring SIGTERM, or
killing themselves with SIGUSR1), started as ``subprocess.Popen`` or as bare
pids (``os.posix_spawn``), and watched as pids, Popens or Childs, with random
short sleeps in between. Invariants, checked after every step:

* every child is reaped exactly once: a returncode never changes once set,
  ``Popen.returncode`` equals ``Child.returncode``, ``reap()`` never returns
  a child whose status was already delivered;
* statuses are true: the exit code the child chose, or ``-N`` only for a
  signal N that was actually sent to it (SIGUSR1 for the self-killers);
* at teardown: no zombie and no running child left, no watcher entry and no
  descriptor left (the ``no_leaks`` fixture checks the whole test as well).

Runs on both watcher backends (the ``backend`` fixture of conftest).
``FASTREAP_SM_EXAMPLES`` raises the number of examples for a soak run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import fastreap
from conftest import _exempt_children, _live_children, _open_fds
from fastreap import _watcher

MAX_SPAWNS = 10  # per example
SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP, signal.SIGKILL, 0]
TIMEOUTS = st.sampled_from([0.0, 0.001, 0.01, 0.03, 0.08])
KINDS = ["exit", "sleep", "ignore_term", "self_usr1"]


def _script(kind: str, code: int, nap: float) -> str:
    if kind == "exit":
        return f"exit {code}"
    if kind == "sleep":
        return f"sleep {nap:.3f}; exit {code}"
    if kind == "ignore_term":
        return f"trap '' TERM; sleep {nap:.3f}; exit {code}"
    return "kill -USR1 $$; sleep 5"


def _wait_ignoring_term(pid: int) -> None:
    """Wait until pid ignores SIGTERM (its trap ran) or has exited."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        if fields["State"].split()[0] in ("Z", "X") or int(fields["SigIgn"], 16) & (
            1 << (signal.SIGTERM - 1)
        ):
            return
        time.sleep(0.001)
    raise AssertionError(f"pid {pid} never ignored SIGTERM")


@dataclass(eq=False)
class Rec:
    """One child the machine started and everything it knows about it."""

    kind: str
    code: int
    popen: subprocess.Popen[bytes] | None
    pid: int
    child: fastreap.Child | None = None
    sent: set[int] = field(default_factory=set)  # signals sent while it might have been running
    returncode: int | None = None  # first returncode seen (must never change)
    stolen: fastreap.ExitStatus | None = None  # reaped by fastreap.reap() while unwatched
    # A rule asked for it to be watched (whether it could be depends on timing:
    # reap() may have taken it first). Rule choice depends only on this, so
    # hypothesis sees the same choices when it replays an example.
    asked: bool = False

    def possible(self) -> set[int]:
        """Every returncode that would be true for this child."""
        out = {self.code} if self.kind != "self_usr1" else {-signal.SIGUSR1}
        for s in self.sent:
            if s == 0 or (s == signal.SIGTERM and self.kind == "ignore_term"):
                continue
            out.add(-s)
        return out

    def target(self, how: str) -> Any:
        """The child as a Child, its Popen, or its bare pid (a bare pid only
        while it is unreaped: after that the number may name anyone)."""
        if self.child is not None and (how == "child" or self.popen is None):
            return self.child
        if self.popen is not None:
            return self.popen  # a Popen's bare pid would bypass the Popen's own books
        return self.pid


class Machine(RuleBasedStateMachine):
    """Children come and go at random; the invariants must hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.recs: list[Rec] = []
        self.kids_before = _live_children()
        self.fds_before = _open_fds()
        self.watched_before = fastreap.counters()["watched"]
        STATS["examples"] += 1

    # -- helpers ----------------------------------------------------------

    def watched(self) -> list[Rec]:
        return [r for r in self.recs if r.asked]

    def pick(self, data: st.DataObject, recs: list[Rec], label: str) -> list[Rec]:
        if not recs:
            return []
        return data.draw(st.lists(st.sampled_from(recs), min_size=1, max_size=4, unique=True), label=label)

    def note_sent(self, recs: list[Rec], sig: int) -> None:
        for r in recs:
            if r.returncode is None:
                r.sent.add(sig)

    def adopt(self, recs: list[Rec], report: fastreap.StopReport) -> None:
        """The Child each target became (a bare pid's is only in the report)."""
        kids = {c.pid: c for c in report.exited + report.killed + report.lost + report.alive}
        assert set(kids) == {r.pid for r in recs}
        assert set(report.returncodes) == {c.pid for c in report.exited + report.killed}
        for r in recs:
            if r.child is None or r.child.pid != r.pid:
                r.child = kids[r.pid]
            assert kids[r.pid] is r.child or r.popen is not None  # a reaped Popen gets a fresh Child

    def check_child(self, r: Rec) -> None:
        """A watched child's status, against everything else we know."""
        assert r.child is not None
        st_ = r.child.status  # read once: it may be reaped at any moment
        rc = None if st_ is None else st_.returncode
        if rc is None:
            assert r.returncode is None, f"{r}: returncode went from {r.returncode} back to None"
            assert st_ is None
            return
        assert not r.child.lost, r
        if r.returncode is None:
            r.returncode = rc
        assert rc == r.returncode, f"pid {r.pid}: returncode changed {r.returncode} -> {rc}"
        assert rc in r.possible(), f"pid {r.pid} ({r.kind}) returncode {rc} not in {r.possible()}"
        assert st_ is not None and st_.pid == r.pid and r.child.returncode == rc
        if rc < 0:
            assert st_.signal == -rc and st_.exit_code is None
        else:
            assert st_.exit_code == rc and st_.signal is None
        if r.popen is not None and r.popen.returncode is not None:
            assert r.popen.returncode == rc, f"Popen.returncode {r.popen.returncode} != Child's {rc}"

    # -- rules ------------------------------------------------------------

    @precondition(lambda self: len(self.recs) < MAX_SPAWNS)
    @rule(
        kind=st.sampled_from(KINDS),
        code=st.integers(0, 255),
        nap=st.floats(0.0, 0.15),
        as_popen=st.booleans(),
        watch_now=st.booleans(),
    )
    def spawn(self, kind: str, code: int, nap: float, as_popen: bool, watch_now: bool) -> None:
        argv = ["/bin/sh", "-c", _script(kind, code, nap)]
        if as_popen:
            p: subprocess.Popen[bytes] | None = subprocess.Popen(argv)
            pid = p.pid  # type: ignore[union-attr]
        else:
            p, pid = None, os.posix_spawn(argv[0], argv, os.environ)
        if kind == "ignore_term":
            _wait_ignoring_term(pid)  # else a SIGTERM may still land before the trap
        r = Rec(kind, code, p, pid)
        STATS["children"] += 1
        self.recs.append(r)
        if watch_now:
            r.asked = True
            r.child = fastreap.watch(p if p is not None else pid)

    @precondition(lambda self: not all(r.asked for r in self.recs))
    @rule(data=st.data(), how=st.sampled_from(["int", "popen", "child"]))
    def watch(self, data: st.DataObject, how: str) -> None:
        r = data.draw(st.sampled_from([r for r in self.recs if not r.asked]))
        r.asked = True
        if r.stolen is not None:
            return  # reap() took it while unwatched: its pid may name anyone now
        r.child = fastreap.watch(r.target(how))
        assert r.child.pid == r.pid and fastreap.watch(r.child) is r.child

    @precondition(lambda self: self.watched())
    @rule(data=st.data(), sig=st.sampled_from(SIGNALS), method=st.sampled_from(["send", "terminate", "kill"]))
    def signal_child(self, data: st.DataObject, sig: int, method: str) -> None:
        r = data.draw(st.sampled_from(self.watched()))
        if r.child is None:
            return  # reap() took it before it could be watched
        if method == "terminate":
            sig = signal.SIGTERM
        elif method == "kill":
            sig = signal.SIGKILL
        self.note_sent([r], sig)
        if method == "send":
            r.child.send_signal(sig)
        else:
            getattr(r.child, method)()  # a no-op without error once reaped

    @precondition(lambda self: self.recs)
    @rule(
        data=st.data(),
        timeout=TIMEOUTS,
        sig=st.sampled_from([signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]),
        kill_after=st.booleans(),
        how=st.sampled_from(["int", "popen", "child"]),
    )
    def graceful_stop(
        self, data: st.DataObject, timeout: float, sig: int, kill_after: bool, how: str
    ) -> None:
        recs = self.pick(data, self.recs, "stop")
        for r in recs:
            r.asked = True
        recs = [r for r in recs if r.stolen is None]
        if not recs:
            return
        self.note_sent(recs, sig)
        if kill_after:
            self.note_sent(recs, signal.SIGKILL)
        report = fastreap.graceful_stop(
            [r.target(how) for r in recs], timeout, signal=sig, kill_after=kill_after
        )
        self.adopt(recs, report)
        for r in recs:
            assert r.child is not None
            self.check_child(r)
            if r.pid in report.returncodes:  # else lost, or it ended after the report
                assert report.returncodes[r.pid] == r.child.returncode
        if kill_after:
            assert not report.alive and all(r.returncode is not None for r in recs)
        for c in report.killed:
            assert c.returncode is not None

    @precondition(lambda self: self.recs)
    @rule(data=st.data(), which=st.sampled_from(["terminate", "kill"]), timeout=TIMEOUTS)
    def terminate_or_kill(self, data: st.DataObject, which: str, timeout: float) -> None:
        recs = self.pick(data, self.recs, which)
        for r in recs:
            r.asked = True
        recs = [r for r in recs if r.stolen is None]
        if not recs:
            return
        if which == "kill":
            self.note_sent(recs, signal.SIGKILL)
            report = fastreap.kill([r.target("popen") for r in recs])
            assert not report.alive
        else:
            self.note_sent(recs, signal.SIGTERM)
            report = fastreap.terminate([r.target("popen") for r in recs], timeout)
        self.adopt(recs, report)
        for r in recs:
            self.check_child(r)

    @precondition(lambda self: self.watched())
    @rule(data=st.data(), timeout=TIMEOUTS, all_=st.booleans())
    def wait(self, data: st.DataObject, timeout: float, all_: bool) -> None:
        recs = [r for r in self.pick(data, self.watched(), "wait") if r.child is not None]
        if not recs:
            return
        kids = {r.child for r in recs}
        mode = fastreap.ALL_EXITED if all_ else fastreap.FIRST_EXITED
        done, pending = fastreap.wait(kids, timeout, mode)
        assert done | pending == kids and not (done & pending)
        for c in done:
            assert c.returncode is not None
        if all_ and pending:
            pass  # timed out: some still running (they may finish right now)
        for r in recs:
            self.check_child(r)

    @precondition(lambda self: self.watched())
    @rule(data=st.data(), timeout=TIMEOUTS)
    def child_wait(self, data: st.DataObject, timeout: float) -> None:
        r = data.draw(st.sampled_from(self.watched()))
        if r.child is None:
            return
        rc = r.child.wait(timeout)
        assert rc is None or rc == r.child.returncode
        self.check_child(r)

    @precondition(lambda self: any(r.popen is not None for r in self.recs))
    @rule(data=st.data())
    def popen_poll(self, data: st.DataObject) -> None:
        """Popen's own poll() competes with the watcher: still reaped once."""
        r = data.draw(st.sampled_from([r for r in self.recs if r.popen is not None]))
        assert r.popen is not None
        if r.stolen is not None:
            return
        rc = r.popen.poll()
        if rc is not None and r.child is not None:
            self.check_child(r)
            assert r.child.returncode == rc

    @rule(nap=st.floats(0.0, 0.05))
    def sleep(self, nap: float) -> None:
        time.sleep(nap)

    @rule()
    def reap(self) -> None:
        """fastreap.reap() steals every exited child: only when all are ours
        (multiprocessing's long-lived helpers, if any, do not exit meanwhile)."""
        if _live_children() - {r.pid for r in self.recs} - _exempt_children():
            return
        done_before = {
            r.pid
            for r in self.recs
            if r.returncode is not None
            or r.stolen is not None
            or (r.popen is not None and r.popen.returncode is not None)
        }
        by_pid = {r.pid: r for r in self.recs}
        for es in fastreap.reap():
            r = by_pid[es.pid]
            assert es.pid not in done_before, f"pid {es.pid} reaped twice: {es}"
            if r.child is not None:
                self.check_child(r)
                assert r.child.status == es
            else:
                assert es.returncode in r.possible(), (r, es)
                r.stolen = es
                if r.popen is not None:
                    r.popen.returncode = es.returncode  # the documented steal: tell the owner

    # -- invariants -------------------------------------------------------

    @invariant()
    def statuses_stable_and_true(self) -> None:
        STATS["steps"] += 1
        for r in self.recs:
            if r.child is not None:
                self.check_child(r)

    # -- teardown ---------------------------------------------------------

    def teardown(self) -> None:
        rest = [r for r in self.recs if r.stolen is None and r.returncode is None]
        try:
            if rest:
                self.note_sent(rest, signal.SIGKILL)
                self.adopt(rest, fastreap.kill([r.target("popen") for r in rest]))
            for r in self.recs:
                if r.stolen is None:
                    self.check_child(r)
                    assert r.returncode is not None
            w = _watcher.current()
            assert fastreap.counters()["watched"] == self.watched_before, w.children
            leftover = _live_children() - self.kids_before - _exempt_children()
            assert not leftover, f"left children (zombie or running): {leftover}"
            new_fds = _open_fds() - self.fds_before - w.own_fds()
            assert not new_fds, f"left descriptors: {new_fds}"
        finally:
            for r in self.recs:  # whatever failed above, leave nothing behind
                if r.returncode is None and r.stolen is None:
                    try:
                        os.kill(r.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for r in self.recs:
                if r.popen is not None and r.popen.returncode is None:
                    r.popen.wait()
                elif r.popen is None and r.returncode is None and r.stolen is None:
                    try:
                        os.waitpid(r.pid, 0)
                    except ChildProcessError:
                        pass


EXAMPLES = int(os.environ.get("FASTREAP_SM_EXAMPLES", "25"))
STATS = {"examples": 0, "steps": 0, "children": 0}


@pytest.mark.usefixtures("backend")
def test_state_machine() -> None:
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    print("state machine:", STATS)  # shown with -rA: examples, steps and children per backend
    STATS.update(examples=0, steps=0, children=0)
