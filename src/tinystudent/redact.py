"""Secrets never leave the process: an API key read from the environment is remembered here, and
every message, log line and stored error passes through `redact` before it is shown or written.

A server may echo the key back in an error body ("invalid key sk-..."); without this it would be
printed, written to a unit's log and stored in a teach summary. A password written into a URL
(`http://user:password@host/v1`) is masked the same way, wherever the URL is: the user part of
every URL `redact` sees is replaced, so it needs no remembering.
"""

from __future__ import annotations

import re
import threading

MASK = "[REDACTED]"  # upper case: rich reads "[lower case]" as markup
_SHORTEST = 4  # shorter values are too likely to occur by chance to be masked everywhere
_secrets: set[str] = set()
_lock = threading.Lock()
# `scheme://user:password@`: the user information of a URL (RFC 3986) ends at the last `@` before
# the host, as `urllib.parse` reads it; it holds no `/`, `?`, `#`, white space, quote or backslash
# (so it never reaches across a JSON string).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s\"'<>\\]+@")


def remember_secret(value: str | None) -> None:
    """Mask `value` in everything `redact` sees from now on, in this process."""
    if value and len(value) >= _SHORTEST:
        with _lock:
            _secrets.add(value)


def redact_url(url: str) -> str:
    """`url` with its user information (`user:password@`) masked: `http://[REDACTED]@host/v1`."""
    return _USERINFO.sub(lambda found: f"{found.group(1)}{MASK}@", url)


def redact(text: str) -> str:
    """`text` with every remembered secret, and the user information of every URL in it, replaced
    by `[REDACTED]`."""
    text = str(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return redact_url(text) if "://" in text else text
