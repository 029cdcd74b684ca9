"""What a new user meets (issue 15): StopReport fields that mean one thing
each, precise public types, and errors that say what is wrong and what to do."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

import fastreap
from fastreap import _procfs, aio
from test_stop import polite, stubborn

# ---- StopReport: every target in exactly one list ------------------------------


def _partition(r: fastreap.StopReport) -> list[int]:
    pids = [c.pid for c in r.exited + r.killed + r.lost + r.alive]
    assert len(pids) == len(set(pids)), "a target is in two lists"
    assert set(r.returncodes) == {c.pid for c in r.exited + r.killed}
    return pids


def test_kill_lists_its_victims_under_killed() -> None:
    p, q = polite(), polite()
    r = fastreap.kill([p, q])
    assert sorted(c.pid for c in r.killed) == sorted([p.pid, q.pid])
    assert r.exited == [] and r.alive == [] and r.lost == []
    assert r.returncodes == {p.pid: -9, q.pid: -9}
    _partition(r)


def test_kill_of_a_finished_target_lists_it_under_exited() -> None:
    done = subprocess.Popen(["sh", "-c", "exit 3"])
    done.wait()
    running = polite()
    r = fastreap.kill([done, running])
    assert [c.pid for c in r.exited] == [done.pid] and [c.pid for c in r.killed] == [running.pid]
    assert r.returncodes == {done.pid: 3, running.pid: -9}


def test_signal_sigkill_counts_as_killed() -> None:
    p = polite()
    r = fastreap.graceful_stop([p], 5, signal=signal.SIGKILL)
    assert [c.pid for c in r.killed] == [p.pid] and r.exited == []


def test_aio_kill_signal_counts_as_killed() -> None:
    p = polite()
    r = asyncio.run(aio.graceful_stop([p], 5, signal=signal.SIGKILL))
    assert [c.pid for c in r.killed] == [p.pid] and r.returncodes == {p.pid: -9}


def test_escalated_ones_are_killed_the_others_exited() -> None:
    hard, soft = stubborn(), polite()
    r = fastreap.graceful_stop([hard, soft], 0.3)
    assert [c.pid for c in r.killed] == [hard.pid] and [c.pid for c in r.exited] == [soft.pid]
    assert r.returncodes == {hard.pid: -9, soft.pid: -15} and r.alive == []


def test_terminate_with_a_timeout_fills_alive_without_returncodes() -> None:
    hard, soft = stubborn(), polite()
    r = fastreap.terminate([hard, soft], timeout=0.3)
    assert [c.pid for c in r.alive] == [hard.pid] and [c.pid for c in r.exited] == [soft.pid]
    assert r.killed == [] and r.lost == []
    assert r.returncodes == {soft.pid: -15}  # nothing for the running one
    assert r.alive[0].is_alive()
    assert fastreap.kill(r.alive).returncodes == {hard.pid: -9}


def test_a_lost_target_is_listed_as_lost_with_no_returncode() -> None:
    p = polite()
    c = fastreap.watch(p)
    other = polite()
    p.kill()
    os.waitpid(p.pid, 0)  # someone else reaps it
    r = fastreap.graceful_stop([c, other], 5)
    assert r.lost == [c] and c.lost
    assert [x.pid for x in r.exited] == [other.pid]
    assert r.returncodes == {other.pid: -15}  # the lost one has no entry
    assert sorted(_partition(r)) == sorted([p.pid, other.pid])
    p.wait()


def test_stop_report_docstring_documents_every_field() -> None:
    doc = inspect.getdoc(fastreap.StopReport) or ""
    for name in ("exited", "killed", "lost", "alive", "returncodes", "elapsed"):
        assert f"``{name}``" in doc, name
    assert {f for f in fastreap.StopReport.__dataclass_fields__} == {
        "exited",
        "killed",
        "lost",
        "alive",
        "returncodes",
        "elapsed",
    }


# ---- types -----------------------------------------------------------------------


def test_public_type_names() -> None:
    assert typing.get_args(fastreap.ReturnWhen) == ("FIRST_EXITED", "ALL_EXITED")
    assert typing.get_args(fastreap.ReturnWhen) == (fastreap.FIRST_EXITED, fastreap.ALL_EXITED)
    hints = typing.get_type_hints(fastreap.graceful_stop)  # every name in the signature resolves
    assert hints["return"] is fastreap.StopReport
    assert "Target" in fastreap.__all__ and "Counters" in fastreap.__all__


def test_return_when_other_than_the_two_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="return_when must be FIRST_EXITED or ALL_EXITED, got 'ANY'"):
        fastreap.wait([], return_when="ANY")  # type: ignore[arg-type]


def test_counters_has_exactly_the_documented_keys() -> None:
    c = fastreap.counters()
    assert set(c) == set(fastreap.Counters.__annotations__)
    assert isinstance(c["backend"], str) and isinstance(c["reaped"], int)


def test_stopflag_signature_has_no_private_argument() -> None:
    assert str(inspect.signature(fastreap.StopFlag)) == "(*, shared=False)"
    assert "_internal" not in (fastreap.StopFlag.__doc__ or "")
    with pytest.raises(TypeError, match="takes one keyword argument, shared"):
        fastreap.StopFlag(_internal="default")  # type: ignore[call-arg]


REJECTED = """
import asyncio
import fastreap
import fastreap.aio

