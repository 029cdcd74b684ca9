# cython: language_level=3, freethreading_compatible=False, embedsignature=True
"""fastreap._core: the compiled core.

Stop flags (their memory, wake-up descriptors and the C handler's tables) and
the system-call primitives the facade builds on. Every call that blocks runs
with the GIL released, takes a timeout in seconds measured by the caller on the
monotonic clock, and returns to Python on EINTR so Python's own signal handlers
(KeyboardInterrupt, fastreap.Stopped) run before it goes on.
"""
cimport cython
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from cpython.mem cimport PyMem_RawCalloc, PyMem_RawFree
from cpython.object cimport PyObject_GenericSetAttr, PyTypeObject
from cpython.pycapsule cimport PyCapsule_New
from cpython.pythread cimport (
    NOWAIT_LOCK,
    PY_LOCK_ACQUIRED,
    PY_LOCK_INTR,
    PyLockStatus,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_get_thread_ident,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.errno cimport EACCES, ECHILD, EINTR, EINVAL, ENOSPC, ENOSYS, EPERM, errno
from libc.stdint cimport int64_t, uintptr_t
from libc.math cimport isinf, isnan

from fastreap._csrc.handler cimport *
from fastreap._csrc.reaper cimport *

import os as _os
import time as _time

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long off)
    int munmap(void *addr, size_t length)
    const int PROT_READ
    const int PROT_WRITE
    const int MAP_SHARED
    void *MAP_FAILED

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    int ftruncate(int fd, long length)
    int getpid()

cdef extern from "<sys/wait.h>" nogil:
    const int CLD_EXITED
    const int CLD_KILLED
    const int CLD_DUMPED

cdef extern from "Python.h":
    int PyErr_SetInterruptEx(int signum) noexcept nogil
    object PyType_GenericAlloc(PyTypeObject *t, Py_ssize_t nitems)

cdef extern from "compat.h":
    const int FASTREAP_LINUX
    const int FASTREAP_APPLE

NSIG = FASTREAP_NSIG
MAX_BOUND = FASTREAP_MAX_BOUND
IS_LINUX = bool(FASTREAP_LINUX)
IS_APPLE = bool(FASTREAP_APPLE)
CLD_EXITED_ = CLD_EXITED
CLD_KILLED_ = CLD_KILLED
CLD_DUMPED_ = CLD_DUMPED

fr_set_interrupt_fn(PyErr_SetInterruptEx)
if fr_fork_hook_install() < 0:  # the C at-fork child handler: one store per fork
    raise OSError(errno, f"pthread_atfork: {_os.strerror(errno)}")


def fork_generation():
    """0 in the process that imported fastreap, one more in each fork child
    (bumped by the C at-fork handler; see fastreap/_fork.py)."""
    return fr_fork_generation()


cdef inline int _raise_errno() except -1:
    PyErr_SetFromErrno(OSError)
    return -1


cpdef double check_timeout(object timeout, str name="timeout") except -2.0:
    """Validate a timeout in seconds; return it, or -1.0 for None or infinity
    (no limit; so is an int too large for a float)."""
    cdef double t
    if timeout is None:
        return -1.0
    if isinstance(timeout, (bool, str, bytes, bytearray)) or not hasattr(timeout, "__float__"):
        # float() would parse "1" and turn True into 1 second: not a timeout.
        raise TypeError(f"{name} must be a number of seconds or None, not {type(timeout).__name__}")
    try:
        t = float(timeout)  # also Decimal, Fraction, numpy scalars
    except OverflowError:
        t = float("inf") if timeout > 0 else float("-inf")
    except TypeError as e:  # a broken __float__
        raise TypeError(f"{name} must be a number of seconds or None, not {timeout!r} ({e})") from None
    except ValueError as e:  # Decimal("sNaN")
        raise ValueError(f"{name} must be a number of seconds or None, not {timeout!r} ({e})") from None
    if isnan(t):
        raise ValueError(f"{name} must not be NaN")
    if t < 0:
        raise ValueError(f"{name} must be >= 0, got {timeout!r}")
    if isinf(t):
        return -1.0
    return t


cdef bint _after_eintr() except -1:
    """A signal interrupted a wait: run Python's handlers (they may raise)."""
    PyErr_CheckSignals()
    return True


cdef unsigned long _main_ident = 0
cdef long _main_gen = -1


cdef int _guard_signals(fr_sigmask *old) except -1:
    """Before a blocking wait in the main thread (the one that runs Python's
    signal handlers): run the handlers of any signal that came since the
    last bytecode, block every asynchronous signal, run those of any that came
    in between (they may raise: the mask is put back). 1
    when the wait must then take *old as its mask (reap.c's signal-safe waits:
    a signal from here on interrupts it), 0 in other threads and off Linux."""
    global _main_ident, _main_gen
    cdef long g = fr_fork_generation()
    if g != _main_gen:  # a fork child's main thread is the one that forked
        import threading  # here, not at import: importing fastreap loads only the core
        _main_ident = threading.main_thread().ident
        _main_gen = g
    if PyThread_get_thread_ident() != _main_ident:
        return 0  # (a wait that cannot block needs no guard: callers skip it)
    # Handlers run here, before the block, with the thread's own mask: a
    # handler that starts a thread or a child (both inherit the mask), or
    # waits, must not do it with every signal blocked. Twice: a signal that
    # lands while the first call runs a handler is handled by the second.
    # After the block, only one that landed in the few instructions since is
    # handled with it in place (Python offers no way to see that a signal is
    # pending without running its handler).
    PyErr_CheckSignals()
    PyErr_CheckSignals()
    if not fr_sig_block_all(old):
        return 0
    try:
        PyErr_CheckSignals()
    except BaseException:
        fr_sig_restore(old)
        raise
    return 1


