"""Run ``fastreap run ARGS -- python -c PROBE`` on a new pseudo-terminal (its
controlling terminal) and print what PROBE saw, as ``RESULT ...`` lines.

PROBE reports whether CMD's group is the terminal's foreground group, then
reads one line from the terminal (a background group would be stopped by
SIGTTIN there), and exits 0.
"""

import os
import pty
import sys

PROBE = (
    "import os, sys; "
    "print('FG', os.tcgetpgrp(0) == os.getpgrp(), 'OWNGROUP', os.getpgrp() == os.getpid(), flush=True); "
    "print('GOT', sys.stdin.readline().strip(), flush=True)"
)

pid, master = pty.fork()
if pid == 0:
    os.execv(
        sys.executable,
        [sys.executable, "-m", "fastreap", "run", *sys.argv[1:], "--", sys.executable, "-c", PROBE],
    )
buf = b""
sent = False
while True:
    try:
        chunk = os.read(master, 1024)
    except OSError:  # EIO: the other side is closed
        break
    if not chunk:
        break
    buf += chunk
    if not sent and b"FG " in buf and b"\n" in buf[buf.index(b"FG ") :]:
        os.write(master, b"hello\n")
        sent = True
_, status = os.waitpid(pid, 0)
os.close(master)
for line in buf.decode(errors="replace").splitlines():
    if line.startswith(("FG", "GOT")):
        print("RESULT", line.strip())
print("EXIT", os.waitstatus_to_exitcode(status))
