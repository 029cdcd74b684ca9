/* poller_kqueue.c: the macOS backend: kqueue, with EVFILT_PROC watching a
 * child's exit directly (no descriptor per child). macOS has no timerfd, no
 * pidfds, no P_PIDFD and no subreaper: those calls say ENOSYS here and the
 * callers take the pid path (reap.c) or do without. The whole file is macOS
 * only; Linux has poller_epoll.c. The EINTR rule is reap.c's.
 * Not compiled or tested in CI on Linux; keep it in step by reading. */
#define _GNU_SOURCE 1
#include "compat.h"

#if FASTREAP_APPLE

#include "backend.h"
#include "reaper.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/event.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ---- poller ------------------------------------------------------------ */

int fr_poller_open(void) {
    int kq = kqueue(); /* kqueue descriptors are not inherited by fork */
    if (kq >= 0 && fcntl(kq, F_SETFD, FD_CLOEXEC) < 0) {
        int e = errno;
        close(kq);
        errno = e;
        return -1;
    }
    return kq;
}

int fr_poller_add_fd(int pfd, int fd, int64_t token) {
    struct kevent ev;
    EV_SET(&ev, fd, EVFILT_READ, EV_ADD, 0, 0, (void *)(intptr_t)token);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
}

/* EV_DISPATCH: reported once, then disabled until fr_poller_rearm (the
 * counterpart of EPOLLONESHOT; see poller_epoll.c). */
int fr_poller_add_oneshot(int pfd, int fd, int64_t token) {
    struct kevent ev;
    EV_SET(&ev, fd, EVFILT_READ, EV_ADD | EV_DISPATCH, 0, 0, (void *)(intptr_t)token);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
}

int fr_poller_rearm(int pfd, int fd, int64_t token) {
    struct kevent ev;
    EV_SET(&ev, fd, EVFILT_READ, EV_ENABLE | EV_DISPATCH, 0, 0, (void *)(intptr_t)token);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
}

int fr_poller_del_fd(int pfd, int fd) {
    struct kevent ev;
    EV_SET(&ev, fd, EVFILT_READ, EV_DELETE, 0, 0, NULL);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
}

int fr_poller_add_pid(int pfd, int pid, int64_t token) {
    struct kevent ev;
    EV_SET(&ev, pid, EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, (void *)(intptr_t)token);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
}

int fr_poller_del_pid(int pfd, int pid) {
    struct kevent ev;
    EV_SET(&ev, pid, EVFILT_PROC, EV_DELETE, NOTE_EXIT, 0, NULL);
    return kevent(pfd, &ev, 1, NULL, 0, NULL);
}

int fr_poller_wait(int pfd, double timeout, int64_t *tokens, int max, const fr_sigmask *mask) {
    (void)mask; /* never given here: fr_sig_block_all does nothing on macOS */
    struct kevent evs[64];
    struct timespec ts;
    if (max > 64) max = 64;
    int n = kevent(pfd, NULL, 0, evs, max, fr_timeout_ts(timeout, &ts));
    for (int i = 0; i < n; i++) tokens[i] = (int64_t)(intptr_t)evs[i].udata;
    return n;
}

/* ---- what macOS does not have ------------------------------------------ */

int fr_timer_open(void) {
    errno = ENOSYS;
    return -1;
}

int fr_timer_arm(int fd, double seconds) {
    (void)fd;
    (void)seconds;
    errno = ENOSYS;
    return -1;
}

int fr_pidfd_open(int pid, int floor) {
    (void)pid;
    (void)floor;
    errno = ENOSYS;
    return -1;
}

int fr_pidfd_send_signal(int pidfd, int sig) {
    (void)pidfd;
    (void)sig;
    errno = ENOSYS;
    return -1;
}

int fr_have_pidfd(void) { return 0; }

int fr_backend_peek_pidfd(int pidfd, siginfo_t *si) {
    (void)pidfd;
    (void)si;
    errno = ENOSYS;
    return -1;
}

int fr_backend_reap_pidfd(int pidfd, fr_exit *out) {
    (void)pidfd;
    (void)out;
    errno = ENOSYS;
    return -1;
}

int fr_set_subreaper(int on) {
    (void)on;
    errno = ENOSYS;
    return -1;
}

#endif /* FASTREAP_APPLE */