cdef int _wait_readable(int fd, int fd2, double timeout) except -2:
    """fr_wait_readable with the GIL released, guarded in the main thread
    (see _guard_signals): 1, 2, 0 on timeout, -1 with errno."""
    cdef fr_sigmask old
    cdef int r
    cdef int guarded = timeout != 0 and _guard_signals(&old)
    cdef fr_sigmask *mask = &old if guarded else NULL
    with nogil:
        r = fr_wait_readable(fd, fd2, timeout, mask)
    if guarded:
        fr_sig_restore(&old)  # keeps errno; a signal pending since is handled here
    return r


# ---------------------------------------------------------------- stop flags

cdef object _INTERNAL = object()  # the key of _internal: only this module makes those flags


@cython.embedsignature(False)
cdef class StopFlag:
    """StopFlag(*, shared=False)
--

A stop flag: set by fastreap's C signal handler, by set(), or (when
shared) by any process that shares it. Checking it is one atomic load."""

    cdef fr_flag _own
    cdef fr_flag *fp
    cdef fr_flagmem *_private
    cdef bint _shared
    cdef bint _default
    cdef int _memfd
    cdef object __weakref__

    def __cinit__(self, *, shared=False, _internal=None):
        # _internal is (_INTERNAL, how): the default flag, or one rebuilt from
        # a pickle. Hidden from the signature (the docstring's first line).
        if _internal is not None:
            if type(_internal) is not tuple or len(_internal) != 2 or _internal[0] is not _INTERNAL:
                raise TypeError("StopFlag() takes one keyword argument, shared")
            _internal = _internal[1]
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be a bool, not {type(shared).__name__}")
        self._own.rfd = -1
        self._own.wfd = -1
        self._own.stamp = 0
        self._memfd = -1
        self.fp = &self._own
        self._shared = shared
        if _internal == "default":
            self._default = True
            self.fp = &fr_default_flag
            return
        if isinstance(_internal, tuple):  # rebuilt from a pickle (spawn/forkserver)
            memfd, rfd, wfd = _internal
            self._attach_shared(memfd, rfd, wfd)
            return
        if shared:
            self._create_shared()
        else:
            self._private = <fr_flagmem *>PyMem_RawCalloc(1, sizeof(fr_flagmem))
            if self._private == NULL:
                raise MemoryError()
            self._own.mem = self._private

    def __init__(self, *, shared=False, _internal=None):
        pass  # everything is done in __cinit__

    cdef _create_shared(self):
        cdef int rfd = -1, wfd = -1
        memfd = _shared_memfd()
        try:
            if ftruncate(memfd, sizeof(fr_flagmem)) < 0:
                _raise_errno()
            # Sealed so that no holder can shrink it under the others (SIGBUS);
            # the tempfile fallback cannot be sealed.
            if fr_memfd_seal(memfd) < 0 and errno != EINVAL:
                _raise_errno()
            if fr_wakefd_open(&rfd, &wfd) < 0:
                _raise_errno()
        except BaseException:
            _os.close(memfd)
            raise
        self._attach_shared(memfd, rfd, wfd)

    cdef _attach_shared(self, int memfd, int rfd, int wfd):
        cdef void *p = mmap(NULL, sizeof(fr_flagmem), PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0)
        if p == MAP_FAILED:
            for fd in {memfd, rfd, wfd}:
                _os.close(fd)
            _raise_errno()
        self._shared = True
        self._memfd = memfd
        fr_flag_mark_shared(&self._own)  # its descriptors are every sharer's, across fork too
        self._own.mem = <fr_flagmem *>p
        self._own.rfd = rfd
        self._own.wfd = wfd

    def __dealloc__(self):
        if self._default:
            return
        if self._shared:
            if self._own.mem != NULL:
                munmap(self._own.mem, sizeof(fr_flagmem))
            for fd in {self._memfd, self._own.rfd, self._own.wfd}:
                if fd >= 0:
                    close(fd)
        else:
            if self._own.rfd >= 0:
                close(self._own.rfd)
            if self._own.wfd >= 0 and self._own.wfd != self._own.rfd:
                close(self._own.wfd)
            PyMem_RawFree(self._private)

    cdef int _ensure_fd(self) except -1:
        """Give it descriptors (once), and in a fork child make inherited
        ones its own (on the same numbers: fileno() stays valid)."""
        cdef int rfd, wfd
        if self.fp.rfd >= 0:
            fr_flag_refresh(self.fp)
            return 0
        if fr_wakefd_open(&rfd, &wfd) < 0:
            _raise_errno()
        fr_flag_publish_fds(self.fp, rfd, wfd)
        return 0

    cdef fr_flag *ptr(self):
        return self.fp

    def is_set(self):
        """True once the flag is set (one atomic load)."""
        if fr_flag_is_stale(self.fp):  # a fork child's first look: fileno() becomes its own
            fr_flag_refresh(self.fp)
        return fr_flag_is_set(self.fp) != 0

    def __bool__(self):
        if fr_flag_is_stale(self.fp):
            fr_flag_refresh(self.fp)
        return fr_flag_is_set(self.fp) != 0

    def set(self):
        """Set the flag by hand and wake its waiters (in every sharing process)."""
        fr_flag_set(self.fp, 0, 0)

    def clear(self):
        """Clear the flag; its descriptor stops being readable."""
        fr_flag_clear(self.fp)

    def wait(self, timeout=None):
        """Block with the GIL released until the flag is set or timeout seconds
        pass; return whether it is set. Ctrl-C and fastreap.Stopped interrupt it."""
        cdef double t = check_timeout(timeout)
        cdef double remaining = t
        cdef int r, rfd
        if fr_flag_is_set(self.fp):
            return True
        self._ensure_fd()
        rfd = self.fp.rfd
        deadline = _time.monotonic() + t
        while True:
            if fr_flag_is_set(self.fp):
                return True
            if t >= 0:
                remaining = deadline - _time.monotonic()
                if remaining <= 0:
                    return False
            r = _wait_readable(rfd, -1, remaining)
            if r < 0:
                if errno == EINTR:
                    _after_eintr()
                    continue
                _raise_errno()
            if r == 1 and not fr_flag_is_set(self.fp):
                # Readable while clear: a racing clear(), or a poke from the
                # other side of a fork whose descriptor could not be replaced.
                fr_wakefd_drain(rfd)
                if fr_flag_is_set(self.fp):
                    fr_wakefd_poke(self.fp.wfd)

    def fileno(self):
        """A descriptor that is readable while the flag is set (for select,
        selectors and asyncio's add_reader)."""
        self._ensure_fd()
        return self.fp.rfd

    @property
    def signal(self):
        """The signal number that last set the flag, or None."""
        if not fr_flag_is_set(self.fp):  # first: signo means something only while set
            return None
        cdef int s = fr_flag_signo(self.fp)
        return s if s > 0 else None

    @property
    def sender_pid(self):
        """The pid that sent that signal (si_pid), or None."""
        if not fr_flag_is_set(self.fp):
            return None
        cdef int s = fr_flag_sender(self.fp)
        return s if s > 0 else None

    @property
    def shared(self):
        """Whether the flag lives in memory shared with other processes."""
        return bool(self._shared)

    @property
    def address(self):
        """Address of the 32-bit flag word (non-zero while set), for C, ctypes
        and Numba code that polls it; valid while this object lives."""
        return <uintptr_t>&self.fp.mem.state

    def __repr__(self):
        kind = "shared" if self._shared else ("default" if self._default else "private")
        return f"<fastreap.StopFlag {kind} {'set' if self.is_set() else 'clear'}>"

    def __reduce__(self):
        if not self._shared:
            raise TypeError(
                "a private StopFlag cannot be pickled; use StopFlag(shared=True) "
                "to share it with child processes"
            )
        from multiprocessing import context, reduction
        if context.get_spawning_popen() is None:
            raise RuntimeError(
                "a shared StopFlag is passed to child processes only as a Process "
                "argument (spawn, forkserver) or by fork inheritance"
            )
        fds = (reduction.DupFd(self._memfd), reduction.DupFd(self._own.rfd),
               reduction.DupFd(self._own.wfd) if self._own.wfd != self._own.rfd else None)
        return (_rebuild_shared_flag, fds)


