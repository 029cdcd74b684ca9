/* handler.c: fastreap's signal handler and the lock-free state it touches.
 *
 * Rules for everything reachable from fr_handler (they are what makes it
 * async-signal-safe; each function below says which it relies on):
 *   R1  save errno on entry, restore it on every exit path;
 *   R2  touch shared state only with __atomic builtins on plain integers and
 *       pointers: no locks, so a handler that interrupts a thread in the middle
 *       of an update can never deadlock;
 *   R3  no allocation, no stdio, no Python object, no Python API except
 *       PyErr_SetInterruptEx (documented async-signal-safe), reached through a
 *       function pointer so this file needs no Python.h;
 *   R4  the only system calls are write(2) on descriptors we own, the
 *       replacement of descriptors inherited across fork (fr_refresh_pair:
 *       eventfd or pipe, fcntl, dup3 or dup2, close, all async-signal-safe),
 *       timer_settime(2) on the kick timers we created (async-signal-safe in
 *       POSIX; made through syscall(2)) and the previous handler we chain to (the caller's
 *       responsibility).
 * Code that is *not* called from the handler (install, bind, drain) runs with
 * the GIL held in the Python thread that asks for it; it may use any call.
 * fr_atfork_child runs in the child of every fork(), before Python does: it
 * follows the same rules and does one store.
 */
#define _GNU_SOURCE 1
#include "handler.h"
#include "compat.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
#if FASTREAP_LINUX
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#endif
/* The kick's raw timer calls take a long-sized itimerspec: not on x32, nor
 * where only the 64-bit-time calls exist (riscv32). */
#if FASTREAP_LINUX && defined(SYS_timer_create) && defined(SYS_timer_settime) && \
    !(defined(__x86_64__) && defined(__ILP32__))
#define FASTREAP_HAVE_KICK 1
#else
#define FASTREAP_HAVE_KICK 0
#endif

#define LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_RELAXED(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static fr_flagmem fr_default_mem;
fr_flag fr_default_flag = {&fr_default_mem, -1, -1, 0};

/* Per-signal state. Slots hold pointers owned by the Python layer, which keeps
 * each bound flag alive until it is unbound and fr_quiesce() has returned. */
static fr_flag *fr_bound[FASTREAP_NSIG][FASTREAP_MAX_BOUND];
static uint64_t fr_counts[FASTREAP_NSIG];
static int fr_exit_mode[FASTREAP_NSIG];
static int fr_chain_kind[FASTREAP_NSIG]; /* 0 none, 1 sa_handler, 2 sa_sigaction */
static struct sigaction fr_chain_act[FASTREAP_NSIG];
static struct sigaction fr_saved[FASTREAP_NSIG];
static int fr_saved_valid[FASTREAP_NSIG];
static int fr_installed[FASTREAP_NSIG];
static int (*fr_interrupt_fn)(int);
static int fr_last_signo_v;
static int fr_last_sender_v;
static int fr_inflight;
static int fr_gw_r = -1, fr_gw_w = -1;
static uint32_t fr_gw_stamp;
static uint32_t fr_fork_gen; /* 0 in the process that loaded us, +1 per fork */
static int fr_fork_hook_state;

/* The main-thread kick (see fr_kick_setup): per signal, a POSIX timer made in
 * generation fr_kick_gen[signo] - 1 (0: none), and the kicks it has left;
 * fr_kick_off: generation + 1 in which kicks were switched off (Stopped was
 * raised, or the interpreter is exiting), 0 while they are on. */
#if FASTREAP_HAVE_KICK
static int fr_kick_timer[FASTREAP_NSIG]; /* the kernel's timer id */
static uint32_t fr_kick_gen[FASTREAP_NSIG];
#endif
static int fr_kick_left[FASTREAP_NSIG];
static uint32_t fr_kick_off;
static uint64_t fr_kicks_armed; /* for the tests: how often the handler armed one */
static int fr_kick_cookie;      /* its address tells a kick from a real signal */

