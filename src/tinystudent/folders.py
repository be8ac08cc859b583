"""Folders tinystudent writes and may later replace.

Nothing is removed unless tinystudent made it: a folder it creates to replace later carries a
mark file, and `remove_made` refuses any folder without one (or without the file a known kind of
folder always holds, for folders written before marks existed). A name such as `../../data`
that slipped past validation, or a user's own `best.tmp`, is then an error, never a deletion.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MARK = ".tinystudent"


def make_folder(path: Path) -> Path:
    """Create `path` (and its parents) and mark it as made by tinystudent."""
    path.mkdir(parents=True, exist_ok=True)
    (path / MARK).write_text("made by tinystudent; it may replace or delete this folder\n")
    return path


def remove_made(path: Path, *known_files: str) -> None:
    """Delete the folder `path` if tinystudent made it (it holds the mark or one of `known_files`)
    or it is empty; nothing happens when it does not exist."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise FileExistsError(
            f"{path}: is not a folder tinystudent made, so it is not replaced; "
            "move it away or choose another output folder"
        )
    if not any(path.iterdir()):
        path.rmdir()
        return
    if not any((path / name).is_file() for name in (MARK, *known_files)):
        raise FileExistsError(
            f"{path}: is in the way and was not made by tinystudent (no {MARK} file "
            "in it), so it is not deleted; move it away or choose another output folder"
        )
    shutil.rmtree(path)


class LinkedPathError(ValueError):
    """A path tinystudent would write to passes through a symbolic link inside its results folder."""


def refuse_links(path: Path, root: Path) -> Path:
    """`path` when no part of it below `root` (`root` itself not included: the user named it) is a
    symbolic link; a link planted there (`out/report -> elsewhere`, `out/logs/x.log -> a file`) would
    have tinystudent write into files that are not its own.

    Raises:
        LinkedPathError: naming the link and where it points."""
    path, root = Path(path), Path(root)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts[-1:]  # not below root: at least the path itself is checked
        root = path.parent
    here = root
    for part in parts:
        here = here / part
        if here.is_symlink():
            raise LinkedPathError(
                f"{here}: is a symbolic link (to {os.readlink(here)}) inside the results folder {root}; "
                "tinystudent does not write through links there, as it would change files elsewhere: "
                "remove the link, or choose another output folder"
            )
    return path


def check_output_folder(path: Path, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be one (a file is in the way, or no parent folder can be
    written), before any work is done for it."""
    path = Path(path)
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(
                    f"{ancestor}: is a file, so {option} {path} cannot be a folder; choose another {option}"
                )
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise ValueError(f"{ancestor}: cannot be written to, so {option} {path} cannot be made there")
            return path
    return path
