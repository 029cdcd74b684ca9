/* fastreap._bench._cref: the C references of `fastreap bench`.
 *
 * Each function does, in a C loop with the GIL released, the same work as a
 * Python-level case of the benchmark, so the table can say how far from C a
 * path is. None of this is part of fastreap's runtime (`fastreap._core`); it
 * is a separate extension only `fastreap bench` imports.
 *
 * Several functions reap with waitpid(-1) and install a SIGCHLD handler for
 * their duration: the benchmark calls them in a fresh process that has no
 * other children and no SIGCHLD handler of its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

extern char **environ;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int wait_pid_eintr(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return 0;
}

/* wait4(pid, 0) with rusage: what fastreap's reap collects (the exit-latency
 * limits do the same work, so the comparison is like for like). */
static int wait4_pid_eintr(pid_t pid) {
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) return -1;
    }
    return 0;
}

/* A close-on-exec pipe whose ends are >= 10, so a posix_spawn dup2 onto
 * 0 or 3 never finds its source already there (stdin may be closed). */
static int cloexec_pipe(int p[2]) {
    int q[2];
    if (pipe(q) < 0) return -1;
    p[0] = fcntl(q[0], F_DUPFD_CLOEXEC, 10);
    p[1] = fcntl(q[1], F_DUPFD_CLOEXEC, 10);
    close(q[0]);
    close(q[1]);
    if (p[0] >= 0 && p[1] >= 0) return 0;
    if (p[0] >= 0) close(p[0]);
    if (p[1] >= 0) close(p[1]);
    return -1;
}

/* ---- SIGCHLD self-pipe (the classic C way to wait for children) ---------- */

static int chld_pipe[2] = {-1, -1};
static struct sigaction chld_old;

static void on_sigchld(int sig) {
    (void)sig;
    int e = errno;
    (void)!write(chld_pipe[1], "c", 1); /* async-signal-safe; full pipe: fine */
    errno = e;
}

static int chld_install(void) {
    if (cloexec_pipe(chld_pipe) < 0) return -1;
    fcntl(chld_pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(chld_pipe[1], F_SETFL, O_NONBLOCK);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGCHLD, &sa, &chld_old) < 0) {
        int e = errno;
        close(chld_pipe[0]);
        close(chld_pipe[1]);
        chld_pipe[0] = chld_pipe[1] = -1;
        errno = e;
        return -1;
    }
    return 0;
}

static void chld_uninstall(void) {
    sigaction(SIGCHLD, &chld_old, NULL);
    close(chld_pipe[0]);
    close(chld_pipe[1]);
    chld_pipe[0] = chld_pipe[1] = -1;
}

static void chld_drain(void) {
    char buf[256];
    while (read(chld_pipe[0], buf, sizeof buf) > 0) {
    }
}

/* Wait until the self-pipe is readable or deadline_ns (-1: none) passes. */
static int chld_wait(int64_t deadline_ns) {
    struct pollfd p = {.fd = chld_pipe[0], .events = POLLIN};
    for (;;) {
        int ms = -1;
        if (deadline_ns >= 0) {
            int64_t left = deadline_ns - now_ns();
            if (left <= 0) return 0;
            ms = (int)((left + 999999) / 1000000);
        }
        int r = poll(&p, 1, ms);
        if (r >= 0 || errno != EINTR) return r;
    }
}

/* ---- fork_wait ------------------------------------------------------------ */

static double fork_wait_loop(int n) {
    int64_t t0 = now_ns();
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) _exit(0);
        if (wait_pid_eintr(pid) < 0) return -1;
    }
    return (double)(now_ns() - t0) / n;
}

static int count_arg(PyObject *arg, const char *name, int *out) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return -1;
    if (n <= 0 || n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be > 0, got %ld", name, n);
        return -1;
    }
    *out = (int)n;
    return 0;
}

static PyObject *cref_fork_wait(PyObject *self, PyObject *arg) {
    int n;
    double r;
    if (count_arg(arg, "n", &n) < 0) return NULL;
    PyThreadState *ts = PyEval_SaveThread();
    r = fork_wait_loop(n);
    PyEval_RestoreThread(ts);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyFloat_FromDouble(r);
}

