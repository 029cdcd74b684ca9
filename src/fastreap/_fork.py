"""The fork rule: a fork child runs nothing of fastreap until it uses it.

Every fork() of a program that imported fastreap (its ``subprocess`` and
``multiprocessing`` forks, a pool's workers) pays for whatever runs in the
child: each page the child writes is copied. So fastreap registers no
``os.register_at_fork`` hook until the program asks for exit mode
(``handle_signals(exit=True)``: the child needs its own kick timers before
any signal comes, see ``_flags._kick_hooks``); what the child must not share
with its parent is renewed on first use instead:

1. C (``_csrc/handler.c``): a pthread_atfork child handler bumps the fork
   generation (``_core.fork_generation()``): one store. Descriptors the child
   shares with its parent (a private flag's, the global wake-up one) carry
   the generation they were opened in; the first touch in the child (the
   signal handler, any ``StopFlag`` method, the watcher's poller) moves new
   ones onto the same numbers, so numbers handed out before the fork stay
   valid and never wake the parent.
2. ``_flags``: the books lock is made per generation (``PerProcess``); the
   one-``Stopped`` latch records the generation it was spent in, so a fork
   re-arms it.
3. ``_watcher``: a watcher records its generation and reports itself closed
   in any other; ``current()`` builds the child's own on first use and
   closes the parent's descriptors then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from . import _core

T = TypeVar("T")

generation: Callable[[], int] = _core.fork_generation


class PerProcess(Generic[T]):
    """``make()``'s result, made again on first use in each fork child (a lock
    that another thread held at fork time stays behind with the parent's)."""

    __slots__ = ("_by_gen", "_make")

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._by_gen: dict[int, T] = {}

    def get(self) -> T:
        g = generation()
        v = self._by_gen.get(g)
        if v is None:
            # One winner among threads racing here (setdefault is atomic under
            # the GIL); the parent's entry is dropped.
            v = self._by_gen.setdefault(g, self._make())
            for k in list(self._by_gen):
                if k != g:
                    self._by_gen.pop(k, None)
        return v
