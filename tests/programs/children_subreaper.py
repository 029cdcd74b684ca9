"""set_subreaper: an orphaned grandchild is reparented to us and reap() gets it."""

import subprocess
import time

import fastreap

fastreap.set_subreaper(True)
# The middle shell starts a grandchild exiting 7 after the shell itself exits.
mid = subprocess.Popen(["/bin/sh", "-c", "(sleep 0.3; exit 7) & echo $!"], stdout=subprocess.PIPE, text=True)
gpid = int(mid.stdout.readline())
mid.stdout.close()
assert mid.wait() == 0
got = {}
deadline = time.monotonic() + 10
while gpid not in got and time.monotonic() < deadline:
    for st in fastreap.reap():
        got[st.pid] = st
    time.sleep(0.05)
assert got[gpid].exit_code == 7, got
print("OK", flush=True)
