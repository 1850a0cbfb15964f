"""A stop (Ctrl-C, SIGTERM) whose raise Python dropped: raised again later, and not printed."""

from __future__ import annotations

import sys
from collections.abc import Callable


def hide_lost_stops(taken: Callable[[], bool]) -> None:
    """Say nothing of a stop whose raise Python dropped, once ``taken()`` says a stop came.

    A stop raised while Python runs a ``__del__``, a weakref callback or an at-fork hook (a
    DataLoader forking its workers) is printed as "Exception ignored in ..." with a traceback
    under the command's one-line message, and dropped; the stop is remembered and raised again
    at the next batch or progress update. Anything else Python drops is still printed.
    """

    # the hook it replaces (Python's, or a test runner's that reports them) gets the rest; a second
    # call replaces its own hook instead of wrapping it
    previous = getattr(sys.unraisablehook, "replaced", sys.unraisablehook)

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt) and taken():
            return
        previous(unraisable)

    hook.replaced = previous  # type: ignore[attr-defined]
    sys.unraisablehook = hook
