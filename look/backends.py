"""Pick the index and the image store a Config asks for, for the app and the command line."""

from __future__ import annotations

import pathlib

from look.config import Config, ConfigError
from look.imagestore.disk import DiskImageStore
from look.index.journal import JournalIndex
from look.library import Library


def open_library(config: Config) -> Library:
    """Build and open the library of this configuration; raise ConfigError naming what failed."""
    storage_path = pathlib.Path(config.storage_path)
    library = Library(JournalIndex(storage_path), DiskImageStore(storage_path))
    try:
        library.open()
    except OSError as ex:
        raise ConfigError(f'LOOK_STORAGE_PATH {config.storage_path} cannot be used: {ex}') from ex
    return library


def is_local(library: Library) -> bool:
    """Whether index and images are this host's own files (and start-up may quarantine)."""
    return isinstance(library.index, JournalIndex) and isinstance(library.images, DiskImageStore)
