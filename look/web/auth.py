"""Who may do what: API keys for uploading and listing, a delete token per image.

Image and thumbnail URLs stay public: an image id is an unguessable
capability, as in every sharing service. With API keys set, uploading,
listing and deleting need ``Authorization: Bearer <secret>``; deleting
also takes the image's own delete token, handed out once in its ``201``.
With no keys set, anyone may do anything, as on a machine of one's own.

Only SHA-256 digests of secrets and tokens are kept, and every comparison
takes the same time whichever bytes differ.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

import falcon

from look.config import ApiKey, digest
from look.core.index import StoredImage

# NOTE: 32 random bytes (256 bits) as URL-safe base64: 43 characters.
DELETE_TOKEN_BYTES = 32
ANONYMOUS = 'anonymous'


def new_delete_token() -> tuple[str, str]:
    """Return a new delete token and the hex digest the index keeps of it."""
    token = secrets.token_urlsafe(DELETE_TOKEN_BYTES)
    return token, digest(token).hex()


def _bearer(req: falcon.Request) -> str | None:
    """Return the Bearer credential of a request, or None if it has none."""
    header = req.get_header('Authorization')
    if not header:
        return None
    scheme, _, credential = header.strip().partition(' ')
    credential = credential.strip()
    if scheme.lower() != 'bearer' or not credential:
        return None
    return credential


class Access:
    """Decide, from a request's credential, whether it may upload, list or delete."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = tuple(keys)

    def __repr__(self) -> str:
        return f'Access(<{len(self._keys)} keys>)'

    @property
    def open(self) -> bool:
        """Whether no keys are set: everyone may upload, list and delete."""
        return not self._keys

    def require_key(self, req: falcon.Request, action: str) -> str:
        """Return the name of the key the request carries (or ``anonymous`` with no keys set).

        Raise 401 with ``WWW-Authenticate: Bearer`` when keys are set and
        the request carries none of them.
        """
        if self.open:
            return ANONYMOUS
        credential = _bearer(req)
        name = self._key_named(credential) if credential is not None else None
        if name is None:
            raise _unauthorized(action, presented=credential is not None)
        return name

    def require_credential(self, req: falcon.Request, action: str) -> None:
        """Raise 401 when keys are set and the request carries no credential at all."""
        if not self.open and _bearer(req) is None:
            raise _unauthorized(action, presented=False)

    def may_delete(self, req: falcon.Request, image: StoredImage, action: str = 'delete') -> str:
        """Return who deletes or changes the image: a key name, ``delete token``, ``anonymous``.

        Raise 401 when credentials are needed and none came, 403 when the
        one that came may not delete this image (with no keys set too: a
        token that is not this image's is a mistake worth hearing of).
        """
        credential = _bearer(req)
        if credential is None:
            if self.open:
                return ANONYMOUS
            raise _unauthorized(f'{action} an image', presented=False)
        name = self._key_named(credential)
        if name is not None:
            return name
        # NOTE: compared as bytes: compare_digest refuses str with non-ASCII
        #   characters, and the index is read from disk.
        presented = digest(credential).hex().encode()
        if image.token_hash and hmac.compare_digest(presented, image.token_hash.encode()):
            return 'delete token'
        raise falcon.HTTPForbidden(
            title='Not allowed',
            description=(
                f'This credential may not {action} image {image.id}: send the delete_token '
                'its upload answered with, or an API key.'
            ),
        )

    def _key_named(self, credential: str) -> str | None:
        """Return the name of the key whose secret this is; every key is compared."""
        presented = digest(credential)
        found = None
        for key in self._keys:
            if hmac.compare_digest(presented, key.digest):
                found = key.name
        return found


def _unauthorized(action: str, *, presented: bool) -> falcon.HTTPUnauthorized:
    if presented:
        description = f'The API key is not valid here; a valid one is needed to {action}.'
        challenge = 'Bearer realm="look", error="invalid_token"'
    else:
        description = f'An API key is needed to {action}: send "Authorization: Bearer <key>".'
        challenge = 'Bearer realm="look"'
    return falcon.HTTPUnauthorized(
        title='Authentication required', description=description, challenges=[challenge]
    )
