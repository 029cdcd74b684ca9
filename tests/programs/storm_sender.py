"""One sender of a signal storm (tests/test_reliability.py).

    python storm_sender.py TARGET_PID COUNT OFFSET SECONDS

Prints ``READY``, waits for a line on stdin, then sends COUNT signals to
TARGET_PID only, cycling through SIGTERM, SIGCHLD and SIGUSR1 (starting at
OFFSET), in bursts of 100 spread over about SECONDS (so the storm overlaps
many of the target's short-lived children; nothing is timed), and prints
``SENT {"15": n, "17": n, "10": n}``. It refuses any target that names a
process group or itself (pid <= 1 or its own pid) and stops at the first
failed kill (the target died: that is the test's failure).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

SIGNALS = (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1)
BURST = 100


def main() -> int:
    target, count, offset = (int(a) for a in sys.argv[1:4])
    seconds = float(sys.argv[4])
    if target <= 1 or target == os.getpid():
        raise SystemExit(f"storm_sender: refusing target pid {target}")
    if count < 0:
        raise SystemExit(f"storm_sender: count must be >= 0, got {count}")
    print("READY", flush=True)
    sys.stdin.readline()
    sent = {int(s): 0 for s in SIGNALS}
    kill = os.kill
    pause = seconds / max(1, count // BURST)
    try:
        for i in range(count):
            s = SIGNALS[(i + offset) % 3]
            kill(target, s)
            sent[int(s)] += 1
            if i % BURST == BURST - 1:
                time.sleep(pause)
    finally:
        print("SENT", json.dumps(sent), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