async def main() -> None:
    proc = await asyncio.create_subprocess_exec("true")
    await fastreap.aio.wait(proc)
    fastreap.watch(proc)

fastreap.watch("sleep 30")
fastreap.graceful_stop("sleep 30")
fastreap.wait([1], return_when="ANY")
n: int = fastreap.counters()["no_such_key"]
"""


def test_mypy_strict_rejects_wrong_targets(tmp_path: Path) -> None:
    """What mypy --strict must refuse: a str or an asyncio Process as a target,
    an unknown return_when, an unknown counters() key."""
    if os.environ.get("CI") != "true":
        pytest.importorskip("mypy")
    src = tmp_path / "bad.py"
    src.write_text(textwrap.dedent(REJECTED))
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull, str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # outside the project: the installed package and its py.typed
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    lines = [line for line in out.splitlines() if ": error:" in line]
    flagged = {int(line.split(":")[1]) for line in lines}
    body = textwrap.dedent(REJECTED).splitlines()
    want = {i + 1 for i, line in enumerate(body) if "(proc)" in line or '"sleep 30"' in line}
    want |= {i + 1 for i, line in enumerate(body) if '"ANY"' in line or "no_such_key" in line}
    assert flagged == want, out


# ---- errors ---------------------------------------------------------------------


def test_this_process_itself() -> None:
    with pytest.raises(ChildProcessError, match=f"^target: pid {os.getpid()} is this process itself"):
        fastreap.watch(os.getpid())


def test_a_pid_that_does_not_exist() -> None:
    from test_bad_input import _missing_pid

    pid = _missing_pid()
    with pytest.raises(ChildProcessError, match=f"^targets: pid {pid} does not exist"):
        fastreap.graceful_stop([pid])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the parent is read from /proc")
def test_another_process_child_names_its_parent() -> None:
    parent = os.getppid()
    st = _procfs.read_stat(parent)
    assert st is not None
    with pytest.raises(
        ChildProcessError,
        match=rf"^target: pid {parent} is not a child of this process \(its parent is {st.ppid}\)$",
    ):
        fastreap.watch(parent)


def test_a_popen_reaped_behind_our_back_was_already_reaped() -> None:
    p = subprocess.Popen(["true"])
    os.waitpid(p.pid, 0)
    for call, arg in ((fastreap.watch, "target"), (fastreap.graceful_stop, "targets")):
        with pytest.raises(
            ChildProcessError, match=rf"^{arg}: pid {p.pid} was already reaped by something else \(os.waitpid"
        ):
            call(p)
    p.wait()  # ECHILD: the stdlib's silent 0


def test_asyncio_process_says_what_to_do() -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(shutil.which("true") or "/bin/true")
        try:
            with pytest.raises(
                TypeError,
                match=r"^child: asyncio\.subprocess\.Process is not supported: .*await process\.wait\(\)",
            ):
                await aio.wait(proc)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"^target: asyncio\.subprocess\.Process is not supported"):
                fastreap.watch(proc)  # type: ignore[arg-type]
        finally:
            await proc.wait()

    asyncio.run(main())
