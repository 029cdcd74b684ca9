/* reaper.c: the C references for `fastreap bench` only; they are moving to
 * their own extension. The reaping primitives declared in reaper.h live in
 * reap.c (portable) and the platform's backend, poller_epoll.c (Linux) or
 * poller_kqueue.c (macOS). */
#define _GNU_SOURCE 1
#include "reaper.h"
#include "compat.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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
