"""One encoding of "until when": a ``Deadline`` on the monotonic clock.

Public calls take ``timeout`` in seconds (None: no limit), validated once by
``_args.check_timeout``; from then on the code carries a ``Deadline``, whose
``remaining()`` is what the C waits take (seconds, or -1.0 for "forever").
"""

from __future__ import annotations

import time


class Deadline:
    """An absolute point on ``time.monotonic()``, or never (``at is None``)."""

    __slots__ = ("at",)

    def __init__(self, at: float | None) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """``seconds`` from now (already validated); None: never."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left (0.0 once passed), or -1.0 if it never comes: the
        encoding of the C waits (``poller_wait``, ``wait_readable``)."""
        if self.at is None:
            return -1.0
        return max(0.0, self.at - time.monotonic())

    def seconds(self) -> float | None:
        """Seconds left (0.0 once passed), or None if it never comes."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def passed(self, now: float | None = None) -> bool:
        if self.at is None:
            return False
        return (time.monotonic() if now is None else now) >= self.at

    def __repr__(self) -> str:
        return "Deadline(never)" if self.at is None else f"Deadline(in {self.at - time.monotonic():.3f}s)"


NEVER = Deadline(None)
