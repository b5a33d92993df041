"""Image ids: canonical lowercase UUIDs, checked wherever an id becomes a path or a key."""

from __future__ import annotations

import re

_ID_PATTERN = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z')


def is_valid_id(image_id: str) -> bool:
    """Return whether ``image_id`` is a canonical lowercase UUID string."""
    return bool(_ID_PATTERN.match(image_id))
