"""Import-level checks: the public names of the DESIGN contract exist."""

import fastreap

CONTRACT = [
    "StopFlag",
    "handle_signals",
    "restore_signals",
    "stop_requested",
    "graceful",
    "Stopped",
    "watch",
    "Child",
    "ExitStatus",
    "wait",
    "FIRST_EXITED",
    "ALL_EXITED",
    "graceful_stop",
    "StopReport",
    "terminate",
    "kill",
    "reap",
    "set_subreaper",
]


def test_contract_names() -> None:
    missing = [n for n in CONTRACT if not hasattr(fastreap, n)]
    assert missing == []
    assert set(CONTRACT) <= set(fastreap.__all__)


def test_stopped_is_systemexit_with_conventional_code() -> None:
    import signal

    e = fastreap.Stopped(signal.SIGTERM)
    assert isinstance(e, SystemExit)
    assert e.code == 143
    assert e.signal == signal.SIGTERM
