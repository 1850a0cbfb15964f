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