def _shared_memfd():
    """A close-on-exec descriptor for a shared flag's memory: a sealable
    memfd, or an unlinked temporary file where there is no memfd_create
    (macOS) or the kernel refuses it (before 3.17, seccomp, gVisor)."""
    if hasattr(_os, "memfd_create"):
        try:
            return _os.memfd_create("fastreap-flag", _os.MFD_CLOEXEC | _os.MFD_ALLOW_SEALING)
        except OSError as e:
            if e.errno not in (ENOSYS, EPERM, EACCES, EINVAL):
                raise  # EMFILE, ENOMEM: the fallback would fail the same way
    import tempfile
    with tempfile.TemporaryFile() as tf:
        fd = _os.dup(tf.fileno())  # os.dup makes it non-inheritable
    return fd


def _rebuild_shared_flag(memfd, rfd, wfd):
    m = memfd.detach()
    r = rfd.detach()
    w = wfd.detach() if wfd is not None else r
    # Received from the parent (spawn passes them inherited, forkserver over
    # a socket without MSG_CMSG_CLOEXEC): keep them out of exec'd grandchildren.
    for fd in {m, r, w}:
        _os.set_inheritable(fd, False)
    return StopFlag(shared=True, _internal=(_INTERNAL, (m, r, w)))


default_flag = StopFlag(_internal=(_INTERNAL, "default"))


def stop_requested():
    """True once the process default stop flag is set (one atomic load)."""
    if fr_flag_is_stale(&fr_default_flag):
        fr_flag_refresh(&fr_default_flag)
    return fr_flag_is_set(&fr_default_flag) != 0


_stop_flag_capsule = PyCapsule_New(<void *>&fr_default_flag.mem.state, b"fastreap._core._stop_flag", NULL)
# PyCapsule_Import("fastreap._core._stop_flag") looks the capsule up by the
# attribute path its name spells, so it must also live under that name.
_stop_flag = _stop_flag_capsule


# ------------------------------------------------------ handler installation

def install(int signo, bint restart, bint chain):
    """Install the C handler for signo (saving the old disposition once)."""
    if fr_install(signo, restart, chain) < 0:
        _raise_errno()


def save(int signo):
    if fr_save(signo) < 0:
        _raise_errno()


def restore(int signo, put_back=None):
    """Forget the saved disposition of signo and put it back: when put_back
    is None, only if fastreap's handler is still the installed one (a newer
    handler, from signal.signal or a C library, stays)."""
    if fr_restore(signo, -1 if put_back is None else (1 if put_back else 0)) < 0:
        _raise_errno()


def handler_installed(int signo):
    """Whether fastreap's handler is installed for signo right now (asks the
    kernel, unlike is_installed, which reads fastreap's books)."""
    cdef int r = fr_handler_installed(signo)
    if r < 0:
        _raise_errno()
    return r != 0


def is_installed(int signo):
    return fr_is_installed(signo) != 0


def set_exit(int signo, bint on):
    fr_set_exit(signo, on)


def kick_setup(int signo):
    """Make the timer that kicks the main thread (the caller) out of a blocking
    call when signo arrives in exit mode (handler.c). False where there is
    none (off Linux, or timer_create refused): Stopped then waits for the
    main thread's next bytecode, as a Python handler would."""
    return fr_kick_setup(signo) == 0


