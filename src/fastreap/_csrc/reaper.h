/* reaper.h: blocking waits and reaping primitives, called without the GIL.
 * Implemented by reap.c (portable: wait4, waitid, poll; the EINTR rule) and
 * one backend per platform: poller_epoll.c (Linux: epoll, timerfd, pidfd,
 * waitid P_PIDFD, subreaper) or poller_kqueue.c (macOS: kqueue EVFILT_PROC);
 * backend.h is what they share. Calls a platform lacks fail with ENOSYS. */
#ifndef FASTREAP_REAPER_H
#define FASTREAP_REAPER_H

#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

typedef struct fr_exit {
    int pid;
    int status;   /* raw wait status */
    double utime; /* seconds */
    double stime; /* seconds */
    long maxrss;  /* kilobytes (Linux) or bytes (macOS), as the kernel says */
} fr_exit;

/* Event poller: epoll on Linux, kqueue on macOS. Tokens are int64. */
int fr_poller_open(void);
int fr_poller_add_fd(int pfd, int fd, int64_t token);
int fr_poller_del_fd(int pfd, int fd);
/* Register fd to be reported once (EPOLLONESHOT / EV_DISPATCH); rearm: once
 * more. A reported pidfd may then be closed without deregistering. */
int fr_poller_add_oneshot(int pfd, int fd, int64_t token);
int fr_poller_rearm(int pfd, int fd, int64_t token);
/* Deregister fd and close it (one call on the reaping path); 0 or -1. */
int fr_poller_close_fd(int pfd, int fd);
/* A one-shot CLOCK_MONOTONIC timer descriptor (timerfd; Linux only, else
 * ENOSYS), readable once it fires. arm(fd, s): fire in s seconds, s <= 0
 * disarms. drain: consume the expiry (0, or -1 with errno). */
int fr_timer_open(void);
int fr_timer_arm(int fd, double seconds);
int fr_timer_drain(int fd);
/* macOS: watch a pid's exit directly in kqueue (no descriptor per child);
 * Linux: ENOSYS (use pidfds). */
int fr_poller_add_pid(int pfd, int pid, int64_t token);
int fr_poller_del_pid(int pfd, int pid);
/* A thread's signal mask, as the signal-safe waits take it (reap.c). */
typedef struct fr_sigmask {
    sigset_t set;
} fr_sigmask;
/* Block every signal in the calling thread and keep the old mask in *old: 1,
 * or 0 (nothing done) where no wait can take the mask back atomically
 * (macOS: kevent has no mask). fr_sig_restore puts *old back, errno kept. */
int fr_sig_block_all(fr_sigmask *old);
void fr_sig_restore(const fr_sigmask *old);

/* Wait up to timeout seconds (< 0: forever) for up to max tokens; returns how
 * many were written, or -1 with errno (EINTR when a signal arrived). With
 * mask, under that signal mask for the duration of the wait (epoll_pwait;
 * never given on macOS, see fr_sig_block_all). */
int fr_poller_wait(int pfd, double timeout, int64_t *tokens, int max, const fr_sigmask *mask);

/* pidfds (Linux >= 5.3); -1 with errno ENOSYS elsewhere. The descriptor is
 * moved to the lowest free number >= floor, close-on-exec. */
int fr_pidfd_open(int pid, int floor);
int fr_pidfd_send_signal(int pidfd, int sig);
int fr_have_pidfd(void);

/* Is the child exited? waitid(WEXITED|WNOHANG|WNOWAIT) through its pidfd
 * (P_PIDFD: that very process, never a reused pid) when pidfd >= 0 and the
 * kernel has P_PIDFD (5.4), else by pid. 1 exited (*code = si_code,
 * *status = si_status), 0 still running, -1 with errno (ECHILD: not ours,
 * or reaped by someone else). */
int fr_peek(int pidfd, int pid, int *code, int *status);
/* waitid(P_ALL, ...WNOWAIT): the pid of some zombie child, 0 if none, -1. */
int fr_peek_any(void);
/* The SIGCHLD path's sweep: waitid(P_PID, WEXITED|WNOHANG|WNOWAIT) for each
 * of n pids (O(1) each in the kernel since 5.14; nothing is reaped). Writes
 * into idx the index of each one that has exited or is not (or no longer)
 * our child (any error: ECHILD), and returns how many: only those need a
 * closer look. */
int fr_scan_exited(const int *pids, int n, int *idx);
/* Reap it with rusage, WNOHANG: through its pidfd (raw waitid, P_PIDFD)
 * when pidfd >= 0 and the kernel has P_PIDFD, else wait4(pid). 1 reaped
 * into *out, 0 not yet, -1 with errno (ECHILD: not or no longer ours). */
int fr_reap(int pidfd, int pid, fr_exit *out);
/* waitpid(-1, WNOHANG) until nothing is left or max entries; count or -1. */
int fr_reap_all(fr_exit *out, int max);
/* The hot path's batch: fr_reap each of n children (pidfds[i] may be -1);
 * res[i] = 1 reaped into out[i], 0 not exited, -errno. With close_fds, the
 * pidfd of each one reaped (or gone: ECHILD) is closed, without deregistering
 * (it was registered oneshot and its exit reported). Returns 0. */
int fr_reap_batch(const int *pids, const int *pidfds, int n, int close_fds, fr_exit *out, int *res);
/* The start time of pid (field 22 of /proc/<pid>/stat, clock ticks since
 * boot) into *out: 1, 0 if there is no such process, -1 with errno if it
 * could not be read (or no /proc: ENOSYS). */
int fr_start_time(int pid, long long *out);
/* The SIGCHLD path's batch: for each of n pids, unless starts[i] < 0
 * (unknown), check that it is still the process that started then (another
 * start time, or no such process: res[i] = FR_REAP_OTHER, not touched), then
 * wait4(pid, WNOHANG) with rusage: res[i] = 1 reaped into out[i], 0 not
 * exited, -errno (ECHILD: not or no longer ours). Returns 0. */
#define FR_REAP_OTHER 2
int fr_reap_checked(const int *pids, const long long *starts, int n, fr_exit *out, int *res);
/* Watch pid in one call: pidfd_open (moved to >= floor), a WNOWAIT peek
 * through it (ECHILD: not our child), oneshot registration under token.
 * The pidfd, with *code = si_code once it has exited (0 while it runs) and
 * *status = si_status; or -1 with errno and nothing left open. */
int fr_watch_pidfd(int pfd, int pid, int floor, int64_t token, int *code, int *status);
/* pidfd_send_signal to each of n pidfds: res[i] = 0 or -errno; how many sent. */
int fr_signal_batch(const int *pidfds, int n, int sig, int *res);

/* poll(2) two descriptors (fd2 may be -1): 1 fd readable, 2 fd2 readable,
 * 0 timeout, -1 with errno. With mask, under that signal mask (ppoll). */
int fr_wait_readable(int fd, int fd2, double timeout, const fr_sigmask *mask);

int fr_set_subreaper(int on);

#endif /* FASTREAP_REAPER_H */
