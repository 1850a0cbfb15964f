"""Library errors and interruptions as the terminal shows them: one line, a known exit code."""

from __future__ import annotations

import errno
import functools
import shlex
import sys

import click

from dait_cache.errors import DaitError

from .render import console
from .signals import Terminated, clear_pending

# a read-only file system or a folder the user may not write: the fix is another place
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def user_errors(fn):
    """Turn library errors into one-line click errors (exit 1), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaitError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            raise click.ClickException(
                f"cannot write {exc.filename or 'to the workspace'}: {exc.strerror}; choose a writable "
                "--workdir (or output path), or fix the folder's permissions"
            ) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through _terminate
            terminated = isinstance(exc, Terminated)
            clear_pending()
            command = click.get_current_context().command.name
            console.print(
                f"{'terminated' if terminated else 'interrupted'}: {resume_hint(command, sys.argv[1:])}",
                soft_wrap=True,
                markup=False,
            )
            sys.exit(143 if terminated else 130)

    return wrapper


def resume_hint(command: str, args: list[str]) -> str:
    """What was kept and the exact command that continues (training needs --resume)."""
    again = ["dait-cache", *args]
    if command in ("train-teacher", "train-student"):
        kept = "the last checkpoint (at most --checkpoint-minutes of training) is kept"
        if "--resume" not in args:
            again.append("--resume")
    elif command == "encode":
        kept = "finished shards are kept"
    elif command in ("demo", "study"):
        kept = "finished runs and each run's last checkpoint are kept"
    else:
        kept = "nothing was half-written"
    return f"{kept}; continue with: {shlex.join(again)}"