def kick_disarm():
    """Stop every pending kick (Python has run the handler)."""
    fr_kick_disarm_all()


def kick_enable(bint on):
    """Let the handler arm kicks in this process, or not (and stop them)."""
    fr_kick_enable(on)


def kicks_armed():
    """How many times the handler has armed a kick (for the tests)."""
    return fr_kicks_armed_count()


def bind(int signo, StopFlag flag):
    flag._ensure_fd()
    if fr_bind(signo, flag.ptr()) < 0:
        if errno == ENOSPC:
            raise OSError(ENOSPC, f"at most {FASTREAP_MAX_BOUND} stop flags can be bound to signal {signo}")
        _raise_errno()


def unbind(int signo, StopFlag flag):
    fr_unbind(signo, flag.ptr())


def quiesce():
    with nogil:
        fr_quiesce()


def signal_count(int signo):
    """How many times fastreap's handler has run for signo in this process."""
    return fr_count(signo)


def last_signal():
    """(signal number, sender pid) of the last signal the handler saw."""
    return fr_last_signo(), fr_last_sender()


def global_wake_fd():
    """The descriptor every handled signal pokes (opened on first use; in a
    fork child, made the child's own on first use)."""
    if fr_global_wake_open() < 0:
        _raise_errno()
    return fr_global_wake_rfd()


def chld_drain():
    """SIGCHLD senders recorded since the last call, and whether some were lost."""
    cdef int buf[512]
    cdef int lost = 0, anylost = 0, n
    out = []
    while True:
        n = fr_chld_drain(buf, 512, &lost)
        anylost |= lost
        for i in range(n):
            out.append(buf[i])
        if n < 512:
            break
    return out, bool(anylost)


# ------------------------------------------------------------ reaping, waits

def have_pidfd():
    return fr_have_pidfd() != 0


def poller_open():
    cdef int fd = fr_poller_open()
    if fd < 0:
        _raise_errno()
    return fd


def poller_add_fd(int pfd, int fd, int64_t token):
    if fr_poller_add_fd(pfd, fd, token) < 0:
        _raise_errno()


def poller_del_fd(int pfd, int fd):
    if fr_poller_del_fd(pfd, fd) < 0:
        _raise_errno()


def poller_close_fd(int pfd, int fd):
    """Deregister fd from the poller and close it."""
    if fr_poller_close_fd(pfd, fd) < 0:
        _raise_errno()


def timer_open():
    """A one-shot monotonic timer descriptor (Linux timerfd), readable once
    it fires. OSError where there is none (ENOSYS off Linux; ENOSYS or EPERM
    under seccomp or gVisor, EMFILE out of descriptors)."""
    cdef int fd = fr_timer_open()
    if fd < 0:
        _raise_errno()  # OSError with the errno (ENOSYS: no timerfd here)
    return fd


def timer_arm(int fd, double seconds):
    """Fire once in `seconds` (<= 0 disarms)."""
    if fr_timer_arm(fd, seconds) < 0:
        _raise_errno()


def timer_drain(int fd):
    if fr_timer_drain(fd) < 0:
        _raise_errno()


def poller_add_pid(int pfd, int pid, int64_t token):
    if fr_poller_add_pid(pfd, pid, token) < 0:
        _raise_errno()


def poller_del_pid(int pfd, int pid):
    fr_poller_del_pid(pfd, pid)


def poller_wait(int pfd, double timeout):
    """Wait (GIL released) up to timeout seconds (< 0 forever); return the
    ready tokens. After a signal, once Python's handlers have run (they may
    raise), the tokens ready by then, perhaps none: a SIGCHLD that
    interrupted the wait has made the wake-up descriptor ready, and its
    token comes back at once instead of after another round trip."""
    cdef int64_t tokens[64]
    cdef int n = _wait_tokens(pfd, timeout, tokens, None, None)
    return [tokens[i] for i in range(n)]


cdef int _wait_tokens(int pfd, double timeout, int64_t *tokens, object w, object nested) except -1:
    """poller_wait's wait into tokens (64 of them): how many are ready.
    w: the watcher whose leader waits (lead), nested: its w.nested before
    (both None otherwise). A handler that the guard ran may have waited on w
    itself (its news taken): the wait then only looks (timeout 0)."""
    cdef int n
    cdef fr_sigmask old
    cdef int guarded = timeout != 0 and _guard_signals(&old)
    cdef fr_sigmask *mask = &old if guarded else NULL
    if w is not None and w.nested != nested:  # (also unguarded: the guard may have run handlers)
        timeout = 0.0
    with nogil:
        n = fr_poller_wait(pfd, timeout, tokens, 64, mask)
    if guarded:
        fr_sig_restore(&old)  # keeps errno
    if n < 0:
        if errno != EINTR:
            _raise_errno()
        _after_eintr()
        n = fr_poller_wait(pfd, 0.0, tokens, 64, NULL)  # never blocks
        if n < 0:
            if errno != EINTR:
                _raise_errno()
            _after_eintr()
            n = 0
    return n


def wait_readable(int fd, int fd2, double timeout):
    """poll() fd (and fd2 if >= 0) with the GIL released: 1, 2, 0 on timeout,
    -1 after a signal (Python's handlers have run)."""
    cdef int r = _wait_readable(fd, fd2, timeout)
    if r < 0:
        if errno == EINTR:
            _after_eintr()
            return -1
        _raise_errno()
    return r


def pidfd_open(int pid, int floor=0):
    """A pidfd for pid, moved to a number >= floor; OSError on failure."""
    if pid <= 0:
        raise ValueError(f"pid must be > 0, got {pid}")
    cdef int fd = fr_pidfd_open(pid, floor)
    if fd < 0:
        _raise_errno()
    return fd


def pidfd_send_signal(int pidfd, int sig):
    if fr_pidfd_send_signal(pidfd, sig) < 0:
        _raise_errno()


