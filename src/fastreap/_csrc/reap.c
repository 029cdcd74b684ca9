/* reap.c: the portable part of the blocking and reaping calls (POSIX: wait4,
 * waitid, poll), over the one backend compiled for this platform
 * (poller_epoll.c on Linux, poller_kqueue.c on macOS; see backend.h).
 *
 * Everything here and in the backends is called with the GIL released
 * (Cython `with nogil`), so it touches no Python object. The EINTR rule: a
 * call that can block (poll, epoll_wait, kevent) returns -1 with errno EINTR,
 * so the caller can run Python's signal handlers and go on with the
 * remaining time; a call that cannot block (WNOHANG waits, reads of
 * non-blocking descriptors, registrations) retries EINTR itself, since going
 * back to Python would gain nothing.
 */
#define _GNU_SOURCE 1
#include "backend.h"
#include "compat.h"
#include "reaper.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int fr_poller_close_fd(int pfd, int fd) {
    /* Deregister first: if a forked child still holds a copy of fd, close()
     * alone would leave it registered (epoll tracks the open file). */
    int saved = 0;
    if (fr_poller_del_fd(pfd, fd) < 0) saved = errno;
    if (close(fd) < 0 && saved == 0) saved = errno;
    if (saved == 0 || saved == ENOENT || saved == EBADF) return 0;
    errno = saved;
    return -1;
}

int fr_timer_drain(int fd) {
    uint64_t n;
    ssize_t r;
    do {
        r = read(fd, &n, sizeof n);
    } while (r < 0 && errno == EINTR);
    return (r < 0 && errno != EAGAIN) ? -1 : 0;
}

/* ---- waiting and reaping ----------------------------------------------- */

/* Set once the kernel refused P_PIDFD: from then on only the pid is used. */
static int fr_no_p_pidfd;

static int use_pidfd(int pidfd) {
    return pidfd >= 0 && !__atomic_load_n(&fr_no_p_pidfd, __ATOMIC_RELAXED);
}

/* After a P_PIDFD waitid failed: was P_PIDFD itself refused? EINVAL from a
 * kernel without it (5.3 has pidfds, not P_PIDFD), ENOSYS or EPERM from a
 * seccomp filter or sandbox that filters waitid by its arguments (gVisor,
 * some container runtimes), ENOSYS from a backend without pidfds. Then fall
 * back to the pid, now and from then on. */
static int p_pidfd_refused(void) {
    if (errno != EINVAL && errno != ENOSYS && errno != EPERM) return 0;
    __atomic_store_n(&fr_no_p_pidfd, 1, __ATOMIC_RELAXED);
    return 1;
}

int fr_peek(int pidfd, int pid, int *code, int *status) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = -1;
    if (use_pidfd(pidfd)) {
        r = fr_backend_peek_pidfd(pidfd, &si);
        if (r < 0 && !p_pidfd_refused()) return -1;
    }
    while (r < 0 && waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        if (errno != EINTR) return -1;
    if (si.si_pid == 0) return 0;
    *code = si.si_code;
    *status = si.si_status;
    return 1;
}

int fr_peek_any(void) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    while (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
        if (errno != EINTR) return -1;
    return (int)si.si_pid;
}

int fr_scan_exited(const int *pids, int n, int *idx) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        siginfo_t si;
        si.si_pid = 0;
        int r;
        do {
            r = waitid(P_PID, (id_t)pids[i], &si, WEXITED | WNOHANG | WNOWAIT);
        } while (r < 0 && errno == EINTR);
        if (r < 0 || si.si_pid != 0) idx[k++] = i;
    }
    return k;
}

