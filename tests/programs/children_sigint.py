"""Blocks in fastreap Child.wait() on a sleeper; SIGINT must interrupt it."""

import subprocess
import sys

import fastreap

p = subprocess.Popen(["/bin/sleep", "60"])
c = fastreap.watch(p)
print("READY", flush=True)
try:
    c.wait()
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
c.kill()
print("RC", c.wait(), flush=True)
sys.exit(0)
