"""Small file-system steps that the local index, image store and spool share."""

from __future__ import annotations

import os
import pathlib


def fsync_directory(path: pathlib.Path) -> None:
    """Make the names in a directory durable (a new, linked or removed file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def entries(directory: pathlib.Path) -> list[os.DirEntry[str]]:
    """Return what a directory holds now; nothing if it does not exist."""
    try:
        return list(os.scandir(directory))
    except FileNotFoundError:
        return []
