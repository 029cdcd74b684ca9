"""graceful_stop(group=True) as a subreaper: the group's other members (not
our children) are signalled and, if they ignore it, killed at the deadline.
Orphaned members are reparented to this process, so it can reap them and
print how each one really ended."""

import json
import os
import subprocess
import sys

import fastreap

fastreap.set_subreaper()
grace = float(sys.argv[1])
# The leader (a new session, so its own group) starts two members: one that
# dies of SIGTERM and one that ignores it, then becomes a sleep that never
# reaps them (so each one's end waits for us, its subreaper, to read).
script = "sleep 60 & echo polite $!; sh -c 'trap \"\" TERM; echo stubborn $$; exec sleep 60' & exec sleep 60"
leader = subprocess.Popen(
    ["/bin/sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True, text=True
)
assert leader.stdout is not None
# The stubborn one prints its line itself, once its trap is set.
pids = dict(leader.stdout.readline().split() for _ in range(2))
leader.stdout.close()
r = fastreap.graceful_stop([leader], grace, group=True)
out = {"leader": leader.returncode, "killed": len(r.killed), "exited": len(r.exited)}
for name, pid in ((name, int(pid)) for name, pid in sorted(pids.items())):
    # Reparented to us when the leader died; graceful_stop returns only
    # after both have exited, so each is a zombie waiting for us now.
    got, status = os.waitpid(pid, os.WNOHANG)
    out[name] = os.WTERMSIG(status) if got and os.WIFSIGNALED(status) else ("running" if not got else status)
print(json.dumps(out))
