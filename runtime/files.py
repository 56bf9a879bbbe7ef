"""Files and folders the product creates are its user's alone: files 0600, folders 0700.

The database, its WAL and shared-memory files, the keyring file, the master key and the recordings
hold secrets and personal data. Modes are given when each file or folder is created (``os.open``
and ``mkdir`` with a mode), not through a umask scope: the umask is process-wide, and the runtime
creates recordings and the database from threads while others create files of their own, so a
scope would leak into them, and two overlapping scopes can leave it changed for good. A file or
folder that already exists keeps its mode: the operator may have set it on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def private_opener(path: str, flags: int) -> int:
    """For ``open(path, mode, opener=private_opener)``: a file it creates is 0600."""
    return os.open(path, flags, PRIVATE_FILE)


def create_private_file(path: Path) -> Path:
    """``path`` made as an empty 0600 file unless it exists (then left as it is)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        pass
    return path


def make_private_folders(path: Path) -> Path:
    """``path`` and its missing parents, each one made 0700; folders that exist are left as they are.
    (``Path.mkdir(parents=True, mode=...)`` gives the parents it makes the default mode.)"""
    missing = []
    folder = Path(path)
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(PRIVATE_FOLDER)
        except FileExistsError:
            if not folder.is_dir():
                raise
            # made meanwhile by another thread or process: not ours to change
    return path
