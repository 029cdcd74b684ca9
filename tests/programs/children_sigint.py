"""Blocks in fastreap Child.wait() on a sleeper; SIGINT must interrupt it."""

import subprocess
import sys

import fastreap

p = subprocess.Popen(["/bin/sleep", "60"])
c = fastreap.watch(p)
try:
    # READY inside the try: on a loaded machine the SIGINT may land before
    # wait() is entered, and must still end in INTERRUPTED, not a traceback.
    print("READY", flush=True)
    c.wait()
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
c.kill()
print("RC", c.wait(), flush=True)
sys.exit(0)
