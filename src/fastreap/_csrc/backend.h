/* backend.h: what the portable reap.c shares with the one backend file that
 * compiles on this platform (poller_epoll.c on Linux, poller_kqueue.c on
 * macOS). Internal to the C core: not part of the Cython seam (reaper.h). */
#ifndef FASTREAP_BACKEND_H
#define FASTREAP_BACKEND_H

#include <math.h>
#include <signal.h>
#include <sys/time.h>
#include <time.h>

#include "reaper.h"

/* A timeout in seconds (< 0: none) as poll/epoll milliseconds, rounded up. */
static inline int fr_timeout_ms(double timeout) {
    if (timeout < 0) return -1;
    double ms = ceil(timeout * 1000.0);
    return ms > 2147483647.0 ? 2147483647 : (int)ms;
}

/* The same as a timespec for ppoll/kevent: NULL (none) when timeout < 0,
 * else ts filled in (capped at 1e9 s: (time_t)1e300 is undefined; callers loop). */
static inline struct timespec *fr_timeout_ts(double timeout, struct timespec *ts) {
    if (timeout < 0) return NULL;
    if (timeout > 1e9) timeout = 1e9;
    ts->tv_sec = (time_t)timeout;
    ts->tv_nsec = (long)((timeout - (double)ts->tv_sec) * 1e9);
    return ts;
}

static inline double fr_tv_seconds(struct timeval tv) {
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* waitid(P_PIDFD, WEXITED | WNOHANG | WNOWAIT) into *si: 0 (si->si_pid 0
 * while it runs), or -1 with errno; ENOSYS where there is no P_PIDFD. */
int fr_backend_peek_pidfd(int pidfd, siginfo_t *si);
/* Reap through the pidfd with rusage (WNOHANG): 1 reaped into *out, 0 not
 * yet, -1 with errno; ENOSYS where there is no P_PIDFD. */
int fr_backend_reap_pidfd(int pidfd, fr_exit *out);

#endif /* FASTREAP_BACKEND_H */
