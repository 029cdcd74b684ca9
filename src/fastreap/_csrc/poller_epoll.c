/* poller_epoll.c: the Linux backend: epoll, timerfd, pidfds (5.3),
 * waitid(P_PIDFD) (5.4) and the child subreaper. The whole file is Linux
 * only; macOS has poller_kqueue.c, the portable calls are in reap.c. The
 * EINTR rule is reap.c's. */
#define _GNU_SOURCE 1
#include "compat.h"

#if FASTREAP_LINUX

#include "backend.h"
#include "reaper.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- poller ------------------------------------------------------------ */

int fr_poller_open(void) { return epoll_create1(EPOLL_CLOEXEC); }

int fr_poller_add_fd(int pfd, int fd, int64_t token) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = (uint64_t)token;
    return epoll_ctl(pfd, EPOLL_CTL_ADD, fd, &ev);
}

/* Reported once, then disarmed until fr_poller_rearm. A pidfd whose exit was
 * reported can then be closed without EPOLL_CTL_DEL (one system call less per
 * exit): a copy left in a forked child keeps only a disarmed entry alive,
 * which is never reported and goes away with that copy. */
static int ctl_oneshot(int pfd, int op, int fd, int64_t token) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = (uint64_t)token;
    return epoll_ctl(pfd, op, fd, &ev);
}

int fr_poller_add_oneshot(int pfd, int fd, int64_t token) {
    return ctl_oneshot(pfd, EPOLL_CTL_ADD, fd, token);
}

int fr_poller_rearm(int pfd, int fd, int64_t token) {
    return ctl_oneshot(pfd, EPOLL_CTL_MOD, fd, token);
}

int fr_poller_del_fd(int pfd, int fd) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    return epoll_ctl(pfd, EPOLL_CTL_DEL, fd, &ev);
}

/* epoll has no process filter: on Linux a child is watched through its
 * pidfd (fr_poller_add_fd) or on the SIGCHLD path. */
int fr_poller_add_pid(int pfd, int pid, int64_t token) {
    (void)pfd;
    (void)pid;
    (void)token;
    errno = ENOSYS;
    return -1;
}

int fr_poller_del_pid(int pfd, int pid) {
    (void)pfd;
    (void)pid;
    errno = ENOSYS;
    return -1;
}

int fr_poller_wait(int pfd, double timeout, int64_t *tokens, int max, const fr_sigmask *mask) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = mask ? epoll_pwait(pfd, evs, max, fr_timeout_ms(timeout), &mask->set)
                 : epoll_wait(pfd, evs, max, fr_timeout_ms(timeout));
    for (int i = 0; i < n; i++) tokens[i] = (int64_t)evs[i].data.u64;
    return n;
}

/* ---- timer ------------------------------------------------------------- */

int fr_timer_open(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); }

int fr_timer_arm(int fd, double seconds) {
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
}

/* ---- pidfd ------------------------------------------------------------- */

int fr_pidfd_open(int pid, int floor) {
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
}

int fr_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(__NR_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int fr_have_pidfd(void) {
    int fd = (int)syscall(__NR_pidfd_open, getpid(), 0);
    if (fd < 0) return 0;
    close(fd);
    return 1;
}

int fr_backend_peek_pidfd(int pidfd, siginfo_t *si) {
    int r;
    do {
        r = waitid((idtype_t)FR_P_PIDFD, (id_t)pidfd, si, WEXITED | WNOHANG | WNOWAIT);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* The raw waitid has a rusage argument that glibc's wrapper hides. */
int fr_backend_reap_pidfd(int pidfd, fr_exit *out) {
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
    out->utime = fr_tv_seconds(ru.ru_utime);
    out->stime = fr_tv_seconds(ru.ru_stime);
    out->maxrss = ru.ru_maxrss;
    return 1;
}

/* ---- subreaper --------------------------------------------------------- */

int fr_set_subreaper(int on) { return prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0); }

#endif /* FASTREAP_LINUX */