/* ---- flag_load ------------------------------------------------------------ */

static uint32_t flag_word; /* what fr_flag_is_set loads, with the same ordering */

static PyObject *cref_flag_load(PyObject *self, PyObject *arg) {
    int n;
    if (count_arg(arg, "n", &n) < 0) return NULL;
    volatile uint32_t sink = 0;
    uint32_t acc = 0;
    int64_t t0, t1;
    PyThreadState *ts = PyEval_SaveThread();
    t0 = now_ns();
    for (int i = 0; i < n; i++) acc += __atomic_load_n(&flag_word, __ATOMIC_ACQUIRE) != 0;
    t1 = now_ns();
    PyEval_RestoreThread(ts);
    sink = acc;
    (void)sink;
    return PyFloat_FromDouble((double)(t1 - t0) / (double)n);
}

/* ---- exit_latency --------------------------------------------------------- */

/* The stamping child: stdin is go_r, fd 3 the shared stamp page. */
static pid_t spawn_stamper(const char *path, int go_r, int stamp_fd) {
    posix_spawn_file_actions_t fa;
    pid_t pid;
    char *argv[] = {(char *)path, NULL};
    if (posix_spawn_file_actions_init(&fa) != 0) return -1;
    posix_spawn_file_actions_adddup2(&fa, go_r, 0);
    posix_spawn_file_actions_adddup2(&fa, stamp_fd, 3);
    int e = posix_spawn(&pid, path, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e != 0) {
        errno = e;
        return -1;
    }
    return pid;
}

#ifdef __NR_pidfd_open
static int pidfd_open_(pid_t pid) { return (int)syscall(__NR_pidfd_open, pid, 0); }
#else
static int pidfd_open_(pid_t pid) {
    (void)pid;
    errno = ENOSYS;
    return -1;
}
#endif

enum { MODE_PIDFD = 0, MODE_SIGCHLD = 1 };

