"""Whether the Hugging Face hub can be reached, asked once by name lookup before a download.

Offline, the hub's clients retry each request for half a minute or more, printing each retry, before they
fail; a failed name lookup is final at once. Where the hub cannot be reached, gptlit's downloads say so in one
line, and ``offline()`` puts the clients in their offline mode so that what they have cached still serves.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def reachable() -> bool:
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        return True
    except OSError:
        return False


def go_offline_unless_reachable() -> None:
    """Switch huggingface_hub and datasets to their offline mode (cache only, no retries) when the hub cannot be
    reached; also for processes started from this one."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    # Both read the variable when imported; set what they already read.
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
