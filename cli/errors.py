"""Library errors and interruptions as the terminal shows them: one line, a known exit code."""

from __future__ import annotations

import functools
import sys

import click

from dait_cache.errors import DaitError

from .render import console


def user_errors(fn):
    """Turn library errors into one-line click errors (exit 1), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaitError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through _terminate
            terminated = isinstance(exc, Terminated)
            console.print(f"{'terminated' if terminated else 'interrupted'}: finished shards and the last "
                          "checkpoint are kept; rerun the same command (with --resume for training) to continue")
            sys.exit(143 if terminated else 130)

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: runs record 'interrupted' and the exit code is 143."""
