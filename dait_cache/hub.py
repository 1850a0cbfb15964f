"""Hugging Face Hub reachability, checked once per process.

Without a network, huggingface_hub retries each weights download for about a minute, printing a
warning per retry, before it gives up. When the hub cannot be reached (or ``HF_HUB_OFFLINE`` is
set), switch it to offline mode instead: weights already in the local cache still load, missing
ones fail at once with the caller's one-line error.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import urlparse

log = logging.getLogger(__name__)
PROBE_SECONDS = 3.0


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether a TCP connection to the hub opens within a few seconds (asked once per process)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(_endpoint(), timeout=PROBE_SECONDS).close()
        return True
    except OSError:
        return False


def prefer_offline() -> bool:
    """Before a hub download: offline mode when the hub cannot be reached. Returns True if offline."""
    if hub_reachable():
        return False
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        log.debug("the Hugging Face Hub at %s:%d cannot be reached: using the local cache only", *_endpoint())
        constants.HF_HUB_OFFLINE = True  # read at each request: no retries, cached files still load
    return True
