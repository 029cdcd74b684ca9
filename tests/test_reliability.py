"""Reliability: fastreap keeps working when its host does unusual things."""

from __future__ import annotations

import subprocess
import sys
from unittest import mock

import fastreap


def test_watch_survives_monkeypatched_popen() -> None:
    """A real Popen is still recognised while subprocess.Popen is patched
    (CPython's own test_subprocess does this; it used to raise AttributeError)."""
    p = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    class Recording(subprocess.Popen):  # type: ignore[type-arg]
        pass

    with mock.patch("subprocess.Popen", Recording):
        c = fastreap.watch(p)
        assert c.wait(timeout=30) == 3
    assert p.returncode == 3
    assert p.poll() == 3