/* SIGCHLD senders, a multi-producer ring read by one consumer under a lock. */
static int fr_ring[FASTREAP_RING];
static uint64_t fr_ring_head;
static uint64_t fr_ring_tail;

/* ---- wake-up descriptors ------------------------------------------------ */

int fr_wakefd_open(int *rfd, int *wfd) {
#if FASTREAP_LINUX
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return -1;
    *rfd = *wfd = fd;
    return 0;
#else
    int p[2];
    if (pipe(p) < 0) return -1;
    for (int i = 0; i < 2; i++) {
        if (fcntl(p[i], F_SETFD, FD_CLOEXEC) < 0 ||
            fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK) < 0) {
            int e = errno;
            close(p[0]);
            close(p[1]);
            errno = e;
            return -1;
        }
    }
    *rfd = p[0];
    *wfd = p[1];
    return 0;
#endif
}

/* R4: one write(2); a full pipe or saturated eventfd is already readable,
 * so EAGAIN is success for our purpose. */
void fr_wakefd_poke(int wfd) {
#if FASTREAP_LINUX
    uint64_t one = 1;
    ssize_t r = write(wfd, &one, sizeof one);
#else
    char one = 1;
    ssize_t r = write(wfd, &one, 1);
#endif
    (void)r;
}

void fr_wakefd_drain(int rfd) {
    char buf[256];
    ssize_t r;
    do {
        r = read(rfd, buf, sizeof buf);
#if FASTREAP_LINUX
        if (r > 0) break; /* an eventfd (fr_wakefd_open): one read takes the whole count */
#endif
    } while (r > 0 || (r < 0 && errno == EINTR));
}

/* ---- fork generations -------------------------------------------------- */

/* In the child of every fork(), only the forking thread runs. One store: the
 * child touches as little memory as it can (each page it writes is copied),
 * and whatever it needs of fastreap is renewed when it first uses it. */
static void fr_atfork_child(void) { STORE(&fr_fork_gen, LOAD_RELAXED(&fr_fork_gen) + 1); }

/* Registered once per process (a compare-and-swap, not pthread_once: the
 * wheels may need no glibc symbol newer than manylinux_2_28's). */
