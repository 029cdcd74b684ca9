"""The one at-fork hook: what the child of a fork needs, in a fixed order
that does not depend on which module was imported first.

1. ``_core``: the child's own wake-up descriptors for the stop flags (the
   parent's are shared across fork).
2. ``_flags``: a fresh lock over the handler books.
3. ``_watcher``: a fresh watcher; the parent's descriptors are closed.

Keep it small: it runs in every fork child, including every
``subprocess``/``multiprocessing`` fork of a program that imported fastreap.
"""

from __future__ import annotations

import os

from . import _core, _flags, _watcher


def _after_fork_in_child() -> None:
    _core._after_fork_in_child()
    _flags.after_fork_in_child()
    _watcher.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