def peek(int pid, int pidfd=-1):
    """None while pid runs, else (si_code, si_status); the child stays
    waitable. Through pidfd when one is given (and the kernel has P_PIDFD):
    that names the very process, never a reused pid. ChildProcessError if
    it is not (or no longer) a child of this process."""
    cdef int code = 0, status = 0, r
    if pid <= 0:
        raise ValueError(f"pid must be > 0, got {pid}")
    r = fr_peek(pidfd, pid, &code, &status)  # retries EINTR itself (WNOHANG)
    if r < 0:
        _raise_errno()
    if r == 0:
        return None
    return (code, status)


def peek_any():
    """The pid of some zombie child (not reaped), 0 if none, -1 if no children."""
    cdef int r = fr_peek_any()
    if r < 0:
        if errno == ECHILD:
            return -1
        _raise_errno()
    return r


cdef inline tuple _exit_tuple(fr_exit *e):
    return (e.pid, e.status, e.utime, e.stime, e.maxrss)


def reap_all():
    """Reap every exited child (waitpid(-1, WNOHANG) in a C loop, GIL released)."""
    cdef fr_exit buf[256]
    cdef int n
    out = []
    while True:
        with nogil:
            n = fr_reap_all(buf, 256)
        if n < 0:
            _raise_errno()
        for i in range(n):
            out.append(_exit_tuple(&buf[i]))
        if n < 256:
            return out


def set_subreaper(bint on):
    if fr_set_subreaper(on) < 0:
        if errno == ENOSYS:
            raise NotImplementedError("set_subreaper needs Linux (PR_SET_CHILD_SUBREAPER)")
        _raise_errno()


# ------------------------------------------------ batched hot path (pidfd)

cdef extern from "<sys/wait.h>" nogil:
    bint WIFSIGNALED(int status)
    int WTERMSIG(int status)
    int WEXITSTATUS(int status)
    bint WCOREDUMP(int status)


cdef object _status_type = None  # _status.ExitStatus, once registered (set_status_type)


def set_status_type(t):
    """Register ``_status.ExitStatus``: the reaping calls then return it,
    built here from the wait status (no decoding left to Python)."""
    global _status_type
    if not isinstance(t, type):
        raise TypeError(f"t must be a type, not {type(t).__name__}")
    _status_type = t


cdef object _status_of(fr_exit *e):
    """The ExitStatus of a reaped child (the registered type, built as its
    frozen dataclass __init__ would, without the per-field __setattr__
    detour), or the decoded tuple (pid, returncode, core_dumped, utime,
    stime, maxrss) before a type is registered."""
    cdef int rc
    cdef bint core = False
    if WIFSIGNALED(e.status):
        rc = -WTERMSIG(e.status)
        core = WCOREDUMP(e.status) != 0
    else:
        rc = WEXITSTATUS(e.status)
    if _status_type is None:
        return (e.pid, rc, core, e.utime, e.stime, e.maxrss)
    # Allocated as object.__new__ would (tp_alloc: its instance values
    # laid out), the fields stored one by one (CPython >= 3.11 keeps them in
    # the object itself): no dict built and handed over, no call.
    es = PyType_GenericAlloc(<PyTypeObject *>_status_type, 0)
    PyObject_GenericSetAttr(es, "pid", e.pid)
    PyObject_GenericSetAttr(es, "returncode", rc)
    PyObject_GenericSetAttr(es, "exit_code", None if rc < 0 else rc)
    PyObject_GenericSetAttr(es, "signal", -rc if rc < 0 else None)
    PyObject_GenericSetAttr(es, "core_dumped", core)
    PyObject_GenericSetAttr(es, "user_time", e.utime)
    PyObject_GenericSetAttr(es, "system_time", e.stime)
    PyObject_GenericSetAttr(es, "max_rss", e.maxrss)
    return es


def reap_one(int pid, int pidfd=-1, bint close_fd=False):
    """The single-child hot path of reap_batch: reap it (WNOHANG, with
    rusage; through its pidfd when >= 0, else wait4(pid)) and return its
    ExitStatus (see set_status_type), False if it has not exited, None if it
    is not (or no longer) our child (ECHILD). With close_fd the pidfd is
    closed once it is reaped or gone (a oneshot registration whose event
    was reported: no deregistration needed); on any other error it is left
    open and OSError raised."""
    cdef fr_exit e
    cdef int r
    if pid <= 0:
        raise ValueError(f"pid must be > 0, got {pid}")
    r = fr_reap(pidfd, pid, &e)  # WNOHANG: no need to release the GIL
    if r < 0:
        if errno != ECHILD:
            _raise_errno()
        if close_fd and pidfd >= 0:
            close(pidfd)
        return None
    if r == 0:
        return False
    if close_fd and pidfd >= 0:
        close(pidfd)
    return _status_of(&e)


cdef int *_int_array(list items, Py_ssize_t n) except NULL:
    cdef int *a = <int *>PyMem_RawCalloc(n if n > 0 else 1, sizeof(int))
    cdef Py_ssize_t i
    if a == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            a[i] = items[i]
    except BaseException:
        PyMem_RawFree(a)
        raise
    return a


cdef int *_pid_array(list pids, Py_ssize_t n) except NULL:
    """pids as a C array (PyMem_RawFree it), each checked > 0."""
    cdef int *a = _int_array(pids, n)
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] <= 0:
            PyMem_RawFree(a)
            raise ValueError(f"pid must be > 0, got {pids[i]}")
    return a


