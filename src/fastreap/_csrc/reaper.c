/* reaper.c: the blocking and reaping system calls of fastreap.
 *
 * Everything here is called with the GIL released (Cython `with nogil`), so it
 * touches no Python object. The EINTR rule: a call that can block (poll,
 * epoll_wait, kevent) returns -1 with errno EINTR, so the caller can run
 * Python's signal handlers and go on with the remaining time; a call that
 * cannot block (WNOHANG waits, reads of non-blocking descriptors, epoll_ctl)
 * retries EINTR itself, since going back to Python would gain nothing.
 * (The benchmark references at the end of this file time whole loops in C
 * and retry EINTR everywhere; they are not called on any user path.)
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

/* After a P_PIDFD waitid failed: was P_PIDFD itself refused? EINVAL from a
 * kernel without it (5.3), ENOSYS or EPERM from a seccomp filter or sandbox
 * that filters waitid by its arguments (gVisor, some container runtimes).
 * Then fall back to the pid, now and from then on. */
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
        do {
            r = waitid((idtype_t)FR_P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG | WNOWAIT);
        } while (r < 0 && errno == EINTR);
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
    long r;
    do {
        r = syscall(SYS_waitid, FR_P_PIDFD, pidfd, &si, WEXITED | WNOHANG, &ru);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -1;
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

/* ---- C references for the benchmarks ----------------------------------- */
/* These run inside the benchmark process with the GIL released. A forked
 * child only calls async-signal-safe functions (read, clock_gettime, _exit)
 * before it ends, so forking from a threaded process is safe here. */

#include <sys/mman.h>
#include <time.h>
#include "handler.h"

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int wait_pid_eintr(int pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return 0;
}

double fr_cref_fork_wait(int n) {
    if (n <= 0) {
        errno = EINVAL;
        return -1;
    }
    int64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) _exit(0);
        if (wait_pid_eintr(pid) < 0) return -1;
    }
    return (double)(now_ns() - t0) / n;
}

/* One shared page holding the stamp, made on first use and kept. */
static int64_t *stamp_page(void) {
    static int64_t *page = NULL;
    if (page == NULL) {
        void *p =
            mmap(NULL, sizeof(int64_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        page = p;
    }
    return page;
}

int fr_cref_fork_stamper(int *go_wfd) {
    int64_t *stamp = stamp_page();
    if (stamp == NULL) return -1;
    int go[2];
    if (pipe(go) < 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(go[0]);
        close(go[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls; no Python in this child. */
        char c;
        close(go[1]);
        while (read(go[0], &c, 1) < 0 && errno == EINTR) {
        }
        __atomic_store_n(stamp, now_ns(), __ATOMIC_SEQ_CST);
        _exit(0);
    }
    close(go[0]);
    fcntl(go[1], F_SETFD, FD_CLOEXEC);
    *go_wfd = go[1];
    return pid;
}

int64_t fr_cref_last_stamp(void) {
    int64_t *stamp = stamp_page();
    return stamp ? __atomic_load_n(stamp, __ATOMIC_SEQ_CST) : 0;
}

int fr_cref_pidfd_latency(int n, double *out) {
#if FASTREAP_LINUX
    if (n <= 0) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int go;
        int pid = fr_cref_fork_stamper(&go);
        if (pid < 0) return -1;
        int pfd = (int)syscall(__NR_pidfd_open, pid, 0);
        if (pfd < 0) {
            int e = errno;
            close(go);
            wait_pid_eintr(pid);
            errno = e;
            return -1;
        }
        struct pollfd p = {.fd = pfd, .events = POLLIN};
        int r;
        (void)!write(go, "x", 1);
        close(go);
        while ((r = poll(&p, 1, -1)) < 0 && errno == EINTR) {
        }
        int64_t t1 = now_ns();
        int e = errno;
        close(pfd);
        wait_pid_eintr(pid);
        if (r < 0) {
            errno = e;
            return -1;
        }
        out[i] = (double)(t1 - fr_cref_last_stamp());
    }
    return 0;
#else
    (void)n;
    (void)out;
    errno = ENOSYS;
    return -1;
#endif
}

double fr_cref_flag_load(long n) {
    if (n <= 0) {
        errno = EINVAL;
        return -1;
    }
    /* The sum keeps the compiler from folding the loop away; each load is a
     * separate acquire load, as in a C loop polling the flag. */
    volatile uint32_t sink = 0;
    uint32_t acc = 0;
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++) acc += (uint32_t)fr_flag_is_set(&fr_default_flag);
    int64_t t1 = now_ns();
    sink = acc;
    (void)sink;
    return (double)(t1 - t0) / (double)n;
}