/* wait4(pid, WNOHANG) with rusage; pid -1: any child. */
static int reap_by_pid(int pid, fr_exit *out) {
    struct rusage ru;
    int status = 0;
    memset(&ru, 0, sizeof ru);
    pid_t r;
    do {
        r = wait4(pid, &status, WNOHANG, &ru);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
    if (r == 0) return 0;
    out->pid = (int)r;
    out->status = status;
    out->utime = fr_tv_seconds(ru.ru_utime);
    out->stime = fr_tv_seconds(ru.ru_stime);
    out->maxrss = ru.ru_maxrss;
    return 1;
}

int fr_reap(int pidfd, int pid, fr_exit *out) {
    if (use_pidfd(pidfd)) {
        int r = fr_backend_reap_pidfd(pidfd, out);
        if (r >= 0 || !p_pidfd_refused()) return r;
    }
    return reap_by_pid(pid, out);
}

int fr_reap_batch(const int *pids, const int *pidfds, int n, int close_fds, fr_exit *out,
                  int *res) {
    for (int i = 0; i < n; i++) {
        int r = fr_reap(pidfds[i], pids[i], &out[i]);
        res[i] = r < 0 ? -errno : r;
        /* Its exit was reported (oneshot, now disarmed) and it is gone: a
         * plain close, no EPOLL_CTL_DEL (see fr_poller_add_oneshot). */
        if (close_fds && pidfds[i] >= 0 && (r == 1 || (r < 0 && errno == ECHILD))) close(pidfds[i]);
    }
    return 0;
}

int fr_start_time(int pid, long long *out) {
#if FASTREAP_LINUX
    char path[48], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return (errno == ENOENT || errno == ESRCH) ? 0 : -1;
    ssize_t n;
    do {
        n = read(fd, buf, sizeof buf - 1);
    } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    if (n < 0) {
        errno = e;
        return (e == ENOENT || e == ESRCH) ? 0 : -1;
    }
    buf[n] = '\0';
    /* The name (field 2) may hold spaces and ')': fields count from the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL) goto bad;
    p++;
    for (int field = 2; field < 22; field++) { /* skip to the start of field 22 */
        while (*p == ' ') p++;
        if (field == 21) break;
        while (*p != ' ' && *p != '\0') p++;
        if (*p == '\0') goto bad;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (end == p || errno != 0) goto bad;
    *out = (long long)v;
    return 1;
bad:
    errno = EINVAL; /* unparsable: proves nothing */
    return -1;
#else
    (void)pid;
    (void)out;
    errno = ENOSYS;
    return -1;
#endif
}

int fr_reap_checked(const int *pids, const long long *starts, int n, fr_exit *out, int *res) {
    for (int i = 0; i < n; i++) {
        if (starts[i] >= 0) {
            long long now = -1;
            int r = fr_start_time(pids[i], &now);
            /* Only a proven mismatch says no (unreadable proves nothing). */
            if (r == 0 || (r == 1 && now != starts[i])) {
                res[i] = FR_REAP_OTHER;
                continue;
            }
        }
        int r = reap_by_pid(pids[i], &out[i]);
        res[i] = r < 0 ? -errno : r;
    }
    return 0;
}

int fr_watch_pidfd(int pfd, int pid, int floor, int64_t token, int *code, int *status) {
    int fd = fr_pidfd_open(pid, floor);
    if (fd < 0) return -1;
    int r = fr_peek(fd, pid, code, status);
    if (r == 0) *code = 0;
    if (r >= 0 && fr_poller_add_oneshot(pfd, fd, token) == 0) return fd;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

int fr_signal_batch(const int *pidfds, int n, int sig, int *res) {
    int sent = 0;
    for (int i = 0; i < n; i++) {
        int r = fr_pidfd_send_signal(pidfds[i], sig);
        res[i] = r < 0 ? -errno : 0;
        if (r == 0) sent++;
    }
    return sent;
}

int fr_reap_all(fr_exit *out, int max) {
    int n = 0;
    while (n < max) {
        int r = reap_by_pid(-1, &out[n]);
        if (r < 0) {
            if (errno == ECHILD) break;
            return n ? n : -1;
        }
        if (r == 0) break;
        n++;
    }
    return n;
}

/* Signal-safe waits. Python runs a signal's handler in the main thread at
 * its next bytecode, or when a call there fails with EINTR. A signal that
 * lands after the last such check and before a wait starts would be handled
 * only when the wait ends (Ctrl-C ignored for the whole timeout). So the main
 * thread runs the handlers of the signals that came so far, blocks every
 * asynchronous signal, runs those of any that came in between (the caller:
 * PyErr_CheckSignals, both times), and waits with its old mask, which the
 * kernel puts in place atomically with the wait (epoll_pwait, ppoll): a
 * signal from there on interrupts it with EINTR. */
int fr_sig_block_all(fr_sigmask *old) {
#if FASTREAP_LINUX
    sigset_t all;
    sigfillset(&all); /* glibc leaves out its own SIGCANCEL and SIGSETXID */
    /* Not the synchronous ones: a fault with its signal blocked makes the
     * kernel kill the process outright, past faulthandler and any handler. */
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGTRAP);
    sigdelset(&all, SIGSYS);
    /* sigprocmask: the calling thread's mask on Linux, and in libc since
     * glibc 2.2.5 (pthread_sigmask moved there only in 2.32). */
    return sigprocmask(SIG_BLOCK, &all, &old->set) == 0;
#else
    (void)old;
    return 0;
#endif
}

/* Keeps errno: the caller reads the wait's. */
void fr_sig_restore(const fr_sigmask *old) {
    int e = errno;
    (void)sigprocmask(SIG_SETMASK, &old->set, NULL);
    errno = e;
}

int fr_wait_readable(int fd, int fd2, double timeout, const fr_sigmask *mask) {
    struct pollfd p[2];
    p[0].fd = fd;
    p[0].events = POLLIN;
    p[0].revents = 0;
    p[1].fd = fd2;
    p[1].events = POLLIN;
    p[1].revents = 0;
    int r;
#if FASTREAP_LINUX
    struct timespec ts;
    if (mask)
        r = ppoll(p, fd2 >= 0 ? 2 : 1, fr_timeout_ts(timeout, &ts), &mask->set);
    else
#endif
        r = poll(p, fd2 >= 0 ? 2 : 1, fr_timeout_ms(timeout));
    if (r <= 0) return r;
    if (p[0].revents) return 1;
    return 2;
}
