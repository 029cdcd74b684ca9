/* faultshim.c: an LD_PRELOAD library that makes chosen calls fail with a
 * chosen errno, to reproduce hostile environments (old kernels, seccomp
 * filters, gVisor) in the test suite. Built by the `faultshim` fixture in
 * tests/test_hostile.py.
 *
 *   FASTREAP_FAULT="waitid_pidfd=ENOSYS,memfd_create=EPERM,timerfd_create=ENOSYS"
 *
 * Names: memfd_create, timerfd_create, pidfd_open, waitid (every idtype),
 * waitid_pidfd (only idtype P_PIDFD, as an argument-filtering seccomp
 * profile refuses it), dup3, eventfd. Each is matched both as the libc
 * wrapper and as syscall(SYS_x, ...), since fastreap calls pidfd_open and the
 * rusage form of waitid through syscall(). The variable is read on every
 * call, so a program can switch faults on and off through os.environ.
 * Errno values: ENOSYS, EPERM, EACCES, EINVAL, EMFILE, ENOMEM.
 *
 *   FASTREAP_WAIT_DELAY_US=2000
 *
 * sleeps that long before every blocking poll, ppoll, epoll_wait and
 * epoll_pwait: it widens the window between a caller's last look for
 * pending signals and the start of its wait, where a signal must still
 * interrupt the wait (the signal-safe waits block signals across it).
 */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#define P_PIDFD_ 3

/* The errno configured for name, or 0. */
static int fault(const char *name) {
    static const struct {
        const char *name;
        int value;
    } errnos[] = {{"ENOSYS", ENOSYS}, {"EPERM", EPERM},   {"EACCES", EACCES},
                  {"EINVAL", EINVAL}, {"EMFILE", EMFILE}, {"ENOMEM", ENOMEM}};
    const char *s = getenv("FASTREAP_FAULT");
    size_t n = strlen(name);
    while (s && *s) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len > n + 1 && strncmp(s, name, n) == 0 && s[n] == '=') {
            for (size_t i = 0; i < sizeof errnos / sizeof errnos[0]; i++) {
                size_t el = strlen(errnos[i].name);
                if (len - n - 1 == el && strncmp(s + n + 1, errnos[i].name, el) == 0)
                    return errnos[i].value;
            }
        }
        s = end ? end + 1 : NULL;
    }
    return 0;
}

static int fail(int e) {
    errno = e;
    return -1;
}

#define NEXT(ret, name, ...)         \
    static ret (*next)(__VA_ARGS__); \
    if (!next) *(void **)&next = dlsym(RTLD_NEXT, name)

int memfd_create(const char *nm, unsigned int flags) {
    int e = fault("memfd_create");
    if (e) return fail(e);
    NEXT(int, "memfd_create", const char *, unsigned int);
    return next(nm, flags);
}

int timerfd_create(int clockid, int flags) {
    int e = fault("timerfd_create");
    if (e) return fail(e);
    NEXT(int, "timerfd_create", int, int);
    return next(clockid, flags);
}

int eventfd(unsigned int initval, int flags) {
    int e = fault("eventfd");
    if (e) return fail(e);
    NEXT(int, "eventfd", unsigned int, int);
    return next(initval, flags);
}

int dup3(int oldfd, int newfd, int flags) {
    int e = fault("dup3");
    if (e) return fail(e);
    NEXT(int, "dup3", int, int, int);
    return next(oldfd, newfd, flags);
}

int waitid(idtype_t idtype, id_t id, siginfo_t *info, int options) {
    int e = fault("waitid");
    if (!e && (int)idtype == P_PIDFD_) e = fault("waitid_pidfd");
    if (e) return fail(e);
    NEXT(int, "waitid", idtype_t, id_t, siginfo_t *, int);
    return next(idtype, id, info, options);
}

long syscall(long number, ...) {
    va_list ap;
    long a[6];
    va_start(ap, number);
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    int e = 0;
    if (number == SYS_memfd_create)
        e = fault("memfd_create");
    else if (number == SYS_timerfd_create)
        e = fault("timerfd_create");
    else if (number == SYS_pidfd_open)
        e = fault("pidfd_open");
    else if (number == SYS_waitid) {
        e = fault("waitid");
        if (!e && a[0] == P_PIDFD_) e = fault("waitid_pidfd");
    }
    if (e) return fail(e);
    NEXT(long, "syscall", long, ...);
    return next(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* FASTREAP_WAIT_DELAY_US before a wait that may block. */
static void wait_delay(int may_block) {
    const char *s = getenv("FASTREAP_WAIT_DELAY_US");
    if (may_block && s && *s) usleep((useconds_t)atoi(s));
}

int poll(struct pollfd *fds, nfds_t n, int timeout) {
    wait_delay(timeout != 0);
    NEXT(int, "poll", struct pollfd *, nfds_t, int);
    return next(fds, n, timeout);
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask) {
    wait_delay(!ts || ts->tv_sec || ts->tv_nsec);
    NEXT(int, "ppoll", struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
    return next(fds, n, ts, mask);
}

int epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout) {
    wait_delay(timeout != 0);
    NEXT(int, "epoll_wait", int, struct epoll_event *, int, int);
    return next(epfd, evs, max, timeout);
}

int epoll_pwait(int epfd, struct epoll_event *evs, int max, int timeout, const sigset_t *mask) {
    wait_delay(timeout != 0);
    NEXT(int, "epoll_pwait", int, struct epoll_event *, int, int, const sigset_t *);
    return next(epfd, evs, max, timeout, mask);
}
