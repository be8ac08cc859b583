"""One short, stable hash of JSON-shaped data: the key of units, configs and training inputs."""

from __future__ import annotations

import hashlib
import json


def stable_hash(payload, length: int = 16) -> str:
    """The first `length` hex digits of the SHA-256 of `payload` as sorted JSON.

    Values JSON cannot hold (paths, dates) are written as `str()`. The same payload gives the same
    hash in every process and on every machine, so it keys stored results and resumed work.
    """
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
