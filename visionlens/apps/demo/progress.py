"""Step lines for the demo: one line per step on stderr, with its elapsed seconds.

``make demo`` runs for a minute or two; a silent terminal looks like a hang. :class:`Steps` prints
``[demo  12.3 s] direct logit attribution ... done (0.8 s)``. It is off when ``enabled`` is false
(tests pass ``progress=False``) and, by default, when the ``CI`` environment variable is set.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator, Optional

__all__ = ["Steps", "progress_default"]


def progress_default() -> bool:
    """Progress is on unless the ``CI`` environment variable is set (to anything but ``0``/``false``)."""
    return os.environ.get("CI", "").strip().lower() in ("", "0", "false", "no")


class Steps:
    """``with steps("name"):`` prints the step's start and its duration; :meth:`note` prints a free line."""

    def __init__(self, enabled: Optional[bool] = None, prefix: str = "demo") -> None:
        self.enabled = progress_default() if enabled is None else bool(enabled)
        self.prefix = prefix
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}

    def _say(self, text: str) -> None:
        if self.enabled:
            print(f"[{self.prefix} {time.perf_counter() - self.t0:6.1f} s] {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        self._say(text)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._say(f"{name} ...")
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.times[name] = round(dt, 2)
            self._say(f"{name}: done in {dt:.1f} s")