int fr_fork_hook_install(void) {
    int expected = 0;
    if (!__atomic_compare_exchange_n(&fr_fork_hook_state, &expected, 1, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        return 0;
    int e = pthread_atfork(NULL, NULL, fr_atfork_child);
    if (e != 0) {
        STORE(&fr_fork_hook_state, 0);
        errno = e;
        return -1;
    }
    return 0;
}

uint32_t fr_fork_generation(void) { return LOAD(&fr_fork_gen); }

/* Move a new wake-up pair onto the numbers of *rfdp / *wfdp (R4: eventfd or
 * pipe, fcntl, dup3/dup2, close). On failure the old numbers stay (the
 * parent's: spurious wake-ups) and nothing leaks; 0 or -1. */
static int fr_reopen_pair(int *rfdp, int *wfdp) {
    int r, w, oldr = LOAD(rfdp), oldw = LOAD(wfdp);
    if (fr_wakefd_open(&r, &w) < 0) return -1;
#if FASTREAP_LINUX
    (void)oldw; /* one eventfd: oldw == oldr */
    (void)w;
    int ok = dup3(r, oldr, O_CLOEXEC) >= 0;
    close(r);
    return ok ? 0 : -1;
#else
    if (dup2(r, oldr) < 0) {
        close(r);
        close(w);
        return -1;
    }
    close(r);
    int ok = fcntl(oldr, F_SETFD, FD_CLOEXEC) >= 0;
    if (dup2(w, oldw) >= 0) {
        close(w);
        ok = fcntl(oldw, F_SETFD, FD_CLOEXEC) >= 0 && ok;
    } else {
        /* Keep the new pipe's write end under its own number: the pair stays
         * one pipe; the old number is the parent's and stays open. */
        STORE(wfdp, w);
        ok = 0;
    }
    return ok ? 0 : -1;
#endif
}

/* Make a pair this process's if it was opened in an earlier generation (see
 * handler.h). *stamp: generation * 2 when it is, + 1 while some caller of
 * this process replaces it; a stamp of another generation (busy or not) is
 * stale and claimed with a compare-and-swap, so exactly one caller replaces
 * it. Returns 1 if it was this process's already, 2 if this call replaced it,
 * 0 if another caller is replacing it right now (never waits: the handler
 * may have interrupted that very caller). R1 for the caller's errno. */
static int fr_refresh_pair(int *rfdp, int *wfdp, uint32_t *stamp) {
    uint32_t fresh = LOAD(&fr_fork_gen) * 2;
    uint32_t s = LOAD(stamp);
    for (;;) {
        if (s == fresh || s == FASTREAP_STAMP_SHARED) return 1;
        if (s == fresh + 1) return 0;
        if (__atomic_compare_exchange_n(stamp, &s, fresh + 1, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            break;
    }
    int saved_errno = errno;
    (void)fr_reopen_pair(rfdp, wfdp);
    errno = saved_errno;
    STORE(stamp, fresh);
    return 2;
}

/* The global wake-up pair in a fork child: replaced on first touch, then
 * poked once (a handler may have skipped it while it was busy; a spurious
 * wake-up costs the watcher one empty pass). R2 + R4: from the handler too. */
static int fr_gw_refresh_try(void) {
    if (LOAD(&fr_gw_r) < 0) return 1;
    int r = fr_refresh_pair(&fr_gw_r, &fr_gw_w, &fr_gw_stamp);
    if (r == 2) fr_wakefd_poke(LOAD(&fr_gw_w));
    return r != 0;
}

static void fr_gw_refresh(void) {
    while (!fr_gw_refresh_try()) sched_yield();
}

/* ---- flags ------------------------------------------------------------- */

/* R2 + R4: called from the handler (through fr_flag_set). After replacing
 * the descriptor, re-arm it if the flag is set: a setter that found the
 * stamp busy skipped its write and relies on this check (both sides use
 * sequentially consistent atomics: one of them sees the other). */
int fr_flag_refresh_try(fr_flag *f) {
    if (LOAD(&f->rfd) < 0) return 1;
    int r = fr_refresh_pair(&f->rfd, &f->wfd, &f->stamp);
    if (r == 2 && LOAD(&f->mem->state)) fr_wakefd_poke(LOAD(&f->wfd));
    return r != 0;
}

/* Not from the handler: waits (yielding) while another thread replaces it. */
void fr_flag_refresh(fr_flag *f) {
    while (!fr_flag_refresh_try(f)) sched_yield();
}

/* R2 + R4: called from the handler. Last setter's signal and sender win; only
 * the clear -> set transition writes the descriptor, which stays readable
 * until fr_flag_clear drains it. */
int fr_flag_set(fr_flag *f, int signo, int sender) {
    fr_flagmem *m = f->mem;
    STORE_RELAXED(&m->sender, sender);
    STORE_RELAXED(&m->signo, signo);
    if (__atomic_exchange_n(&m->state, 1, __ATOMIC_SEQ_CST) == 0) {
        /* In a fork child, never the parent's descriptor: make it ours first. */
        if (LOAD(&f->wfd) >= 0 && fr_flag_refresh_try(f)) fr_wakefd_poke(LOAD(&f->wfd));
    }
    return 0;
}

/* Not called from the handler. If a setter races with us after the drain,
 * the flag is set again and we re-arm the descriptor so "readable while set"
 * stays true. `signo` and `sender` are left alone: they mean something only
 * while `state` is set (readers check it first), and zeroing them here would
 * wipe those of a setter that ran on another thread between the exchange and
 * the stores, leaving a set flag with no signal. */
int fr_flag_clear(fr_flag *f) {
    fr_flagmem *m = f->mem;
    fr_flag_refresh(f); /* never drain a parent's descriptor */
    if (__atomic_exchange_n(&m->state, 0, __ATOMIC_SEQ_CST) != 0) {
        int rfd = LOAD(&f->rfd);
        if (rfd >= 0) {
            fr_wakefd_drain(rfd);
            if (LOAD(&m->state)) fr_wakefd_poke(LOAD(&f->wfd));
        }
    }
    return 0;
}

/* Publish the write end before re-checking the state: a handler that sets
 * the flag after the store sees the descriptor and writes it; one that set it
 * before is caught by the check. */
void fr_flag_publish_fds(fr_flag *f, int rfd, int wfd) {
    STORE(&f->stamp, LOAD(&fr_fork_gen) * 2);
    STORE(&f->wfd, wfd);
    STORE(&f->rfd, rfd);
    if (LOAD(&f->mem->state)) fr_wakefd_poke(wfd);
}

void fr_flag_mark_shared(fr_flag *f) { STORE(&f->stamp, FASTREAP_STAMP_SHARED); }

/* Seal a shared flag's memfd against resizing: a holder that could shrink
 * it would kill every sharer with SIGBUS (inside the signal handler too).
 * Linux only (memfd seals, 3.17); elsewhere, or for a file that cannot be
 * sealed (the tempfile fallback), EINVAL. */
int fr_memfd_seal(int fd) {
#if FASTREAP_LINUX && defined(F_ADD_SEALS)
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
#else
    (void)fd;
    errno = EINVAL;
    return -1;
#endif
}

/* ---- binding ----------------------------------------------------------- */

static int valid_signo(int signo) {
    return signo > 0 && signo < FASTREAP_NSIG && signo != SIGKILL && signo != SIGSTOP;
}

int fr_bind(int signo, fr_flag *f) {
    if (!valid_signo(signo)) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < FASTREAP_MAX_BOUND; i++)
        if (LOAD(&fr_bound[signo][i]) == f) return 0;
    for (int i = 0; i < FASTREAP_MAX_BOUND; i++) {
        fr_flag *expected = NULL;
        if (__atomic_compare_exchange_n(&fr_bound[signo][i], &expected, f, 0, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST))
            return 0;
    }
    errno = ENOSPC;
    return -1;
}

int fr_unbind(int signo, fr_flag *f) {
    if (signo <= 0 || signo >= FASTREAP_NSIG) {
        errno = EINVAL;
        return -1;
    }
    for (int i = 0; i < FASTREAP_MAX_BOUND; i++) {
        fr_flag *expected = f;
        __atomic_compare_exchange_n(&fr_bound[signo][i], &expected, NULL, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST);
    }
    return 0;
}

/* A handler that loaded a slot just before fr_unbind cleared it may still be
 * using the flag; wait (bounded) until every running handler has returned. */
void fr_quiesce(void) {
    for (long i = 0; i < 1000000 && LOAD(&fr_inflight) > 0; i++) sched_yield();
}

/* ---- the main-thread kick ---------------------------------------------
 * Python runs a signal's handler only in the main thread, at its next
 * bytecode or when a blocking call there fails with EINTR. A signal that lands
 * on another thread, or on the main thread just before it enters a blocking
 * call (time.sleep, a read), leaves Stopped waiting until that call returns,
 * which may be never. So in exit mode the handler also arms a one-shot timer
 * made by fr_kick_setup, which sends the same signal to the main thread only
 * (SIGEV_THREAD_ID): after 1 ms, then 10 ms and 100 ms later while Python
 * has not run its handler (fr_kick_disarm, from that handler, stops it). The
 * kick's only effect is the EINTR: the handler tells it apart (SI_TIMER and
 * our cookie) and returns. Three kicks and no more: a C loop that retries on
 * EINTR with a fresh timeout must still finish. Linux only. */

#define FASTREAP_KICKS 3

static int fr_is_kick(const siginfo_t *info) {
    return info && info->si_code == SI_TIMER && info->si_value.sival_ptr == (void *)&fr_kick_cookie;
}

/* R2 + R4. Arm signo's timer to fire after ms milliseconds (< 1000; 0:
 * disarm). The timer calls are raw system calls, as the kernel takes them: the
 * libc wrappers moved from librt into libc in glibc 2.34 (a wheel must run on
 * older ones), and older musl has no SIGEV_THREAD_ID. Four longs are the
 * kernel's itimerspec on LP64 and its 32-bit one on ILP32. */
static void fr_kick_settime(int signo, long ms) {
#if FASTREAP_HAVE_KICK
    if (LOAD(&fr_kick_gen[signo]) != LOAD(&fr_fork_gen) + 1) return; /* none in this process */
    long its[4] = {0, 0, 0, ms * 1000000L}; /* interval (none), then the delay */
    (void)syscall(SYS_timer_settime, LOAD(&fr_kick_timer[signo]), 0, its, NULL);
#else
    (void)signo;
    (void)ms;
#endif
}

/* R2 + R4: from the handler, for a signal in exit mode, before it trips
 * Python (so the disarm of a handler that runs at once comes after it). */
static void fr_kick_arm(int signo) {
    if (LOAD(&fr_kick_off) == LOAD(&fr_fork_gen) + 1) return; /* Stopped raised, or exiting */
    STORE(&fr_kick_left[signo], FASTREAP_KICKS);
    __atomic_add_fetch(&fr_kicks_armed, 1, __ATOMIC_RELAXED);
    fr_kick_settime(signo, 1);
}

/* R2 + R4: a kick arrived; arm the next one, if any is left. */
static void fr_kick_next(int signo) {
    if (signo <= 0 || signo >= FASTREAP_NSIG) return;
    int left = LOAD(&fr_kick_left[signo]);
    while (left > 0 && !__atomic_compare_exchange_n(&fr_kick_left[signo], &left, left - 1, 0,
                                                    __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    if (left == FASTREAP_KICKS)
        fr_kick_settime(signo, 10);
    else if (left == FASTREAP_KICKS - 1)
        fr_kick_settime(signo, 100);
}

#if FASTREAP_HAVE_KICK
/* The kernel's struct sigevent (SIGEV_THREAD_ID needs its _tid, which older
 * musl does not name). */
struct fr_ksigevent {
    union sigval value;
    int signo;
    int notify;
    union {
        int pad[(64 - 2 * sizeof(int) - sizeof(union sigval)) / sizeof(int)];
        int tid;
    } un;
};
#ifndef SIGEV_THREAD_ID
#define SIGEV_THREAD_ID 4
#endif
#endif

int fr_kick_setup(int signo) {
    if (!valid_signo(signo)) {
        errno = EINVAL;
        return -1;
    }
#if FASTREAP_HAVE_KICK
    uint32_t want = LOAD(&fr_fork_gen) + 1;
    if (LOAD(&fr_kick_gen[signo]) == want) return 0;
    struct fr_ksigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.notify = SIGEV_THREAD_ID;
    sev.signo = signo;
    sev.value.sival_ptr = &fr_kick_cookie;
    sev.un.tid = (int)syscall(SYS_gettid);
    int t;
    if (syscall(SYS_timer_create, CLOCK_MONOTONIC, &sev, &t) < 0) return -1;
    /* A fork child inherits the number of its parent's timer, not the timer. */
    STORE(&fr_kick_timer[signo], t);
    STORE(&fr_kick_gen[signo], want);
    return 0;
#else
    errno = ENOSYS;
    return -1;
#endif
}

void fr_kick_disarm(int signo) {
    if (signo <= 0 || signo >= FASTREAP_NSIG) return;
    STORE(&fr_kick_left[signo], 0);
    fr_kick_settime(signo, 0); /* unconditionally: a racing arm may have set it since */
}

void fr_kick_disarm_all(void) {
    for (int s = 1; s < FASTREAP_NSIG; s++) fr_kick_disarm(s);
}

void fr_kick_enable(int on) {
    STORE(&fr_kick_off, on ? 0 : LOAD(&fr_fork_gen) + 1);
    if (!on) fr_kick_disarm_all();
}

uint64_t fr_kicks_armed_count(void) { return LOAD(&fr_kicks_armed); }

/* ---- the handler ------------------------------------------------------- */

static void fr_handler(int signo, siginfo_t *info, void *ctx) {
    int saved_errno = errno; /* R1 */
    /* Our kick, not a signal anyone sent: its EINTR was the point; no count,
     * no flag, no chain. */
    if (fr_is_kick(info)) {
        fr_kick_next(signo);
        errno = saved_errno; /* R1 */
        return;
    }
    __atomic_add_fetch(&fr_inflight, 1, __ATOMIC_SEQ_CST);
    if (signo > 0 && signo < FASTREAP_NSIG) {
        int sender = info ? (int)info->si_pid : 0;
        __atomic_add_fetch(&fr_counts[signo], 1, __ATOMIC_RELAXED); /* R2 */
        STORE_RELAXED(&fr_last_sender_v, sender);
        STORE(&fr_last_signo_v, signo);
        if (signo == SIGCHLD) {
            uint64_t i = __atomic_fetch_add(&fr_ring_head, 1, __ATOMIC_SEQ_CST);
            STORE(&fr_ring[i & (FASTREAP_RING - 1)], sender > 0 ? sender : -1);
        }
        for (int i = 0; i < FASTREAP_MAX_BOUND; i++) {
            fr_flag *f = LOAD(&fr_bound[signo][i]);
            if (f) fr_flag_set(f, signo, sender);
        }
        if (LOAD(&fr_gw_w) >= 0 && fr_gw_refresh_try()) fr_wakefd_poke(LOAD(&fr_gw_w)); /* R4 */
        int (*interrupt)(int) = LOAD(&fr_interrupt_fn);
        if (LOAD(&fr_exit_mode[signo]) && interrupt) {
            fr_kick_arm(signo);
            interrupt(signo); /* R3 */
        }
        switch (LOAD(&fr_chain_kind[signo])) {
            case 1:
                fr_chain_act[signo].sa_handler(signo);
                break;
            case 2:
                fr_chain_act[signo].sa_sigaction(signo, info, ctx);
                break;
            default:
                break;
        }
    }
    __atomic_sub_fetch(&fr_inflight, 1, __ATOMIC_SEQ_CST);
    errno = saved_errno; /* R1 */
}

/* ---- install / restore (not signal context) ---------------------------- */

int fr_save(int signo) {
    if (!valid_signo(signo)) {
        errno = EINVAL;
        return -1;
    }
    if (fr_saved_valid[signo]) return 0;
    if (sigaction(signo, NULL, &fr_saved[signo]) < 0) return -1;
    fr_saved_valid[signo] = 1;
    return 0;
}

int fr_install(int signo, int restart, int chain) {
    struct sigaction sa;
    if (!valid_signo(signo)) { /* before any table is indexed by signo */
        errno = EINVAL;
        return -1;
    }
    int newly_saved = !fr_saved_valid[signo];
    if (fr_save(signo) < 0) return -1;
    /* Chain only to a real function that was there before us. */
    const struct sigaction *prev = &fr_saved[signo];
    int kind = 0;
    if (chain) {
        if (prev->sa_flags & SA_SIGINFO) {
            if (prev->sa_sigaction != fr_handler) kind = 2;
        } else if (prev->sa_handler != SIG_DFL && prev->sa_handler != SIG_IGN) {
            kind = 1;
        }
    }
    STORE(&fr_chain_kind[signo], 0);
    if (kind) {
        fr_chain_act[signo] = *prev;
        STORE(&fr_chain_kind[signo], kind);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fr_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | (restart ? SA_RESTART : 0);
    if (signo == SIGCHLD) sa.sa_flags |= SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) < 0) {
        int e = errno;
        STORE(&fr_chain_kind[signo], 0);
        if (newly_saved) fr_saved_valid[signo] = 0;
        errno = e;
        return -1;
    }
    fr_installed[signo] = 1;
    return 0;
}

int fr_handler_installed(int signo) {
    struct sigaction cur;
    if (!valid_signo(signo)) {
        errno = EINVAL;
        return -1;
    }
    if (sigaction(signo, NULL, &cur) < 0) return -1;
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == fr_handler;
}

int fr_restore(int signo, int put_back) {
    if (!valid_signo(signo)) {
        errno = EINVAL;
        return -1;
    }
    if (!fr_saved_valid[signo]) return 0;
    /* Put the saved action back only while our handler is still the one
     * installed. If someone replaced it since (Python's signal.signal, a C
     * library, ctypes), theirs is newer than what we saved: leave it alone
     * and just forget our state. (A replacement racing between the query and
     * the set cannot be excluded: sigaction has no compare-and-swap.) */
    if (put_back < 0) {
        put_back = fr_handler_installed(signo);
        if (put_back < 0) return -1;
    }
    /* No kick may reach what we put back (SIG_DFL would kill): exit mode off,
     * every handler that might still arm one gone, the timer stopped; then
     * the swap. */
    int was_exit = LOAD(&fr_exit_mode[signo]);
    STORE(&fr_exit_mode[signo], 0);
    fr_quiesce();
    fr_kick_disarm(signo);
    if (put_back && sigaction(signo, &fr_saved[signo], NULL) < 0) {
        int e = errno;
        STORE(&fr_exit_mode[signo], was_exit);
        errno = e;
        return -1;
    }
    STORE(&fr_chain_kind[signo], 0);
    fr_saved_valid[signo] = 0;
    fr_installed[signo] = 0;
    return 0;
}

int fr_is_installed(int signo) {
    if (signo <= 0 || signo >= FASTREAP_NSIG) return 0;
    return fr_installed[signo];
}

void fr_set_exit(int signo, int on) {
    if (signo <= 0 || signo >= FASTREAP_NSIG) return;
    STORE(&fr_exit_mode[signo], on ? 1 : 0);
    if (!on) {
        fr_quiesce(); /* a handler that read exit mode before the store arms no kick after this */
        fr_kick_disarm(signo);
    }
}

void fr_set_interrupt_fn(int (*fn)(int)) { STORE(&fr_interrupt_fn, fn); }

uint64_t fr_count(int signo) {
    if (signo <= 0 || signo >= FASTREAP_NSIG) return 0;
    return LOAD(&fr_counts[signo]);
}

int fr_last_signo(void) { return LOAD(&fr_last_signo_v); }
int fr_last_sender(void) { return LOAD_RELAXED(&fr_last_sender_v); }

/* ---- global wake-up descriptor ----------------------------------------- */

int fr_global_wake_rfd(void) { return LOAD(&fr_gw_r); }

int fr_global_wake_open(void) {
    int r, w;
    if (LOAD(&fr_gw_r) >= 0) {
        fr_gw_refresh();
        return 0;
    }
    if (fr_wakefd_open(&r, &w) < 0) return -1;
    STORE(&fr_gw_stamp, LOAD(&fr_fork_gen) * 2);
    STORE(&fr_gw_w, w);
    STORE(&fr_gw_r, r);
    return 0;
}

void fr_global_wake_drain(void) {
    if (LOAD(&fr_gw_r) < 0) return;
    fr_gw_refresh(); /* never drain a parent's descriptor */
    fr_wakefd_drain(LOAD(&fr_gw_r));
}

/* ---- SIGCHLD ring ------------------------------------------------------ */

int fr_chld_drain(int *out, int max, int *lost) {
    uint64_t head = LOAD(&fr_ring_head);
    uint64_t tail = fr_ring_tail;
    int n = 0;
    *lost = 0;
    if (head - tail > FASTREAP_RING) {
        *lost = 1;
        tail = head - FASTREAP_RING;
    }
    while (tail < head && n < max) {
        int pid = __atomic_exchange_n(&fr_ring[tail & (FASTREAP_RING - 1)], 0, __ATOMIC_SEQ_CST);
        if (pid > 0)
            out[n++] = pid;
        else
            *lost = 1; /* slot not written yet, or sender unknown */
        tail++;
    }
    fr_ring_tail = tail;
    return n;
}