def reap_batch(list pids, list pidfds, bint close_fds=False):
    """Reap each child (WNOHANG, with rusage; through its pidfd when >= 0,
    else wait4(pid)) in one C loop with the GIL released. One entry per
    child: its ExitStatus (see set_status_type), False if it has not
    exited, None if it is not (or no longer) our child (ECHILD). With
    close_fds, the pidfd of each one reaped or gone is closed (registered
    oneshot and reported: no deregistration needed)."""
    cdef Py_ssize_t n = len(pids), i
    cdef int *ids = NULL
    cdef int *fds = NULL
    cdef int *rs = NULL
    cdef fr_exit *es = NULL
    cdef int r
    if len(pidfds) != n:
        raise ValueError("pids and pidfds must have the same length")
    if n == 0:
        return []
    try:
        ids = _pid_array(pids, n)
        fds = _int_array(pidfds, n)
        rs = <int *>PyMem_RawCalloc(n, sizeof(int))
        es = <fr_exit *>PyMem_RawCalloc(n, sizeof(fr_exit))
        if rs == NULL or es == NULL:
            raise MemoryError()
        with nogil:
            fr_reap_batch(ids, fds, <int>n, close_fds, es, rs)
        out = []
        err = 0
        for i in range(n):
            r = rs[i]
            if r == 1:
                out.append(_status_of(&es[i]))
            elif r == 0:
                out.append(False)
            elif r == -ECHILD:
                out.append(None)
            else:  # left open and registered: the caller keeps it
                out.append(False)
                err = -r
        if err and not close_fds:
            raise OSError(err, _os.strerror(err))
        return out
    finally:
        PyMem_RawFree(ids)
        PyMem_RawFree(fds)
        PyMem_RawFree(rs)
        PyMem_RawFree(es)


# ------------------------------------------ the watcher's exit-to-reaped path

# These two are Watcher code (fastreap/_watcher.py), compiled: they read and
# write its attributes and those of its Child objects, and must stay in step
# with Watcher.finish/_finished and wait_until. Between the poller's wake-up
# and the reap no bytecode runs: each Python step there was latency.


cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, long long us, int intr_flag) nogil


@cython.final
@cython.auto_pickle(False)
cdef class Lock:
    """The watcher's lock: a ``threading.Lock`` (``with``, ``acquire(blocking=True)``,
    ``release()``, ``locked()``; usable by ``threading.Condition``; a blocking
    acquire waits with the GIL released and is interrupted by a signal
    handler that raises) whose take after the leader's wake-up (``lead``)
    is one C call: ``threading.Lock.acquire(False)`` parses its arguments,
    which cost that path about as much as the reap. Unlike a
    ``threading.Lock``, a blocking take by the thread that holds it raises
    RuntimeError at once: only code run inside fastreap's own in that thread
    (a done callback, a signal handler) can try it, and fastreap never
    releases it from another thread, so it would wait for ever."""

    cdef PyThread_type_lock _lk
    cdef bint _held
    cdef unsigned long _owner  # the thread that holds it (while _held)

    def __cinit__(self):
        self._lk = PyThread_allocate_lock()
        if self._lk == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self._lk != NULL:
            if self._held:
                PyThread_release_lock(self._lk)
            PyThread_free_lock(self._lk)

    cdef inline bint _try(self) noexcept:
        if PyThread_acquire_lock(self._lk, NOWAIT_LOCK):
            self._held = True
            self._owner = PyThread_get_thread_ident()
            return True
        return False

    cdef int _release(self) except -1:
        if not self._held:
            raise RuntimeError("release unlocked lock")
        self._held = False
        PyThread_release_lock(self._lk)
        return 0

    def acquire(self, bint blocking=True):
        """Take it (without blocking: whether it was free)."""
        cdef PyLockStatus r
        if self._try():
            return True
        if not blocking:
            return False
        if self._held and self._owner == PyThread_get_thread_ident():
            # Only code run inside fastreap's own in this thread gets here (a
            # done callback, a signal handler): waiting would never end.
            raise RuntimeError(
                "fastreap was called from code that runs inside fastreap in the same thread (a done "
                "callback, or a signal handler that interrupted fastreap): it cannot wait there, it would "
                "wait for itself. Hand the work off (a flag, a queue, loop.call_soon_threadsafe) "
                "and do it outside"
            )
        while True:
            with nogil:
                r = PyThread_acquire_lock_timed(self._lk, -1, 1)
            if r == PY_LOCK_ACQUIRED:
                self._held = True
                self._owner = PyThread_get_thread_ident()
                return True
            if r == PY_LOCK_INTR:
                PyErr_CheckSignals()  # a handler that raises ends the wait

    def release(self):
        self._release()

    def locked(self):
        return self._held

    def owned(self):
        """Held by the calling thread: fastreap's own code in this thread is
        under it (the caller is a done callback or a signal handler)."""
        return self._held and self._owner == PyThread_get_thread_ident()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, exc_type, exc, tb):
        self._release()

    def __repr__(self):
        return f"<fastreap._core.Lock {'locked' if self._held else 'unlocked'}>"


def reap_direct(w, c):
    """Reap one plain-pid child (``Owner.direct``: no lock, no peek,
    nothing to publish) whose poller token was reported, watcher lock held:
    through its pidfd (out of ``w.pidfd_of`` before it is closed; the GIL is
    kept: WNOHANG), and finish it as ``w.finish`` would (a direct pidfd
    child has no other registration to forget). True once handled; False,
    and nothing done, if it has no pidfd."""
    return _reap_direct(w, c)


cdef bint _reap_direct(w, c) except -1:
    cdef fr_exit e
    cdef int pid = c.pid
    cdef int fd, r, err
    cdef dict pidfd_of = w.pidfd_of
    cdef dict children = w.children
    fd = pidfd_of.pop(pid, -1)
    if fd < 0:
        return False
    pidfd = w.pidfd
    pidfd.count -= 1
    r = fr_reap(fd, pid, &e)
    if r < 0 and errno != ECHILD:
        err = errno
        pidfd.give_back(pid, fd)  # still open: keep watching
        raise OSError(err, _os.strerror(err))
    if r == 0:  # not exited after all (cannot happen after a pidfd event)
        pidfd.give_back(pid, fd)
        return True
    close(fd)  # reported oneshot: no deregistration (see reap_one)
    status = _status_of(&e) if r == 1 else None
    del children[pid]
    if status is None or w.followers or w.callbacks:
        w._finished(c, status)  # lost (reaped behind our back), or others to tell
    else:
        w.finished += 1
        c._status = status
    return True


