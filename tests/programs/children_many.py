"""N /bin/sleep children watched under RLIMIT_NOFILE 1024; all reaped, no zombie."""

import os
import resource
import signal
import sys

resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
import fastreap  # noqa: E402  (budget computed from the limit at import)

n = int(sys.argv[1])
pids = [os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ) for _ in range(n)]
kids = [fastreap.watch(pid) for pid in pids]
c = fastreap.counters()
assert c["watched"] == n and c["pidfds"] <= 256, c
nfds = len(os.listdir("/proc/self/fd"))
assert nfds < 1024, nfds
for pid in pids:  # many exit at once: SIGCHLDs coalesce
    os.kill(pid, signal.SIGKILL)
done, pending = fastreap.wait(kids, 60, fastreap.ALL_EXITED)
assert not pending, len(pending)
assert all(k.returncode == -9 for k in kids)
c = fastreap.counters()
assert c["reaped"] == n and c["watched"] == 0 and c["pidfds"] == 0 and c["lost"] == 0, c
try:
    os.waitpid(-1, os.WNOHANG)
    raise AssertionError("a child is left")
except ChildProcessError:
    pass
print("OK", c, flush=True)