static int latency_loop(int mode, const char *path, int stamp_fd, int n, int live, double *out) {
    int64_t *stamp = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, stamp_fd, 0);
    if (stamp == MAP_FAILED) return -1;
    int rc = -1, e = 0, n_others = 0, installed = 0;
    int idle[2] = {-1, -1};
    pid_t *others = calloc((size_t)live, sizeof(pid_t));
    struct pollfd *pfds = calloc((size_t)live, sizeof(struct pollfd));
    if (others == NULL || pfds == NULL) goto out;
    if (mode == MODE_SIGCHLD) {
        if (chld_install() < 0) goto out;
        installed = 1;
    }
    if (cloexec_pipe(idle) < 0) goto out;
    /* live - 1 others that stay alive (blocked on a pipe nobody writes). */
    for (; n_others < live - 1; n_others++) {
        pid_t pid = spawn_stamper(path, idle[0], stamp_fd);
        if (pid < 0) goto out;
        others[n_others] = pid;
        pfds[n_others].fd = -1;
        if (mode == MODE_PIDFD) {
            pfds[n_others].fd = pidfd_open_(pid);
            pfds[n_others].events = POLLIN;
            if (pfds[n_others].fd < 0) {
                n_others++;
                goto out;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        int go[2];
        if (cloexec_pipe(go) < 0) goto out;
        __atomic_store_n(stamp, 0, __ATOMIC_SEQ_CST);
        pid_t pid = spawn_stamper(path, go[0], stamp_fd);
        close(go[0]);
        if (pid < 0) {
            close(go[1]);
            goto out;
        }
        int pfd = -1;
        if (mode == MODE_PIDFD) {
            pfd = pidfd_open_(pid);
            if (pfd < 0) {
                e = errno;
                close(go[1]);
                wait_pid_eintr(pid);
                errno = e;
                goto out;
            }
            pfds[live - 1].fd = pfd;
            pfds[live - 1].events = POLLIN;
            pfds[live - 1].revents = 0;
        }
        (void)!write(go[1], "x", 1);
        close(go[1]);
        int64_t t1;
        if (mode == MODE_PIDFD) {
            int r;
            while ((r = poll(pfds, (nfds_t)live, -1)) < 0 && errno == EINTR) {
            }
            e = errno;
            if (r > 0) r = wait4_pid_eintr(pid);
            t1 = now_ns();
            close(pfd);
            if (r < 0) {
                errno = e;
                goto out;
            }
        } else {
            for (;;) {
                int st;
                struct rusage ru;
                pid_t got;
                if (chld_wait(-1) < 0) goto out;
                chld_drain();
                while ((got = wait4(-1, &st, WNOHANG, &ru)) > 0 && got != pid) {
                }
                if (got == pid) break;
            }
            t1 = now_ns();
        }
        int64_t t0 = __atomic_load_n(stamp, __ATOMIC_SEQ_CST);
        out[i] = t0 > 0 ? (double)(t1 - t0) : -1.0;
    }
    rc = 0;
out:
    e = errno;
    if (idle[1] >= 0) close(idle[1]); /* the others read EOF and exit */
    if (idle[0] >= 0) close(idle[0]);
    for (int i = 0; i < n_others; i++) {
        if (pfds[i].fd >= 0) close(pfds[i].fd);
        wait_pid_eintr(others[i]);
    }
    if (installed) chld_uninstall();
    free(others);
    free(pfds);
    munmap(stamp, 4096);
    errno = e;
    return rc;
}

static PyObject *cref_exit_latency(PyObject *self, PyObject *args) {
    const char *mode_s, *path;
    int stamp_fd, n, live, mode;
    if (!PyArg_ParseTuple(args, "ssiii:exit_latency", &mode_s, &path, &stamp_fd, &n, &live))
        return NULL;
    if (strcmp(mode_s, "pidfd") == 0)
        mode = MODE_PIDFD;
    else if (strcmp(mode_s, "sigchld") == 0)
        mode = MODE_SIGCHLD;
    else
        return PyErr_Format(PyExc_ValueError, "mode must be 'pidfd' or 'sigchld', not %R",
                            PyTuple_GET_ITEM(args, 0));
    if (n <= 0) return PyErr_Format(PyExc_ValueError, "n must be > 0, got %d", n);
    if (live <= 0) return PyErr_Format(PyExc_ValueError, "live must be > 0, got %d", live);
    double *buf = PyMem_RawCalloc((size_t)n, sizeof(double));
    if (buf == NULL) return PyErr_NoMemory();
    int r;
    PyThreadState *ts = PyEval_SaveThread();
    r = latency_loop(mode, path, stamp_fd, n, live, buf);
    PyEval_RestoreThread(ts);
    PyObject *res = NULL;
    if (r < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
    } else if ((res = PyList_New(n)) != NULL) {
        for (int i = 0; i < n; i++) {
            PyObject *x = PyFloat_FromDouble(buf[i]);
            if (x == NULL) {
                Py_CLEAR(res);
                break;
            }
            PyList_SET_ITEM(res, i, x);
        }
    }
    PyMem_RawFree(buf);
    return res;
}

/* ---- stop_limit ------------------------------------------------------------ */

/* SIGTERM all, reap until one deadline, SIGKILL the rest and reap them. */
static double stop_loop(pid_t *pids, int n, double grace) {
    if (chld_install() < 0) return -1;
    int left = n;
    int64_t t0 = now_ns();
    int64_t deadline = t0 + (int64_t)(grace * 1e9);
    for (int i = 0; i < n; i++) kill(pids[i], SIGTERM);
    while (left > 0) {
        int st;
        pid_t got;
        chld_drain();
        while (left > 0 && (got = waitpid(-1, &st, WNOHANG)) > 0) {
            for (int i = 0; i < n; i++) {
                if (pids[i] == got) {
                    pids[i] = 0;
                    left--;
                    break;
                }
            }
        }
        if (left == 0 || chld_wait(deadline) == 0) break;
    }
    for (int i = 0; i < n; i++) {
        if (pids[i] > 0) kill(pids[i], SIGKILL);
    }
    for (int i = 0; i < n; i++) {
        if (pids[i] > 0) wait_pid_eintr(pids[i]);
    }
    double dt = (double)(now_ns() - t0) / 1e9;
    chld_uninstall();
    return dt;
}

static PyObject *cref_stop_limit(PyObject *self, PyObject *args) {
    PyObject *seq;
    double grace;
    if (!PyArg_ParseTuple(args, "Od:stop_limit", &seq, &grace)) return NULL;
    PyObject *fast = PySequence_Fast(seq, "pids must be a sequence of int");
    if (fast == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n <= 0 || n > INT_MAX || !(grace >= 0)) {
        Py_DECREF(fast);
        return PyErr_Format(PyExc_ValueError, "pids must be non-empty and grace >= 0");
    }
    pid_t *pids = PyMem_RawCalloc((size_t)n, sizeof(pid_t));
    if (pids == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) goto bad;
        if (v <= 0) {
            PyErr_Format(PyExc_ValueError, "pid must be > 0, got %ld", v);
            goto bad;
        }
        pids[i] = (pid_t)v;
    }
    Py_DECREF(fast);
    double r;
    PyThreadState *ts = PyEval_SaveThread();
    r = stop_loop(pids, (int)n, grace);
    PyEval_RestoreThread(ts);
    PyMem_RawFree(pids);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyFloat_FromDouble(r);
bad:
    Py_DECREF(fast);
    PyMem_RawFree(pids);
    return NULL;
}

