"""fastreap: the lifecycle of child processes, with a compiled core.

The public API is ``fastreap`` (the names in ``fastreap.__all__``, listed
under CLASSES, FUNCTIONS and DATA below) and ``fastreap.aio`` (asyncio:
``wait_for_stop``, ``wait``, ``graceful_stop``).

Worker side: ``handle_signals``, ``graceful``, ``stop_requested``,
``StopFlag``, ``Stopped``, ``restore_signals``, ``Process``.
Parent side: ``watch`` -> ``Child``, ``wait``, ``graceful_stop`` /
``terminate`` / ``kill`` -> ``StopReport``, ``reap``, ``set_subreaper``,
``counters`` -> ``Counters``; types ``Target``, ``ReturnWhen``,
``ExitStatus``, ``ChildLostError``.
Spawning: ``spawn``, ``run_all``, ``Pool``, ``ProcessPoolExecutor``,
``WorkerDiedError``; ``install`` / ``uninstall`` route the stdlib's
subprocess, multiprocessing and asyncio waits through fastreap.

Every module whose name starts with an underscore (listed under PACKAGE
CONTENTS by help(), which lists every module of a package) is private and
may change; docs/ARCHITECTURE.md maps them.
"""

import os as _os
import sys as _sys

if _sys.platform == "win32" or _os.name != "posix":
    raise ImportError("fastreap requires a POSIX system (Linux or macOS); Windows is not supported")

__version__ = "0.1.0.dev0"

try:
    from . import _core  # noqa: F401
except ImportError as e:  # pragma: no cover - a broken install
    raise ImportError(
        "fastreap's compiled core (fastreap._core) is missing or does not load: "
        f"{e}. Install a wheel, or build from source with a C compiler: pip install ."
    ) from e

# `import fastreap` loads the compiled core and nothing else: every other
# public name is loaded on first use (PEP 562, below). Whatever a program
# imports, every later fork() of it pays for (a fork copies its page tables,
# and each stdlib module with an at-fork hook, threading and logging among
# them, runs Python code in every child): with everything imported eagerly,
# fork + _exit + waitpid took 3.6x as long as without fastreap (2 cores,
# 3.13). See _fork for what a fork child runs (nothing, until it uses us).
from ._core import StopFlag, stop_requested

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from ._children import (
        ALL_EXITED,
        FIRST_EXITED,
        Child,
        Counters,
        ReturnWhen,
        StopReport,
        Target,
        counters,
        graceful_stop,
        kill,
        reap,
        set_subreaper,
        terminate,
        wait,
        watch,
    )
    from ._flags import Stopped, graceful, handle_signals, restore_signals
    from ._install import install, uninstall
    from ._pool import Pool, ProcessPoolExecutor, WorkerDiedError
    from ._process import Process
    from ._spawn import run_all, spawn
    from ._status import ChildLostError, ExitStatus

# Public name -> the private module that defines it, imported on first access.
_LAZY = {
    **dict.fromkeys(
        (
            "ALL_EXITED",
            "FIRST_EXITED",
            "Child",
            "Counters",
            "ReturnWhen",
            "StopReport",
            "Target",
            "counters",
            "graceful_stop",
            "kill",
            "reap",
            "set_subreaper",
            "terminate",
            "wait",
            "watch",
        ),
        "_children",
    ),
    **dict.fromkeys(("Stopped", "graceful", "handle_signals", "restore_signals"), "_flags"),
    **dict.fromkeys(("ChildLostError", "ExitStatus"), "_status"),
    **dict.fromkeys(("install", "uninstall"), "_install"),
    **dict.fromkeys(("Pool", "ProcessPoolExecutor", "WorkerDiedError"), "_pool"),
    "Process": "_process",
    **dict.fromkeys(("run_all", "spawn"), "_spawn"),
}


def __getattr__(name: str) -> object:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastreap' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ALL_EXITED",
    "FIRST_EXITED",
    "Child",
    "ChildLostError",
    "Counters",
    "ExitStatus",
    "Pool",
    "Process",
    "ProcessPoolExecutor",
    "ReturnWhen",
    "StopFlag",
    "StopReport",
    "Stopped",
    "Target",
    "WorkerDiedError",
    "__version__",
    "counters",
    "graceful",
    "graceful_stop",
    "handle_signals",
    "install",
    "kill",
    "reap",
    "restore_signals",
    "run_all",
    "set_subreaper",
    "spawn",
    "stop_requested",
    "terminate",
    "uninstall",
    "wait",
    "watch",
]
