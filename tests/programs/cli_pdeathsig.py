"""The parent that dies: start ``fastreap run --pdeathsig USR1 --grace 0.3 --
python cli_target.py catch-all`` with its output going to FILE, wait until CMD
is READY, print fastreap's pid and exit without waiting for it.

    cli_pdeathsig.py FILE TARGET
"""

import os
import subprocess
import sys
import time

out, target = sys.argv[1], sys.argv[2]
fastreap = [sys.executable, "-m", "fastreap", "run", "--pdeathsig", "USR1", "--grace", "0.3", "--"]
with open(out, "w") as f:
    p = subprocess.Popen(
        [*fastreap, sys.executable, target, "catch-all"],
        stdin=subprocess.DEVNULL,
        stdout=f,
        stderr=subprocess.DEVNULL,
    )
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    with open(out) as f:
        if "READY" in f.read():
            break
    time.sleep(0.01)
print(p.pid, flush=True)
os._exit(0)  # fastreap is orphaned now; the kernel sends it SIGUSR1
