"""Build the two extensions: fastreap._core (Cython plus the plain C in _csrc/)
and fastreap._bench._cref (plain C: the C references of `fastreap bench`)."""

import os
import sys

from setuptools import Extension, setup

if sys.platform == "win32" or os.name != "posix":
    raise SystemExit("fastreap needs a POSIX system (Linux or macOS); Windows is not supported.")

from Cython.Build import cythonize

DEBUG = os.environ.get("FASTREAP_DEBUG_BUILD") == "1"
CFLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unused-function"]
LDFLAGS = []
if DEBUG:
    # Sanitizer build (ASan + UBSan); run with LD_PRELOAD of libasan, see README.
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    CFLAGS += ["-O0", "-g3", "-UNDEBUG", *san]
    LDFLAGS += san
else:
    CFLAGS += ["-O2"]

DIRECTIVES = {"language_level": 3, "freethreading_compatible": False, "embedsignature": True}

core = Extension(
    "fastreap._core",
    sources=[
        "src/fastreap/_core.pyx",
        "src/fastreap/_csrc/handler.c",
        "src/fastreap/_csrc/reap.c",
        # One backend each, wholly guarded by its platform's #if.
        "src/fastreap/_csrc/poller_epoll.c",
        "src/fastreap/_csrc/poller_kqueue.c",
    ],
    include_dirs=["src/fastreap/_csrc"],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)

# The C references of `fastreap bench`: their own small extension, not in _core.
cref = Extension(
    "fastreap._bench._cref",
    sources=["src/fastreap/_bench/_cref.c"],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)

setup(ext_modules=cythonize([core, cref], compiler_directives=DIRECTIVES, include_path=["src"]))
