"""Secrets never leave the process: an API key read from the environment is remembered here, and
every message, log line and stored error passes through `redact` before it is shown or written.

A server may echo the key back in an error body ("invalid key sk-..."); without this it would be
printed, written to a unit's log and stored in a teach summary.
"""

from __future__ import annotations

import threading

MASK = "[REDACTED]"  # upper case: rich reads "[lower case]" as markup
_SHORTEST = 4  # shorter values are too likely to occur by chance to be masked everywhere
_secrets: set[str] = set()
_lock = threading.Lock()


def remember_secret(value: str | None) -> None:
    """Mask `value` in everything `redact` sees from now on, in this process."""
    if value and len(value) >= _SHORTEST:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """`text` with every remembered secret replaced by `[REDACTED]`."""
    text = str(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
