"""Clear a stop flag over and over while signals set it (tests/test_reliability.py).

    python flag_clear_race.py

Handles SIGTERM and SIGUSR1 (the default flag). A thread waits for the
flag, checks that a set flag always names the signal and sender that set it,
and clears it, until stdin closes (the senders are done); meanwhile the main
thread sleeps in a read, so the kernel runs the handler there, on the other
CPU, concurrently with ``clear()``. This caught ``clear()`` zeroing the signal number
after a concurrent setter had stored its own: a set flag with ``.signal``
None. Prints ``READY <pid>`` then ``RESULT {...}``; exit 0 if it held.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import fastreap

HANDLED = (signal.SIGTERM, signal.SIGUSR1)


def main() -> int:
    flag = fastreap.handle_signals(HANDLED)
    eof = threading.Event()
    rounds = 0
    bad: list[object] = []

    def clearer() -> None:
        nonlocal rounds
        while not eof.is_set():
            if not flag.wait(0.2):
                continue
            s, sender = flag.signal, flag.sender_pid
            if s not in HANDLED or sender is None:
                bad.append((s, sender))
            rounds += 1
            flag.clear()

    t = threading.Thread(target=clearer)
    t.start()
    print("READY", os.getpid(), flush=True)
    sys.stdin.read()  # the main thread sleeps here: the kernel runs most handlers on it
    eof.set()
    t.join()
    print("RESULT", json.dumps({"rounds": rounds, "bad": len(bad), "examples": bad[:5]}), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
