# The single Cython seam to handler.h (see handler.c for the signal-safety rules).
from libc.stdint cimport int32_t, uint32_t, uint64_t


cdef extern from "handler.h" nogil:
    const int FASTREAP_NSIG
    const int FASTREAP_MAX_BOUND

    ctypedef struct fr_flagmem:
        uint32_t state
        int32_t signo
        int32_t sender

    ctypedef struct fr_flag:
        fr_flagmem *mem
        int rfd
        int wfd
        uint32_t stamp

    int fr_fork_hook_install()
    uint32_t fr_fork_generation()
    int fr_flag_refresh_try(fr_flag *f)
    void fr_flag_refresh(fr_flag *f)
    int fr_flag_is_stale(const fr_flag *f)

    int fr_flag_set(fr_flag *f, int signo, int sender)
    int fr_flag_clear(fr_flag *f)
    int fr_flag_is_set(const fr_flag *f)
    int fr_flag_signo(const fr_flag *f)
    int fr_flag_sender(const fr_flag *f)
    void fr_flag_publish_fds(fr_flag *f, int rfd, int wfd)
    void fr_flag_mark_shared(fr_flag *f)
    int fr_wakefd_open(int *rfd, int *wfd)
    void fr_wakefd_drain(int rfd)
    void fr_wakefd_poke(int wfd)
    int fr_memfd_seal(int fd)

    fr_flag fr_default_flag

    int fr_bind(int signo, fr_flag *f)
    int fr_unbind(int signo, fr_flag *f)
    void fr_quiesce()
    int fr_install(int signo, int restart, int chain)
    int fr_save(int signo)
    int fr_handler_installed(int signo)
    int fr_restore(int signo, int put_back)
    int fr_is_installed(int signo)
    void fr_set_exit(int signo, int on)
    int fr_kick_setup(int signo)
    void fr_kick_disarm_all()
    void fr_kick_enable(int on)
    uint64_t fr_kicks_armed_count()
    void fr_set_interrupt_fn(int (*fn)(int) noexcept)

    uint64_t fr_count(int signo)
    int fr_last_signo()
    int fr_last_sender()

    int fr_global_wake_rfd()
    int fr_global_wake_open()
    void fr_global_wake_drain()
    int fr_chld_drain(int *out, int max, int *lost)
