# Polling fastreap's stop flags from C-speed Cython code.
#
#     from fastreap._core cimport stop_flag_word, flag_word, flag_is_set
#
#     cdef const uint32_t *stop = stop_flag_word()   # with the GIL, once
#     with nogil:
#         while not flag_is_set(stop):                # one atomic load
#             ...one slice of work...
#
# A flag is a 32-bit word that is non-zero while it is set; the C signal
# handler (or StopFlag.set(), or another process for shared flags) sets it
# with a sequentially consistent store, and flag_is_set() reads it with an
# acquire load, so a loop sees it on its next check without the GIL.
# Nothing here needs fastreap's headers or include path: only this file.
# From plain C, the same word comes from
#     PyCapsule_Import("fastreap._core._stop_flag", 0)
# and any StopFlag's word from its integer `address` attribute.

from cpython.pycapsule cimport PyCapsule_Import
from libc.stdint cimport uint32_t, uintptr_t


cdef extern from *:
    """
    #include <stdint.h>
    static inline int fr_word_is_set(const uint32_t *word) {
        return __atomic_load_n(word, __ATOMIC_ACQUIRE) != 0;
    }
    """
    bint fr_word_is_set(const uint32_t *word) nogil


cdef inline const uint32_t *stop_flag_word() except NULL:
    """The process default flag's word (what fastreap.stop_requested() reads).
    Call with the GIL held; the address never changes for the process."""
    return <const uint32_t *>PyCapsule_Import(b"fastreap._core._stop_flag", 0)


cdef inline const uint32_t *flag_word(object flag) except NULL:
    """Any fastreap.StopFlag's word; valid while that flag object lives."""
    cdef uintptr_t address = flag.address
    return <const uint32_t *>address


cdef inline bint flag_is_set(const uint32_t *word) noexcept nogil:
    """True once the flag is set: one atomic load, safe in nogil loops."""
    return fr_word_is_set(word)
