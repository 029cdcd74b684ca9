# The single Cython seam to reaper.h: blocking waits and reaping, called nogil.
from libc.stdint cimport int64_t


cdef extern from "reaper.h" nogil:
    ctypedef struct fr_exit:
        int pid
        int status
        double utime
        double stime
        long maxrss

    int fr_poller_open()
    int fr_poller_add_fd(int pfd, int fd, int64_t token)
    int fr_poller_del_fd(int pfd, int fd)
    int fr_poller_add_oneshot(int pfd, int fd, int64_t token)
    int fr_poller_rearm(int pfd, int fd, int64_t token)
    int fr_reap_batch(const int *pids, const int *pidfds, int n, int close_fds, fr_exit *out, int *res)
    const int FR_REAP_OTHER
    int fr_start_time(int pid, long long *out)
    int fr_reap_checked(const int *pids, const long long *starts, int n, fr_exit *out, int *res)
    int fr_watch_pidfd(int pfd, int pid, int floor, int64_t token, int *code, int *status)
    int fr_signal_batch(const int *pidfds, int n, int sig, int *res)
    int fr_poller_close_fd(int pfd, int fd)
    int fr_timer_open()
    int fr_timer_arm(int fd, double seconds)
    int fr_timer_drain(int fd)
    int fr_poller_add_pid(int pfd, int pid, int64_t token)
    int fr_poller_del_pid(int pfd, int pid)
    ctypedef struct fr_sigmask:
        pass
    int fr_sig_block_all(fr_sigmask *old)
    void fr_sig_restore(const fr_sigmask *old)
    int fr_poller_wait(int pfd, double timeout, int64_t *tokens, int max, const fr_sigmask *mask)
    int fr_pidfd_open(int pid, int floor)
    int fr_pidfd_send_signal(int pidfd, int sig)
    int fr_have_pidfd()
    int fr_peek(int pidfd, int pid, int *code, int *status)
    int fr_peek_any()
    int fr_scan_exited(const int *pids, int n, int *idx)
    int fr_reap(int pidfd, int pid, fr_exit *out)
    int fr_reap_all(fr_exit *out, int max)
    int fr_wait_readable(int fd, int fd2, double timeout, const fr_sigmask *mask)
    int fr_set_subreaper(int on)
