"""look in-process, as a TestClient suite talks to it: the calls many tests make."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from falcon.testing import TestClient

from support.imagegen import image_bytes


def upload(
    client: TestClient, data: bytes | None = None, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Upload ``data`` (a seeded 640x360 PNG by default); return the 201's JSON."""
    result = client.simulate_post(
        '/images', body=data if data is not None else image_bytes('PNG'), headers=headers
    )
    assert result.status_code == 201, result.text
    created: dict[str, Any] = result.json
    return created