/* ---- spawn_churn ------------------------------------------------------------ */

/* n children of path (no arguments), at most conc alive; seconds in all. */
static double churn_loop(const char *path, int n, int conc) {
    char *argv[] = {(char *)path, NULL};
    int alive = 0, started = 0;
    int64_t t0 = now_ns();
    while (started < n || alive > 0) {
        while (alive < conc && started < n) {
            pid_t pid;
            int e = posix_spawn(&pid, path, NULL, NULL, argv, environ);
            if (e != 0) {
                errno = e;
                while (alive > 0 && wait(NULL) > 0) alive--;
                errno = e;
                return -1;
            }
            alive++;
            started++;
        }
        int st;
        while (waitpid(-1, &st, 0) < 0) {
            if (errno != EINTR) return -1;
        }
        alive--;
    }
    return (double)(now_ns() - t0) / 1e9;
}

static PyObject *cref_spawn_churn(PyObject *self, PyObject *args) {
    const char *path;
    int n, conc;
    if (!PyArg_ParseTuple(args, "sii:spawn_churn", &path, &n, &conc)) return NULL;
    if (n <= 0 || conc <= 0)
        return PyErr_Format(PyExc_ValueError, "n and conc must be > 0, got %d and %d", n, conc);
    double r;
    PyThreadState *ts = PyEval_SaveThread();
    r = churn_loop(path, n, conc);
    PyEval_RestoreThread(ts);
    if (r < 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyFloat_FromDouble(r);
}

/* ---- module ------------------------------------------------------------------ */

static PyMethodDef cref_methods[] = {
    {"fork_wait", cref_fork_wait, METH_O,
     "fork_wait(n) -> ns per child of n rounds of fork(); child _exit(0); waitpid()."},
    {"flag_load", cref_flag_load, METH_O,
     "flag_load(n) -> ns per acquire load of a uint32 flag word in a C loop."},
    {"exit_latency", cref_exit_latency, METH_VARARGS,
     "exit_latency(mode, stamper, stamp_fd, n, live) -> n latencies (ns) from the exec'd\n"
     "stamping child's stamp to its reaping, mode 'pidfd' (pidfd_open + poll + wait4)\n"
     "or 'sigchld' (SIGCHLD self-pipe + wait4(-1, WNOHANG)), with live - 1 others alive.\n"
     "Reaps any child: call it in a process with no other children."},
    {"stop_limit", cref_stop_limit, METH_VARARGS,
     "stop_limit(pids, grace) -> seconds to SIGTERM all, reap until one deadline,\n"
     "SIGKILL and reap the rest. Reaps any child: call it in a process with no others."},
    {"spawn_churn", cref_spawn_churn, METH_VARARGS,
     "spawn_churn(path, n, conc) -> seconds to posix_spawn n children of path, at most\n"
     "conc alive, reaped with waitpid(-1). Reaps any child."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cref_module = {
    PyModuleDef_HEAD_INIT,
    "fastreap._bench._cref",
    "C references for `fastreap bench` (not part of fastreap's runtime).",
    -1,
    cref_methods,
};

PyMODINIT_FUNC PyInit__cref(void) { return PyModule_Create(&cref_module); }