def lead(w, int pfd, double timeout):
    """The leader's turn in Watcher.wait_until (its lock held on entry and
    on return, also when this raises): mark w leading, release the lock,
    wait in the poller with the GIL released up to timeout seconds (< 0
    forever; after a signal, as poller_wait, with Python's handlers run
    while the lock is free), take the lock back (a Ctrl-C meanwhile cannot
    leave it free: acquire_uninterruptibly), stop leading, close the pidfds
    deferred meanwhile, wake the followers. Then one reported token naming
    a plain pid child with a pidfd is reaped and finished here
    (reap_direct) and None returned; otherwise the ready tokens, for
    Watcher.process."""
    cdef int64_t tokens[64]
    cdef int n = 0
    cdef Lock lock = w.lock
    # Already leading: a signal handler run inside this thread's own lead
    # (wait_until lets no other thread in), which is suspended meanwhile.
    cdef bint outer = w.leading
    w.leading = True
    w.leader = PyThread_get_thread_ident()
    nested = w.nested
    lock._release()
    try:
        # In the main thread the wait's guard runs the handlers of signals
        # that came since the last bytecode (with the lock free); one that
        # waited on w makes it only look (see _wait_tokens).
        n = _wait_tokens(pfd, timeout, tokens, w, nested)
    finally:
        # Free (the usual case), the lock is taken without blocking, with
        # nothing to interrupt; else uninterruptibly.
        pending = None
        if not lock._try():
            from fastreap._watcher import acquire_uninterruptibly
            pending = acquire_uninterruptibly(lock)
        w.leading = outer
        pidfd = w.pidfd
        if pidfd.deferred:
            pidfd.close_deferred()
        if w.followers:
            w.cond.notify_all()
        if pending is not None:
            raise pending
    if n == 1:
        if tokens[0] > 0:
            c = (<dict>w.children).get(tokens[0])
            if c is not None and c._owner.direct and _reap_direct(w, c):
                return None
        elif tokens[0] == _WAKE:
            _chld_wake(w)
            return None
    return [tokens[i] for i in range(n)]


cdef enum:
    _RING_BATCH = 64  # senders taken per drain on the compiled path
cdef int64_t _WAKE = -1  # the global wake-up descriptor's poller token (fastreap._watcher.WAKE)


def chld_wake(w):
    """The global wake-up descriptor was reported (token WAKE; watcher lock
    held): drain it and the SIGCHLD ring, and act on the senders as
    ``SigchldBackend.on_ring`` does (compiled: see _chld_wake)."""
    _chld_wake(w)


cdef int _chld_wake(w) except -1:
    """SigchldBackend.on_ring for the usual case, with no bytecode between the
    wake-up and the waiter's return: every sender on the SIGCHLD path is a
    plain pid (``Owner.direct``), none was lost, the loss-check timer is
    there. Each is reaped after its start time is checked (fr_reap_checked:
    a pid that names another process now is never reaped) and finished as
    w.finish would (a plain pid on this path has no other registration to
    forget). Anything else goes to on_ring with the drained pids."""
    cdef int buf[_RING_BATCH]
    cdef int ids[_RING_BATCH]
    cdef long long ts[_RING_BATCH]
    cdef int rs[_RING_BATCH]
    cdef fr_exit es[_RING_BATCH]
    cdef int lost = 0, n, k = 0, i, j, pid
    cdef bint owed, now_check
    cdef dict starts, children
    fr_global_wake_drain()
    n = fr_chld_drain(buf, _RING_BATCH, &lost)
    sig = w.sigchld
    starts = sig.starts
    if not starts:
        if n == _RING_BATCH:
            chld_drain()  # nothing on this path: the rest is not ours either
        return 0
    if n == 0 and not lost:
        return 0  # another signal's wake-up
    if lost or n == _RING_BATCH or sig.tfd < 0:
        pids = [buf[i] for i in range(n)]
        if n == _RING_BATCH:
            more, lost2 = chld_drain()
            pids += more
            lost = lost or lost2
        sig.on_ring(pids, bool(lost))
        return 0
    children = w.children
    pidfd_of = w.pidfd_of
    kids = []
    for i in range(n):
        pid = buf[i]
        if pid not in starts:
            continue
        for j in range(k):
            if ids[j] == pid:
                break
        else:
            c = children[pid]
            if not c._owner.direct or pid in pidfd_of:
                sig.on_ring([buf[i] for i in range(n)], False)
                return 0
            t = starts[pid]
            kids.append(c)
            ids[k] = pid
            ts[k] = -1 if t is None else t
            k += 1
    # The books of on_ring: the check this SIGCHLD may have swallowed others
    # for is owed before the reap (an exception there cannot drop it).
    now = _time.monotonic()
    sig.last_chld = now
    exits = sig.exits_since_check + n
    sig.exits_since_check = exits
    now_check = exits >= (len(children) >> 5)
    owed = sig.check_owed
    if not owed:
        sig.check_owed = True
        sig.owed_since = now
    if now_check:
        sig.check_next = True
    try:
        if k > 4:
            with nogil:
                fr_reap_checked(ids, ts, k, es, rs)
        else:
            fr_reap_checked(ids, ts, k, es, rs)
        for i in range(k):
            pid = ids[i]
            if rs[i] == 1:
                status = _status_of(&es[i])
            elif rs[i] == FR_REAP_OTHER or rs[i] == -ECHILD:
                status = None  # reaped elsewhere (and maybe the pid reused): not ours to take
            else:
                continue  # running (or an error WNOHANG cannot give): keep watching
            c = kids[i]
            if c._done():
                continue  # finished meanwhile (by a done callback of one before it)
            if status is None:
                w.lose(c)  # what its owner found, or lost
                continue
            if children.get(pid) is c:  # (not a new child that a callback watched under the freed pid)
                del children[pid]
                starts.pop(pid, None)
            if w.followers or w.callbacks:
                w._finished(c, status)
            else:
                w.finished += 1
                c._status = status
    except BaseException:
        sig.arm_quiet(now)  # the check stays owed: the timer runs it
        raise
    if not starts:
        sig._settled()  # nothing left on this path that a lost SIGCHLD could hide
    elif not owed:
        sig.arm_quiet(now)
    return 0


