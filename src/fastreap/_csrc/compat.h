/* compat.h: platform macros and raw syscall numbers for fastreap.
 *
 * pidfd_open / pidfd_send_signal are called through syscall() with the numbers
 * below so that the extension builds against old headers (manylinux_2_28 ships
 * glibc 2.28, which has no wrappers) and needs no newer glibc symbol at run time.
 * The numbers are the same on every Linux architecture since 5.1/5.3 (they were
 * allocated in the unified syscall table).
 */
#ifndef FASTREAP_COMPAT_H
#define FASTREAP_COMPAT_H

#if defined(__linux__)
#define FASTREAP_LINUX 1
#include <sys/syscall.h>
#ifndef __NR_pidfd_send_signal
#define __NR_pidfd_send_signal 424
#endif
#ifndef FR_P_PIDFD
#define FR_P_PIDFD 3 /* idtype_t P_PIDFD, Linux 5.4 */
#endif
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
/* memfd seals (3.17); the values are the kernel's, for headers that lack them. */
#include <fcntl.h>
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif
#else
#define FASTREAP_LINUX 0
#endif

#if defined(__APPLE__)
#define FASTREAP_APPLE 1
#else
#define FASTREAP_APPLE 0
#endif

/* One backend file per platform (poller_epoll.c, poller_kqueue.c). */
#if !FASTREAP_LINUX && !FASTREAP_APPLE
#error "fastreap supports Linux and macOS only"
#endif

#endif /* FASTREAP_COMPAT_H */
