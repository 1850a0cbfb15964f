"""The HDF5 feature cache (format version 1, docs/design.md section 4)."""

from .manifest import FORMAT_VERSION, read_manifest
from .reader import Cache, open_cache
from .verify import cache_warnings, verify_cache

__all__ = ["FORMAT_VERSION", "Cache", "cache_warnings", "open_cache", "read_manifest", "verify_cache"]
