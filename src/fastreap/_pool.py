"""``fastreap.ProcessPoolExecutor`` (alias ``fastreap.Pool``): a
``concurrent.futures.Executor`` whose workers are watched by fastreap.

Two ways to run a task, chosen from the start method and max_tasks_per_child:

* **fork, one task per child** (``max_tasks_per_child=1`` with the fork start
  method, the default on Linux before 3.14): each task gets its own
  ``os.fork()`` with the function and arguments already in its memory (no
  task pickling, no idle worker, no task queue); the child runs it, sends the
  pickled result back on a socket shared by all the pool's children
  (``SOCK_SEQPACKET``: one whole message per write, so no pipe, descriptor or
  selector registration per task) and exits. At most ``max_workers`` such
  children run a task at once; the next one is forked as soon as a result
  arrives (the child that sent it is only exiting; at most ``max_workers``
  more may be exiting at a time) or the watcher reports an exit.
* **long-lived workers** (spawn, forkserver, or fork with any other
  ``max_tasks_per_child``): ``mp_context.Process`` workers fed one task at a
  time through a pipe, each exiting after ``max_tasks_per_child`` tasks.

One manager thread multiplexes the result pipes, a wake-up pipe (submit,
shutdown) and fastreap's watcher (its poller descriptor; each worker's exit
arrives as a done callback). There is no housekeeping timer: a dead worker is
noticed when the kernel reports its exit, and replaced when work needs it.
A worker that dies while running a task fails that task's future with
``WorkerDiedError`` (a ``BrokenProcessPool``) naming the exit code or signal;
the pool itself keeps going (unlike the stdlib's, which breaks for good).
"""

from __future__ import annotations

import atexit
import collections
import errno
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import os
import pickle
import selectors
import signal as _signal
import socket
import struct
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from . import _core, _watcher
from ._children import ALL_EXITED, Child, ExitStatus, graceful_stop, wait, watch
from ._owners import owner_of

__all__ = ["Pool", "ProcessPoolExecutor", "WorkerDiedError"]

_log = logging.getLogger("fastreap")

# After shutdown's timeout (or at the end, for workers that do not leave on
# their own), workers get SIGTERM and, this much later, SIGKILL.
_STOP_GRACE = 1.0
_dumps = multiprocessing.reduction.ForkingPickler.dumps

# Fork-per-task results travel on one SOCK_SEQPACKET socket pair shared by
# the pool's children: each write is one message, delivered whole and never
# interleaved with another child's. A result is sent in chunks of at most
# _CHUNK bytes (fewer if the socket's buffer is smaller), each headed by the
# task id and whether it is the last one.
_HDR = struct.Struct("=qB")  # task id, last chunk
_CHUNK = 32768


class WorkerDiedError(BrokenProcessPool):
    """The worker running a task died before sending its result. ``status``
    is how it ended (``ExitStatus``), None if someone else reaped it."""

    def __init__(self, message: str, status: ExitStatus | None = None) -> None:
        super().__init__(message)
        self.status = status


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _describe(status: ExitStatus | None) -> str:
    if status is None:
        return "was reaped by someone else (exit status unknown)"
    if status.signal is not None:
        try:
            name = _signal.Signals(status.signal).name
        except ValueError:
            name = f"signal {status.signal}"
        return f"was killed by {name} (returncode {status.returncode})"
    return f"exited with code {status.exit_code}"


