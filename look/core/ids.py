"""Image ids: canonical lowercase UUIDs, checked wherever an id becomes a path or a key."""

from __future__ import annotations

import re

# The one spelling of an id, as a regular expression (the OpenAPI document states it as is).
ID_PATTERN = r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'
_CANONICAL_ID = re.compile(rf'{ID_PATTERN}\Z')


def is_valid_id(image_id: str) -> bool:
    """Return whether ``image_id`` is a canonical lowercase UUID string."""
    return bool(_CANONICAL_ID.match(image_id))