def start_time(int pid):
    """The start time of pid (clock ticks since boot, /proc/<pid>/stat field
    22), None if there is no such process; OSError if it cannot be read
    (ENOSYS without /proc)."""
    cdef long long t = 0
    cdef int r
    if pid <= 0:
        raise ValueError(f"pid must be > 0, got {pid}")
    with nogil:
        r = fr_start_time(pid, &t)
    if r < 0:
        _raise_errno()
    return t if r == 1 else None


def scan_exited(list pids):
    """The pids (a sublist, in order) that have exited or are not (or no
    longer) our children: a WNOWAIT waitid for each, in one C loop with the
    GIL released; nothing is reaped. The SIGCHLD path's sweep of every child:
    only what it returns needs a closer look (try_reap)."""
    cdef Py_ssize_t n = len(pids), i
    cdef int *ids = NULL
    cdef int *idx = NULL
    cdef int k
    if n == 0:
        return []
    try:
        ids = _pid_array(pids, n)
        idx = <int *>PyMem_RawCalloc(n, sizeof(int))
        if idx == NULL:
            raise MemoryError()
        with nogil:
            k = fr_scan_exited(ids, <int>n, idx)
        return [pids[idx[i]] for i in range(k)]
    finally:
        PyMem_RawFree(ids)
        PyMem_RawFree(idx)


def reap_checked(list pids, list starts):
    """The SIGCHLD path's reap, in one C loop with the GIL released: for
    each pid, unless its recorded start time is None, check that the pid
    still names the process that started then (/proc; an unreadable one
    proves nothing), then reap it (wait4 WNOHANG, with rusage). One entry
    per pid: its ExitStatus (see set_status_type); False if it has not
    exited; None if it is not ours to take: the pid names another process
    now, or is not (or no longer) our child (ECHILD)."""
    cdef Py_ssize_t n = len(pids), i
    cdef int *ids = NULL
    cdef long long *ts = NULL
    cdef int *rs = NULL
    cdef fr_exit *es = NULL
    cdef int r
    if len(starts) != n:
        raise ValueError("pids and starts must have the same length")
    if n == 0:
        return []
    try:
        ids = _pid_array(pids, n)
        ts = <long long *>PyMem_RawCalloc(n, sizeof(long long))
        rs = <int *>PyMem_RawCalloc(n, sizeof(int))
        es = <fr_exit *>PyMem_RawCalloc(n, sizeof(fr_exit))
        if ts == NULL or rs == NULL or es == NULL:
            raise MemoryError()
        for i in range(n):
            t = starts[i]
            ts[i] = -1 if t is None else t
        with nogil:
            fr_reap_checked(ids, ts, <int>n, es, rs)
        out = []
        for i in range(n):
            r = rs[i]
            if r == 1:
                out.append(_status_of(&es[i]))
            elif r == FR_REAP_OTHER or r == -ECHILD:
                out.append(None)
            else:  # 0: running; another error (cannot happen with WNOHANG): keep watching
                out.append(False)
        return out
    finally:
        PyMem_RawFree(ids)
        PyMem_RawFree(ts)
        PyMem_RawFree(rs)
        PyMem_RawFree(es)


def watch_pidfd(int pfd, int pid, int floor, int64_t token):
    """Register pid for exit notice in one C call: pidfd_open (moved to >=
    floor), a WNOWAIT peek through it (is it our child, has it exited?),
    and a oneshot registration under token (see poller_rearm). Returns
    (pidfd, peeked): peeked None while it runs, else (si_code, si_status).
    ChildProcessError (and nothing left open) if it is not our child;
    OSError from pidfd_open as is (EMFILE/ENFILE: over the limit; ESRCH: gone)."""
    cdef int fd, code = 0, status = 0
    if pid <= 0:
        raise ValueError(f"pid must be > 0, got {pid}")
    fd = fr_watch_pidfd(pfd, pid, floor, token, &code, &status)
    if fd < 0:
        _raise_errno()
    return fd, (None if code == 0 else (code, status))


def poller_rearm(int pfd, int fd, int64_t token):
    """Report a oneshot registration (watch_pidfd) once more."""
    if fr_poller_rearm(pfd, fd, token) < 0:
        _raise_errno()


def signal_batch(list pidfds, int sig):
    """pidfd_send_signal to each (one C loop): a list of 0 or errno values."""
    cdef Py_ssize_t n = len(pidfds), i
    cdef int *fds
    cdef int *rs
    if n == 0:
        return []
    fds = _int_array(pidfds, n)
    rs = <int *>PyMem_RawCalloc(n, sizeof(int))
    if rs == NULL:
        PyMem_RawFree(fds)
        raise MemoryError()
    try:
        with nogil:
            fr_signal_batch(fds, <int>n, sig, rs)
        return [-rs[i] for i in range(n)]
    finally:
        PyMem_RawFree(fds)
        PyMem_RawFree(rs)
