"""SIGTERM and Ctrl-C: raised at once, and remembered in case that raise is lost."""

from __future__ import annotations

import signal

from dait_cache.stops import hide_lost_stops


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: runs record 'interrupted' and the exit code is 143."""


_pending: list[type[KeyboardInterrupt]] = []


def _on_signal(signum: int, frame) -> None:
    # Python prints and drops an exception raised while it runs a __del__ or a weakref callback,
    # and the run would go on to its end: the stop is remembered, and the next progress update
    # raises it again.
    exc = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    _pending.append(exc)
    raise exc()


def install() -> None:
    """Handle SIGTERM like Ctrl-C, and Ctrl-C itself where Python would (not where it is ignored)."""
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_signal)
    hide_lost_stops(lambda: bool(_pending))


def raise_pending() -> None:
    """Raise again a stop whose first raise was lost; called on every progress update."""
    if _pending:
        raise _pending[-1]()


def clear_pending() -> None:
    """The stop was handled (the command says what was kept and exits)."""
    _pending.clear()
