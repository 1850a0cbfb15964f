"""The one callback type of long loops: ``progress(key, done, total)`` (a split, an epoch, the
runs of a plan). The library only calls it; ``cli/`` draws it."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
