/* handler.h: the C API of fastreap's async-signal-safe core (see handler.c). */
#ifndef FASTREAP_HANDLER_H
#define FASTREAP_HANDLER_H

#include <signal.h>
#include <stdint.h>

/* Highest signal number fastreap handles, exclusive (Linux NSIG is 65). */
#define FASTREAP_NSIG 65
/* How many stop flags one signal can set. */
#define FASTREAP_MAX_BOUND 16
/* SIGCHLD senders remembered between two drains (power of two). */
#define FASTREAP_RING 4096

/* The part of a stop flag that may live in memory shared between processes.
 * `state` is the flag itself; C code polls it with an atomic load. */
typedef struct fr_flagmem {
    uint32_t state; /* 0 clear, 1 set (accessed with __atomic builtins) */
    int32_t signo;  /* last signal that set it, 0 when set by hand; only while set */
    int32_t sender; /* pid that sent that signal (si_pid), 0 if unknown; only while set */
    uint32_t reserved;
} fr_flagmem;

/* One process's view of a flag: its memory and its wake-up descriptors.
 * `rfd` is readable while the flag is set; `wfd` is where setters write
 * (the same eventfd on Linux, the two ends of a pipe elsewhere). `stamp`
 * says whose descriptors they are (see "fork generations" below):
 * fork generation * 2 when this process's, + 1 while being replaced, or
 * FASTREAP_STAMP_SHARED for a shared flag (its descriptors are everyone's). */
typedef struct fr_flag {
    fr_flagmem *mem;
    int rfd;
    int wfd;
    uint32_t stamp;
} fr_flag;

#define FASTREAP_STAMP_SHARED UINT32_MAX

/* ---- fork generations ----------------------------------------------------
 * A pthread_atfork child handler (registered once, by fr_fork_hook_install)
 * bumps the generation in the child of every fork(): one store, nothing else
 * runs there. Descriptors inherited from the parent (a private flag's, the
 * global wake-up one) carry the generation they were opened in; whoever
 * first touches them in a later generation (the handler, a StopFlag method,
 * the watcher) moves a new eventfd onto the same numbers (fr_flag_refresh),
 * so a number handed out before the fork stays valid and is this process's
 * own from then on. The Python layer compares the generation the same way
 * for its locks and the watcher (fastreap/_fork.py). */
int fr_fork_hook_install(void); /* idempotent; 0, or -1 with errno */
uint32_t fr_fork_generation(void);
/* Make f's descriptors this process's if they are a parent's (async-signal-
 * safe: eventfd/pipe, dup3/dup2, fcntl, close), re-armed if the flag is set.
 * 1 when they are this process's (or shared) on return; 0 when another
 * caller in this process is replacing them right now (it re-arms them once
 * done). A failed replacement keeps the parent's (spurious wake-ups only). */
int fr_flag_refresh_try(fr_flag *f);
/* The same, not from the handler: waits (yielding) while another thread of
 * this process replaces them. */
void fr_flag_refresh(fr_flag *f);
static inline int fr_flag_is_stale(const fr_flag *f) {
    uint32_t s = __atomic_load_n(&f->stamp, __ATOMIC_RELAXED);
    return s != FASTREAP_STAMP_SHARED && __atomic_load_n(&f->rfd, __ATOMIC_RELAXED) >= 0 &&
           s != fr_fork_generation() * 2;
}

/* The main-thread kick (handler.c): make signo's timer for the calling
 * thread, which must be the main one (once per process and fork child; 0, or
 * -1 with errno, ENOSYS off Linux); stop the kicks pending for one signal or
 * for all. */
int fr_kick_setup(int signo);
void fr_kick_disarm(int signo);
void fr_kick_disarm_all(void);
/* Kicks off (Stopped was raised; the interpreter is exiting: Python may set
 * SIG_DFL behind us) or on again, in this process (a fork child starts on). */
void fr_kick_enable(int on);
uint64_t fr_kicks_armed_count(void);

/* Flag operations; fr_flag_set is async-signal-safe. */
int fr_flag_set(fr_flag *f, int signo, int sender);
int fr_flag_clear(fr_flag *f);
static inline int fr_flag_is_set(const fr_flag *f) {
    return __atomic_load_n(&f->mem->state, __ATOMIC_ACQUIRE) != 0;
}
static inline int fr_flag_signo(const fr_flag *f) {
    return __atomic_load_n(&f->mem->signo, __ATOMIC_RELAXED);
}
static inline int fr_flag_sender(const fr_flag *f) {
    return __atomic_load_n(&f->mem->sender, __ATOMIC_RELAXED);
}
/* Give a flag its descriptors (once), then re-arm if it is already set. */
void fr_flag_publish_fds(fr_flag *f, int rfd, int wfd);
/* Mark a shared flag's descriptors as everyone's (before it is bound). */
void fr_flag_mark_shared(fr_flag *f);
/* Make a wake-up descriptor pair (eventfd or pipe), non-blocking, close-on-exec. */
int fr_wakefd_open(int *rfd, int *wfd);
/* Empty a wake-up descriptor. */
void fr_wakefd_drain(int rfd);
/* Write one wake-up; async-signal-safe. */
void fr_wakefd_poke(int wfd);

/* Seal a shared flag's memfd (no shrink, no grow, no more seals); 0 or -1
 * with errno (EINVAL where there are no seals). */
int fr_memfd_seal(int fd);

/* The process default flag (static memory, so its address never changes). */
extern fr_flag fr_default_flag;

/* Bind or unbind a flag to a signal's handler; return 0, or -1 with errno. */
int fr_bind(int signo, fr_flag *f);
int fr_unbind(int signo, fr_flag *f);
/* Wait until no handler invocation is running (after unbinding, before freeing). */
void fr_quiesce(void);

/* Install the handler for signo, saving what was there the first time.
 * restart: SA_RESTART; chain: call the saved handler after ours if it is a
 * function. Returns 0 or -1 with errno. */
int fr_install(int signo, int restart, int chain);
/* Save the current disposition without installing (for the exit=True dance). */
int fr_save(int signo);
/* 1 if fr_handler is installed for signo right now (sigaction query), 0 if
 * another disposition is, -1 with errno. */
int fr_handler_installed(int signo);
/* Forget the saved disposition, and put it back when put_back is 1, or
 * when it is -1 and our handler is still installed (a newer handler stays);
 * 0 or -1 with errno. */
int fr_restore(int signo, int put_back);
/* 1 if our handler is the one installed for signo according to our books. */
int fr_is_installed(int signo);
/* Ask the handler to call the interrupt function (PyErr_SetInterruptEx). */
void fr_set_exit(int signo, int on);
void fr_set_interrupt_fn(int (*fn)(int));

/* Counters and last sender. */
uint64_t fr_count(int signo);
int fr_last_signo(void);
int fr_last_sender(void);

/* The global wake-up descriptor: poked on every handled signal. Opened on
 * first use; in a fork child, replaced on first use (poked once then, in
 * case a handler skipped it meanwhile). */
int fr_global_wake_rfd(void);  /* -1 before fr_global_wake_open */
int fr_global_wake_open(void); /* idempotent; refreshes after fork; 0 or -1 */
void fr_global_wake_drain(void);

/* SIGCHLD senders: copy up to max pids out; *lost set when the ring overflowed. */
int fr_chld_drain(int *out, int max, int *lost);

#endif /* FASTREAP_HANDLER_H */
