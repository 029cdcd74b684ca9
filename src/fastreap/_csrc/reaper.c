/* reaper.c: the blocking and reaping system calls of fastreap.
 *
 * Everything here is called with the GIL released (Cython `with nogil`), so it
 * touches no Python object. Each call either finishes or returns -1 with errno
 * (EINTR included) so the caller can run Python's signal handlers and go on
 * with the remaining time: no call here retries EINTR by itself.
 */
#define _GNU_SOURCE 1
#include "reaper.h"
#include "compat.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#if FASTREAP_LINUX
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#elif FASTREAP_APPLE
#include <sys/event.h>
#endif

static int timeout_ms(double timeout) {
    if (timeout < 0) return -1;
    double ms = ceil(timeout * 1000.0);
    return ms > 2147483647.0 ? 2147483647 : (int)ms;
}

static double tv_seconds(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

/* ---- poller ------------------------------------------------------------ */

int fr_poller_open(void) {
#if FASTREAP_LINUX
    return epoll_create1(EPOLL_CLOEXEC);
#elif FASTREAP_APPLE
    int kq = kqueue();
    if (kq >= 0) fcntl(kq, F_SETFD, FD_CLOEXEC);
    return kq;
#else
    errno = ENOSYS;
    return -1;
#endif
}

int fr_poller_add_fd(int pfd, int fd, int64_t token) {
#if FASTREAP_LINUX
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = (uint64_t)token;
    return epoll_ctl(pfd, EPOLL_CTL_ADD, fd, &ev);
#elif FASTREAP_APPLE
    struct kevent ev;
    EV_SET(&ev, fd, EVFILT_READ, EV_ADD, 0, 0, (void *)(intptr_t)token);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int fr_poller_del_fd(int pfd, int fd) {
#if FASTREAP_LINUX
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    return epoll_ctl(pfd, EPOLL_CTL_DEL, fd, &ev);
#elif FASTREAP_APPLE
    struct kevent ev;
    EV_SET(&ev, fd, EVFILT_READ, EV_DELETE, 0, 0, NULL);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
#else
    errno = ENOSYS;
    return -1;
#endif
}

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

int fr_timer_open(void) {
#if FASTREAP_LINUX
    return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int fr_timer_arm(int fd, double seconds) {
#if FASTREAP_LINUX
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    if (seconds > 0) {
        if (seconds > 1e9) seconds = 1e9;
        time_t whole = (time_t)seconds; /* truncates: seconds > 0 */
        its.it_value.tv_sec = whole;
        its.it_value.tv_nsec = (long)((seconds - (double)whole) * 1e9);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    }
    return timerfd_settime(fd, 0, &its, NULL);
#else
    (void)fd;
    (void)seconds;
    errno = ENOSYS;
    return -1;
#endif
}

int fr_timer_drain(int fd) {
    uint64_t n;
    ssize_t r;
    do {
        r = read(fd, &n, sizeof n);
    } while (r < 0 && errno == EINTR);
    return (r < 0 && errno != EAGAIN) ? -1 : 0;
}

int fr_poller_add_pid(int pfd, int pid, int64_t token) {
#if FASTREAP_APPLE
    struct kevent ev;
    EV_SET(&ev, pid, EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, (void *)(intptr_t)token);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
#else
    (void)pfd;
    (void)pid;
    (void)token;
    errno = ENOSYS;
    return -1;
#endif
}

int fr_poller_del_pid(int pfd, int pid) {
#if FASTREAP_APPLE
    struct kevent ev;
    EV_SET(&ev, pid, EVFILT_PROC, EV_DELETE, NOTE_EXIT, 0, NULL);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
#else
    (void)pfd;
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

int fr_poller_wait(int pfd, double timeout, int64_t *tokens, int max) {
#if FASTREAP_LINUX
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(pfd, evs, max, timeout_ms(timeout));
    for (int i = 0; i < n; i++) tokens[i] = (int64_t)evs[i].data.u64;
    return n;
#elif FASTREAP_APPLE
    struct kevent evs[64];
    struct timespec ts, *tsp = NULL;
    if (max > 64) max = 64;
    if (timeout >= 0) {
        if (timeout > 1e9) timeout = 1e9; /* (time_t)1e300 is undefined; callers loop */
        ts.tv_sec = (time_t)timeout;
        ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
    int n = kevent(pfd, NULL, 0, evs, max, tsp);
    for (int i = 0; i < n; i++) tokens[i] = (int64_t)(intptr_t)evs[i].udata;
    return n;
#else
    (void)pfd;
    (void)timeout;
    (void)tokens;
    (void)max;
    errno = ENOSYS;
    return -1;
#endif
}

/* ---- pidfd ------------------------------------------------------------- */

int fr_pidfd_open(int pid, int floor) {
#if FASTREAP_LINUX
    int fd = (int)syscall(__NR_pidfd_open, pid, 0);
    if (fd < 0) return -1;
    if (floor > 0 && fd < floor) {
        int moved = fcntl(fd, F_DUPFD_CLOEXEC, floor);
        int e = errno;
        close(fd);
        if (moved < 0) {
            errno = e;
            return -1;
        }
        return moved;
    }
    /* pidfd_open sets O_CLOEXEC itself. */
    return fd;
#else
    (void)pid;
    (void)floor;
    errno = ENOSYS;
    return -1;
#endif
}

int fr_pidfd_send_signal(int pidfd, int sig) {
#if FASTREAP_LINUX
    return (int)syscall(__NR_pidfd_send_signal, pidfd, sig, NULL, 0);
#else
    (void)pidfd;
    (void)sig;
    errno = ENOSYS;
    return -1;
#endif
}

int fr_have_pidfd(void) {
#if FASTREAP_LINUX
    int fd = (int)syscall(__NR_pidfd_open, getpid(), 0);
    if (fd < 0) return 0;
    close(fd);
    return 1;
#else
    return 0;
#endif
}

/* ---- waiting and reaping ----------------------------------------------- */

/* Set once the kernel refused P_PIDFD (Linux 5.3 has pidfds, not P_PIDFD):
 * from then on only the pid is used. */
static int fr_no_p_pidfd;

static int use_pidfd(int pidfd) {
    return FASTREAP_LINUX && pidfd >= 0 && !__atomic_load_n(&fr_no_p_pidfd, __ATOMIC_RELAXED);
}

/* After a P_PIDFD waitid failed: fall back to the pid only for EINVAL. */
static int p_pidfd_refused(void) {
    if (errno != EINVAL) return 0;
    __atomic_store_n(&fr_no_p_pidfd, 1, __ATOMIC_RELAXED);
    return 1;
}

int fr_peek(int pidfd, int pid, int *code, int *status) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r = -1;
    if (use_pidfd(pidfd)) {
        r = waitid((idtype_t)FR_P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG | WNOWAIT);
        if (r < 0 && !p_pidfd_refused()) return -1;
    }
    if (r < 0 && waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0) return -1;
    if (si.si_pid == 0) return 0;
    *code = si.si_code;
    *status = si.si_status;
    return 1;
}

int fr_peek_any(void) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0) return -1;
    return (int)si.si_pid;
}

/* wait4(pid, WNOHANG) with rusage; pid -1: any child. */
static int reap_by_pid(int pid, fr_exit *out) {
    struct rusage ru;
    int status = 0;
    memset(&ru, 0, sizeof ru);
    pid_t r = wait4(pid, &status, WNOHANG, &ru);
    if (r < 0) return -1;
    if (r == 0) return 0;
    out->pid = (int)r;
    out->status = status;
    out->utime = tv_seconds(ru.ru_utime);
    out->stime = tv_seconds(ru.ru_stime);
    out->maxrss = ru.ru_maxrss;
    return 1;
}

#if FASTREAP_LINUX
/* The raw waitid has a rusage argument that glibc's wrapper hides. */
static int reap_by_pidfd(int pidfd, fr_exit *out) {
    siginfo_t si;
    struct rusage ru;
    memset(&si, 0, sizeof si);
    memset(&ru, 0, sizeof ru);
    if (syscall(SYS_waitid, FR_P_PIDFD, pidfd, &si, WEXITED | WNOHANG, &ru) < 0) return -1;
    if (si.si_pid == 0) return 0;
    out->pid = (int)si.si_pid;
    /* Back to a wait status, so both reaping paths decode alike. */
    if (si.si_code == CLD_EXITED)
        out->status = (si.si_status & 0xff) << 8;
    else
        out->status = (si.si_status & 0x7f) | (si.si_code == CLD_DUMPED ? 0x80 : 0);
    out->utime = tv_seconds(ru.ru_utime);
    out->stime = tv_seconds(ru.ru_stime);
    out->maxrss = ru.ru_maxrss;
    return 1;
}
#endif

int fr_reap(int pidfd, int pid, fr_exit *out) {
#if FASTREAP_LINUX
    if (use_pidfd(pidfd)) {
        int r = reap_by_pidfd(pidfd, out);
        if (r >= 0 || !p_pidfd_refused()) return r;
    }
#else
    (void)pidfd;
#endif
    return reap_by_pid(pid, out);
}

int fr_reap_all(fr_exit *out, int max) {
    int n = 0;
    while (n < max) {
        int r = reap_by_pid(-1, &out[n]);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == ECHILD) break;
            return n ? n : -1;
        }
        if (r == 0) break;
        n++;
    }
    return n;
}

int fr_wait_readable(int fd, int fd2, double timeout) {
    struct pollfd p[2];
    p[0].fd = fd;
    p[0].events = POLLIN;
    p[0].revents = 0;
    p[1].fd = fd2;
    p[1].events = POLLIN;
    p[1].revents = 0;
    int r = poll(p, fd2 >= 0 ? 2 : 1, timeout_ms(timeout));
    if (r <= 0) return r;
    if (p[0].revents) return 1;
    return 2;
}

int fr_set_subreaper(int on) {
#if FASTREAP_LINUX
    return prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0);
#else
    (void)on;
    errno = ENOSYS;
    return -1;
#endif
}
