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
 * (the same eventfd on Linux, the two ends of a pipe elsewhere). */
typedef struct fr_flag {
    fr_flagmem *mem;
    int rfd;
    int wfd;
} fr_flag;

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

/* The global wake-up descriptor: poked on every handled signal. */
int fr_global_wake_rfd(void);
int fr_global_wake_open(void);   /* idempotent */
int fr_global_wake_reopen(void); /* after fork, in the child */

/* SIGCHLD senders: copy up to max pids out; *lost set when the ring overflowed. */
int fr_chld_drain(int *out, int max, int *lost);

#endif /* FASTREAP_HANDLER_H */