class _Task:
    __slots__ = ("args", "fn", "future", "id", "kwargs")

    def __init__(self, tid: int, future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.id = tid
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


class _Worker:
    __slots__ = ("child", "done", "proc", "results", "task", "tasks")

    def __init__(self, child: Child, results: Any, tasks: Any, proc: Any) -> None:
        self.child = child
        self.results = results  # Connection we read results from (None: the shared result socket)
        self.tasks = tasks  # Connection we send tasks through (None: one fork per task)
        self.proc = proc  # the multiprocessing.Process (long-lived mode)
        self.task: _Task | None = None
        self.done = 0


# A result of one of these exact types pickles the same with or without
# multiprocessing's reducers (they add sockets, connections and the like):
# plain pickle.dumps then spares the worker ForkingPickler's set-up (in a
# fork-per-task child, fewer pages copied on write too).
_SCALARS = frozenset({int, float, complex, bool, str, bytes, type(None)})


def _result_message(tid: int, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    payload: tuple[Any, ...]
    try:
        value = fn(*args, **kwargs)
    except BaseException as e:
        payload = (tid, False, e, traceback.format_exc())
    else:
        if type(value) in _SCALARS:
            return pickle.dumps((tid, True, value, None), pickle.HIGHEST_PROTOCOL)
        payload = (tid, True, value, None)
    try:
        return _dumps(payload)
    except BaseException as e:
        what = "result" if payload[1] else "exception"
        err = pickle.PicklingError(f"the task's {what} could not be pickled: {e!r}")
        return _dumps((tid, False, err, traceback.format_exc()))


def _send_result(fd: int, tid: int, data: bytes) -> None:
    """In a fork-per-task child: send data (a pickled result message) on the
    shared result socket, as one or more whole messages."""
    view = memoryview(data)
    n = len(data)
    chunk = _CHUNK
    off = 0
    while True:
        end = off + chunk
        last = end >= n
        part = view[off:end]
        try:
            sent = os.writev(fd, [_HDR.pack(tid, last), part])
        except OSError as e:
            if e.errno == errno.EMSGSIZE and chunk > 256:
                chunk //= 2  # the socket's buffer is smaller than a chunk
                continue
            raise
        if sent != _HDR.size + len(part):  # pragma: no cover - SOCK_SEQPACKET writes are whole
            raise OSError(errno.EIO, "short write on the pool's result socket")
        if last:
            return
        off = end


_PID_OWNER = owner_of(1)  # a plain pid's owner: nobody else to tell


def _watch_forked(pid: int) -> Child:
    """``watch(pid)`` for a child this thread has just forked: a pid > 0 that
    no other watched child can have (nobody has reaped it). The checks
    watch() makes for any target are skipped; anything unusual takes watch()."""
    w = _watcher.current()
    with w.lock:
        if pid not in w.children and not w.closed:
            c = Child(pid, _PID_OWNER, w)
            try:
                w.add(c)  # registers it, and reaps it if it has exited already
            except (ChildProcessError, ProcessLookupError):
                pass  # nothing registered: watch() says what happened
            else:
                return c
    return watch(pid)


def _flush_std() -> None:
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass


def _worker_main(
    tasks: Any, results: Any, initializer: Callable[..., Any] | None, initargs: Any, limit: int | None
) -> None:
    """A long-lived worker: one task at a time from ``tasks``, results to
    ``results``; leaves after ``limit`` tasks or when ``tasks`` closes."""
    if initializer is not None:
        initializer(*initargs)  # an exception ends the worker: its tasks fail clearly
    n = 0
    while limit is None or n < limit:
        try:
            data = tasks.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        tid, fn, args, kwargs = pickle.loads(data)
        results.send_bytes(_result_message(tid, fn, args, kwargs))
        n += 1


class ProcessPoolExecutor(Executor):
    """A process pool for ``concurrent.futures`` code, driven by fastreap's
    watcher. ``fastreap.Pool`` is the same class (not a ``multiprocessing.Pool``
    look-alike: it has the ``Executor`` API, ``submit``/``map``/``shutdown``).

    ``max_workers``: processes at once (default: the CPU count).
    ``mp_context``: a multiprocessing context (default: the default context).
    ``initializer(*initargs)`` runs in each worker before its first task (in
    fork-per-task mode, in each child). ``max_tasks_per_child``: a worker
    leaves after that many tasks (None: never); 1 with the fork start method
    forks one child per task. A task's exception is re-raised by its future
    with the worker's traceback as ``__cause__``."""

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: multiprocessing.context.BaseContext | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int or None, not {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers}")
        if mp_context is None:
            mp_context = multiprocessing.get_context()
        elif not isinstance(mp_context, multiprocessing.context.BaseContext):
            raise TypeError(
                "mp_context must be a multiprocessing context (multiprocessing.get_context(...)) "
                f"or None, not {type(mp_context).__name__}"
            )
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable or None, not {type(initializer).__name__}")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, not {type(initargs).__name__}")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError(
                    f"max_tasks_per_child must be an int or None, not {type(max_tasks_per_child).__name__}"
                )
            if max_tasks_per_child <= 0:
                raise ValueError(f"max_tasks_per_child must be >= 1, got {max_tasks_per_child}")
        self._max_workers = max_workers
        self._ctx = mp_context
        self._initializer = initializer
        self._initargs = initargs
        self._limit = max_tasks_per_child
        self._fork_per_task = max_tasks_per_child == 1 and mp_context.get_start_method() == "fork"
        self._lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._ids = itertools.count()
        self._shutdown = False
        self._stop_at: float | None = None
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._wake_pending = False  # a byte is in the wake-up pipe the manager has not read yet
        self._exits: collections.deque[Child] = collections.deque()
        self._workers: dict[Child, _Worker] = {}
        self._idle: list[_Worker] = []
        # Fork-per-task mode: the shared result socket (manager end, children's
        # end), the children still running a task by task id, and the chunks
        # of results not yet complete.
        self._res_r: socket.socket | None = None
        self._res_w: socket.socket | None = None
        self._busy: dict[int, _Worker] = {}
        self._partial: dict[int, list[bytes]] = {}
        self._buf = bytearray(0)

    # -- public API ----------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; return its Future."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            f: Future[Any] = Future()
            self._queue.append(_Task(next(self._ids), f, fn, args, kwargs))
            if self._thread is None:
                self._start_manager()
        self._wake()
        return f

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None
    ) -> None:
        """Stop accepting tasks; let the queued and running ones finish (the
        queued ones are cancelled with ``cancel_futures=True``), then let the
        workers go (``graceful_stop``). ``timeout`` (seconds, None: no limit)
        bounds the wait for the tasks: on expiry the queued ones are
        cancelled and the running workers stopped with ``graceful_stop``
        (SIGTERM, SIGKILL 1 s later), failing their futures with
        ``WorkerDiedError``. ``wait=True`` returns once everything is done.
        Calling it again is a no-op (``wait=True`` still waits)."""
        if not isinstance(wait, bool):
            raise TypeError(f"wait must be a bool, not {type(wait).__name__}")
        if not isinstance(cancel_futures, bool):
            raise TypeError(f"cancel_futures must be a bool, not {type(cancel_futures).__name__}")
        t = _core.check_timeout(timeout)
        with self._lock:
            thread = self._thread
            if not self._shutdown:
                self._shutdown = True
                if cancel_futures:
                    while self._queue:
                        self._queue.popleft().future.cancel()
                if t >= 0:
                    self._stop_at = time.monotonic() + t
        if thread is None:
            return
        self._wake()
        if wait and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> ProcessPoolExecutor:
        return self

    # Executor.__exit__ calls shutdown(wait=True).

    @property
    def max_workers(self) -> int:
        return self._max_workers

    # -- manager -------------------------------------------------------------

    def _start_manager(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r, self._wake_w = r, w
        t = threading.Thread(target=self._run, name="fastreap-pool", daemon=True)
        try:
            if self._fork_per_task:
                self._res_r, self._res_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                self._res_r.setblocking(False)
                self._buf = bytearray(_HDR.size + _CHUNK)
            t.start()
        except BaseException:
            os.close(r)
            os.close(w)
            self._close_results()
            raise
        self._thread = t
        _live_pools.add(self)

    def _close_results(self) -> None:
        for sock in (self._res_r, self._res_w):
            if sock is not None:
                sock.close()
        self._res_r = self._res_w = None

    def _wake(self) -> None:
        # One byte per manager wake-up, not per call (a map() of 1,000 tasks
        # would otherwise write 1,000): the manager drains the pipe, then
        # clears the flag, then looks at the queue. A call that finds the flag
        # set queued its work before that clear, so the manager sees it; a
        # call that finds it clear writes a byte the drain has not eaten.
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # full (a wake-up is pending anyway) or closed (manager gone)

    def _on_exit(self, child: Child) -> None:
        # A done callback: runs in the reaping thread with the watcher lock held.
        self._exits.append(child)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        self._sel = sel
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        w = _watcher.current()
        pfd = w.fileno()
        sel.register(pfd, selectors.EVENT_READ, w)
        if self._res_r is not None:
            sel.register(self._res_r, selectors.EVENT_READ, self._res_r)
        try:
            self._loop(sel, w)
        except BaseException as e:  # pragma: no cover - a bug: do not leave futures hanging
            _log.exception("fastreap: process pool manager failed")
            self._fail_all(BrokenProcessPool(f"the pool's manager thread failed: {e!r}"))
        finally:
            sel.close()
            with self._lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
                self._close_results()
            _live_pools.discard(self)

    def _loop(self, sel: selectors.BaseSelector, w: Any) -> None:
        while True:
            self._reap_exits()
            self._dispatch()
            with self._lock:
                finished = (
                    self._shutdown and not self._queue and all(x.task is None for x in self._workers.values())
                )
            if finished:
                self._retire_all()
                if not self._workers:
                    return
            timeout = None
            if self._stop_at is not None and self._workers:
                timeout = self._stop_at - time.monotonic()
                if timeout <= 0:
                    self._stop_now()
                    continue
            for key, _ev in sel.select(timeout):
                if key.data is None:
                    # Drain first, then clear the flag (see _wake). The other
                    # order loses a wake-up: a byte written between the clear
                    # and the drain is eaten while the flag stays set, and no
                    # later _wake() writes again.
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    self._wake_pending = False
                elif key.data is w:
                    w.poll_now()
                elif key.data is self._res_r:
                    self._read_results()
                else:
                    self._read_result(key.data)

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                if self._fork_per_task:
                    # A child that has sent its result is only exiting: its
                    # successor starts meanwhile. Those exiting are bounded
                    # too (one blocked flushing its stdout, say).
                    if len(self._busy) >= self._max_workers or len(self._workers) >= 2 * self._max_workers:
                        return
                    worker = None
                elif self._idle:
                    worker = self._idle.pop()
                elif len(self._workers) < self._max_workers:
                    worker = None
                else:
                    return
                task = self._queue.popleft()
            if not task.future.set_running_or_notify_cancel():
                if worker is not None:
                    self._idle.append(worker)
                continue
            try:
                if self._fork_per_task:
                    self._fork_task(task)
                    continue
                if worker is None:
                    worker = self._start_worker()
                data = _dumps((task.id, task.fn, task.args, task.kwargs))
            except Exception as e:
                task.future.set_exception(e)
                if worker is not None:
                    self._idle.append(worker)
                continue
            worker.task = task
            try:
                worker.tasks.send_bytes(data)
            except OSError:
                pass  # it died: its exit fails the task

    def _fork_task(self, task: _Task) -> None:
        assert self._res_w is not None
        wfd = self._res_w.fileno()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (coverage does not follow os._exit)
            code = 0
            try:
                if self._initializer is not None:
                    self._initializer(*self._initargs)
                _send_result(wfd, task.id, _result_message(task.id, task.fn, task.args, task.kwargs))
                _flush_std()
            except BaseException:
                code = 1
                try:
                    traceback.print_exc()
                    _flush_std()
                except BaseException:
                    pass
            finally:
                os._exit(code)
        wk = self._add_worker(_watch_forked(pid), None, None, None, task)
        self._busy[task.id] = wk

    def _read_results(self) -> None:
        """Fork-per-task mode: take every message waiting on the result socket."""
        sock = self._res_r
        if sock is None:
            return
        buf = self._buf
        hdr = _HDR.size
        while True:
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            tid, last = _HDR.unpack_from(buf)
            part = bytes(buf[hdr:n])
            if not last:
                self._partial.setdefault(tid, []).append(part)
                continue
            chunks = self._partial.pop(tid, None)
            if chunks is not None:
                chunks.append(part)
                part = b"".join(chunks)
            wk = self._busy.pop(tid, None)
            if wk is None:  # pragma: no cover - a protocol bug
                _log.error("fastreap: a pool child sent a result for an unknown task %d", tid)
                continue
            self._deliver(wk, part)

    def _start_worker(self) -> _Worker:
        ctx = self._ctx
        task_r, task_w = ctx.Pipe(duplex=False)
        res_r, res_w = ctx.Pipe(duplex=False)
        p = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(task_r, res_w, self._initializer, self._initargs, self._limit),
            daemon=True,
            name="fastreap-pool-worker",
        )
        try:
            p.start()
        except BaseException:
            for c in (task_r, task_w, res_r, res_w):
                c.close()
            raise
        task_r.close()
        res_w.close()
        return self._add_worker(watch(p), res_r, task_w, p, None)

    def _add_worker(self, child: Child, results: Any, tasks: Any, proc: Any, task: _Task | None) -> _Worker:
        wk = _Worker(child, results, tasks, proc)
        wk.task = task
        self._workers[child] = wk
        if results is not None:
            self._sel.register(results.fileno(), selectors.EVENT_READ, wk)
        if not _watcher.Watcher.subscribe(child, self._on_exit):
            self._on_exit(child)  # exited already
        return wk

    def _read_result(self, wk: _Worker) -> bool:
        """Read one message from wk (long-lived mode); False at end of file."""
        try:
            data = wk.results.recv_bytes()
        except (EOFError, OSError):
            self._unregister(wk)
            return False
        self._deliver(wk, data)
        return True

    def _deliver(self, wk: _Worker, data: bytes) -> None:
        """wk's task has sent its result message: resolve the task's future."""
        tid, ok, value, tb = pickle.loads(data)
        task, wk.task = wk.task, None
        wk.done += 1
        if task is None or task.id != tid:  # pragma: no cover - a protocol bug
            _log.error("fastreap: pool worker %d sent a result for an unknown task", wk.child.pid)
            return
        if ok:
            task.future.set_result(value)
        else:
            if tb is not None and isinstance(value, BaseException):
                value.__cause__ = _RemoteTraceback(f'\n"""\n{tb}"""')
            task.future.set_exception(value)
        if wk.tasks is not None and (self._limit is None or wk.done < self._limit) and not wk.child.lost:
            self._idle.append(wk)

    def _unregister(self, wk: _Worker) -> None:
        if wk.results is None:
            return
        try:
            self._sel.unregister(wk.results.fileno())
        except (KeyError, ValueError, OSError):
            pass  # already (at end of file)

    def _reap_exits(self) -> None:
        if self._exits and self._busy:
            # Whatever a child sent before exiting is on the socket: take it first.
            self._read_results()
        while self._exits:
            child = self._exits.popleft()
            wk = self._workers.pop(child, None)
            if wk is None:
                continue
            if wk.results is None:  # fork-per-task
                if wk.task is not None:
                    self._busy.pop(wk.task.id, None)
                    self._partial.pop(wk.task.id, None)
            else:
                if wk in self._idle:
                    self._idle.remove(wk)
                # Whatever it wrote before exiting is in the pipe: take it first.
                try:
                    while wk.task is not None and wk.results.poll():
                        if not self._read_result(wk):
                            break
                except OSError:
                    pass
                if wk in self._idle:
                    self._idle.remove(wk)
                self._unregister(wk)
                wk.results.close()
            if wk.tasks is not None:
                wk.tasks.close()
            if wk.proc is not None:
                wk.proc.join(0)  # the status is written back already: join() just books it
                wk.proc.close()
            if wk.task is not None and not wk.task.future.done():
                st = child.status
                wk.task.future.set_exception(
                    WorkerDiedError(
                        f"the worker process (pid {child.pid}) running this task {_describe(st)} "
                        "before sending a result",
                        st,
                    )
                )

    def _retire_all(self) -> None:
        """All work is done: let every worker go (close its task pipe, then
        graceful_stop those that do not leave within the grace period)."""
        kids = []
        for wk in self._workers.values():
            if wk.tasks is not None:
                wk.tasks.close()
                wk.tasks = None
            kids.append(wk.child)
        if kids:
            _done, pending = wait(kids, _STOP_GRACE, ALL_EXITED)
            if pending:
                graceful_stop(pending, _STOP_GRACE)
        self._reap_exits()

    def _stop_now(self) -> None:
        """shutdown(timeout=) expired: cancel the queue, stop the workers."""
        self._stop_at = None
        with self._lock:
            while self._queue:
                self._queue.popleft().future.cancel()
        kids = [wk.child for wk in self._workers.values()]
        if kids:
            graceful_stop(kids, _STOP_GRACE)
        self._reap_exits()

    def _fail_all(self, exc: BaseException) -> None:  # pragma: no cover - see _run
        with self._lock:
            self._shutdown = True
            tasks = list(self._queue)
            self._queue.clear()
        tasks += [wk.task for wk in self._workers.values() if wk.task is not None]
        for t in tasks:
            if not t.future.done():
                t.future.set_exception(exc)
        kids = [wk.child for wk in self._workers.values()]
        if kids:
            graceful_stop(kids, _STOP_GRACE)
        for wk in self._workers.values():
            if wk.results is not None:
                wk.results.close()
            if wk.tasks is not None:
                wk.tasks.close()


Pool = ProcessPoolExecutor

_live_pools: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()


@atexit.register
def _shutdown_pools() -> None:
    for p in list(_live_pools):
        p.shutdown(wait=True)
