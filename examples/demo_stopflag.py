"""Demo: a worker thread learns of SIGTERM at once, while the main thread is
busy inside one long C call (hashing 512 MiB) that a signal.signal handler would
have to wait for."""

import hashlib
import os
import signal
import threading
import time

import fastreap

flag = fastreap.handle_signals([signal.SIGTERM])
seen = {}


def worker() -> None:
    while not fastreap.stop_requested():
        flag.wait()  # blocks with the GIL released, wakes on the flag's descriptor
    seen["at"] = time.perf_counter()


t = threading.Thread(target=worker)
t.start()
data = b"\0" * (512 << 20)
sent = {}


def send() -> None:
    time.sleep(0.05)
    sent["at"] = time.perf_counter()
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=send).start()
start = time.perf_counter()
hashlib.sha256(data).hexdigest()  # one C call; Python handlers cannot run during it
end = time.perf_counter()
t.join()
print(f"main thread in hashlib for {1000 * (end - start):.0f} ms")
print(
    f"SIGTERM sent {1000 * (sent['at'] - start):.1f} ms into it; "
    f"worker saw the stop flag {1000 * (seen['at'] - sent['at']):.3f} ms later "
    f"(signal {flag.signal}, from pid {flag.sender_pid})"
)
fastreap.restore_signals()
