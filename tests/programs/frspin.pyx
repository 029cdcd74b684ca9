# cython: language_level=3
"""Compiled by tests/test_flags.py: a user's Cython module that cimports
fastreap/_core.pxd and polls a stop flag inside a nogil loop."""
from libc.stdint cimport uint32_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastreap._core cimport flag_is_set, flag_word, stop_flag_word


cdef long long _spin(const uint32_t *word, double limit) noexcept nogil:
    """Busy C loop until the flag is set: iterations done, or -1 after limit s."""
    cdef long long n = 0
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    cdef double end = ts.tv_sec + ts.tv_nsec * 1e-9 + limit
    while not flag_is_set(word):
        n += 1
        if (n & 0xFFFFF) == 0:  # the clock only as a safety net against a hang
            clock_gettime(CLOCK_MONOTONIC, &ts)
            if ts.tv_sec + ts.tv_nsec * 1e-9 > end:
                return -1
    return n


def spin_default(double limit):
    """Spin on the process default flag (via the capsule) with the GIL released."""
    cdef const uint32_t *word = stop_flag_word()
    cdef long long n
    with nogil:
        n = _spin(word, limit)
    return n


def spin_flag(flag, double limit):
    """Spin on a given StopFlag's word with the GIL released."""
    cdef const uint32_t *word = flag_word(flag)
    cdef long long n
    with nogil:
        n = _spin(word, limit)
    return n


def is_set_default():
    return flag_is_set(stop_flag_word())
