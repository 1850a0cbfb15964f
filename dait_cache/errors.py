"""User-facing errors. The CLI turns each into a one-line message, never a traceback."""


class DaitError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class DatasetError(DaitError):
    """A dataset folder or annotation file is missing or malformed."""


class BadImageError(DaitError):
    """An image file cannot be decoded."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
        super().__init__(
            f"cannot decode image {path}: {reason}. Replace the file, or pass "
            "--on-bad-image skip to leave it out (recorded in the cache manifest)."
        )


class CacheError(DaitError):
    """A cache is missing, incomplete, corrupt or was built with other settings."""


class ModelError(DaitError):
    """A model name is unknown or its weights cannot be obtained."""


def _lines(exc: BaseException) -> list[str]:
    return [line.strip() for line in str(exc).splitlines() if line.strip()]


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none)."""
    lines = _lines(exc)
    return (lines[0] if lines else type(exc).__name__)[:limit]


def load_failure(exc: Exception) -> str:
    """What went wrong loading a weights file, in a few words. torch's own advice to retry with
    ``weights_only=False`` would run whatever code a pickle holds: it is never repeated."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return "not tensors torch loads with weights_only=True: damaged, not a torch file, or a pickle that runs code"
    lines = _lines(exc)
    return f"{type(exc).__name__}: {' '.join(lines[:2])[:200]}" if lines else type(exc).__name__
