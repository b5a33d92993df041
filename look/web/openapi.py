"""``/openapi.json``: an OpenAPI 3.1 description of every route, built from what look enforces.

Every limit the document states (page sizes, the id pattern, the sides a
route takes, the smallest thumbnail side, the upload byte limit, the formats
read and served) is the constant or setting the code enforces, imported here
and never restated, so the document cannot promise what look refuses; the
tests ask the live app at each limit the document states.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import falcon

from look import __version__
from look.core.ids import ID_PATTERN
from look.imaging.formats import (
    ACCEPTED_MEDIA_TYPES,
    FALLBACK_FORMAT,
    FORMAT_MEDIA_TYPES,
    READABLE_FORMATS,
)
from look.web.cache import CACHE_HEADER
from look.web.conditional import IMMUTABLE
from look.web.images import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PATCH_BYTES,
    MIN_PAGE_SIZE,
    ORDERS,
)
from look.web.routes import MAX_SIDE_DIGITS
from look.web.uploads import MAX_ALT_CHARS

Object = dict[str, Any]
Security = list[dict[str, list[str]]]

PUBLIC: Security = []  # no credential needed
# A HEAD operation is its GET's, headers only; its id is the GET's with this suffix.
HEADERS_ONLY = 'Headers'


@dataclasses.dataclass(frozen=True)
class _Served:
    """What one deployment serves, from its settings: the part of the document they decide."""

    max_upload_bytes: int
    min_thumb_size: int
    formats: tuple[str, ...]
    keys_required: bool


def openapi_document(
    *,
    max_upload_bytes: int,
    min_thumb_size: int,
    formats: Sequence[str] = (FALLBACK_FORMAT,),
    keys_required: bool = False,
) -> Object:
    """Return the OpenAPI 3.1 document of look with this configuration's limits and keys."""
    served = _Served(max_upload_bytes, min_thumb_size, tuple(formats), keys_required)
    return {
        'openapi': '3.1.0',
        'info': _info(served),
        'paths': {
            '/images': _images_path(served),
            '/images/{image_id}.jpeg': _image_path(served),
            '/images/{image_id}.webp': _with_head(_animation(served)),
            '/thumbnails/{image_id}/{width}x{height}.{format}': _with_head(_thumbnail(served)),
            '/thumbnails/{image_id}/{width}x{height}': _with_head(_negotiated_thumbnail(served)),
            '/health': _with_head(_health()),
            '/openapi.json': {'get': _this_document()},
        },
        'components': {
            'schemas': _schemas(served),
            'headers': _headers(),
            'securitySchemes': _security_schemes(),
        },
    }


def _info(served: _Served) -> Object:
    return {
        'title': 'look',
        'version': __version__,
        'description': (
            'Self-hosted image sharing. Upload any common image format; look '
            'stores an upright sRGB JPEG and renders thumbnails in halving sizes '
            f'down to {served.min_thumb_size} pixels a side, as {", ".join(served.formats)}. '
            'Every error is JSON with "title" and "description" (a browser navigating to a '
            '404, 413 or 415 gets a page with the same words). Image and thumbnail URLs '
            'are public; uploading and listing take an API key where keys are set, '
            "deleting takes an API key or the image's delete token."
        ),
    }


# -- paths ------------------------------------------------------------------------------


def _images_path(served: _Served) -> Object:
    """``/images``: the list (GET, HEAD) and the upload (POST)."""
    listing = _list_images(served)
    return {'get': listing, 'head': _head_of(listing), 'post': _upload(served)}


def _image_path(served: _Served) -> Object:
    """``/images/{id}.jpeg``: the stored JPEG (GET, HEAD), its alt text (PATCH), its deletion."""
    download = _download(served)
    return {
        'get': download,
        'head': _head_of(download),
        'patch': _describe(served),
        'delete': _delete(served),
    }


def _with_head(operation: Object) -> Object:
    """A path with one GET, and its HEAD."""
    return {'get': operation, 'head': _head_of(operation)}


# -- operations -------------------------------------------------------------------------


def _list_images(served: _Served) -> Object:
    return {
        'operationId': 'listImages',
        'summary': 'List images, oldest first, a page at a time',
        'security': _needs_key(served),
        'parameters': _parameters(served, 'limit', 'after', 'order'),
        'responses': {
            '200': {
                'description': 'A page of images.',
                'headers': {
                    'Link': {
                        'description': 'RFC 8288 `<...>; rel="next"` while more images remain.',
                        'schema': {'type': 'string'},
                    }
                },
                'content': _json({'type': 'array', 'items': _schema('Image')}),
            },
            '400': _error(
                '`limit` or `order` is not one the parameter allows, or `after` is not an '
                'image id or names no image (one deleted since still marks its place).'
            ),
            **_refused(served),
            '503': _backend_down(),
        },
    }


def _upload(served: _Served) -> Object:
    image = _image_bytes()
    return {
        'operationId': 'uploadImage',
        'summary': 'Upload an image',
        'security': _needs_key(served),
        'description': (
            f'The body is the image itself ({READABLE_FORMATS}; look reads the bytes, '
            'whatever the Content-Type), or a multipart/form-data form with the image in the '
            f'field "image" (else the first file) and its alt text in "alt" (at most '
            f'{MAX_ALT_CHARS} characters). At most {served.max_upload_bytes} bytes. A browser '
            'posting the form itself (preferring text/html) has every file stored and is sent '
            '(303) to a page that shows them.'
        ),
        'requestBody': {
            'required': True,
            'content': {
                **{
                    media_type: {'schema': image}
                    for media_type in (*ACCEPTED_MEDIA_TYPES, 'application/octet-stream')
                },
                'multipart/form-data': {
                    'schema': {
                        'type': 'object',
                        'properties': {'image': image},
                        'required': ['image'],
                        # NOTE: other fields are read and dropped, but a client
                        #   need send none. "alt" is named in the description only:
                        #   a form's field is text whatever type a schema gave it,
                        #   so the schema could promise nothing of it a form keeps.
                        'additionalProperties': False,
                    },
                    'encoding': {'image': {'contentType': ', '.join(ACCEPTED_MEDIA_TYPES)}},
                },
            },
        },
        'responses': {
            '201': {
                'description': 'Stored.',
                'headers': {
                    'Location': {
                        'required': True,
                        'description': 'The URI of the stored JPEG.',
                        'schema': {'type': 'string'},
                    }
                },
                'content': _json(_schema('CreatedImage')),
                'links': _links_from_upload(),
            },
            '303': {
                'description': (
                    'For a browser posting the form itself: every file stored or refused; '
                    'Location is the page that shows which.'
                ),
                'headers': {'Location': {'required': True, 'schema': {'type': 'string'}}},
            },
            '400': _error(
                'The body is empty, the image is corrupt or truncated, the form is '
                f'malformed or has no file, or its alt text is over {MAX_ALT_CHARS} characters.'
            ),
            **_refused(served),
            '408': _error('The body did not arrive in time.'),
            '409': _error('An image with the id drawn for this one is stored already.'),
            '413': _error(
                f'The body is over {served.max_upload_bytes} bytes, or the image has more '
                'pixels than look takes (or than its bytes can hold), or an animation more '
                'pixels of frames.'
            ),
            '415': _error(f'The body is not an image look reads ({READABLE_FORMATS}).'),
            '422': _error('The image is built as no encoder builds one.'),
            '503': _retry_later(
                'Too many uploads, the image could not be converted now, or the '
                'index or the image store does not answer; retry.'
            ),
            '507': _error('The disk is full or refuses writes; nothing was stored.'),
        },
    }


def _links_from_upload() -> Object:
    """Where a client goes from a new image: its JPEG, its thumbnails, the list, its deletion."""
    new_image = {'image_id': '$response.body#/id'}
    sizes = 'a width and height from its "thumbnails" list'
    links = {
        'image': _link('downloadImage', 'The stored JPEG.', new_image),
        'thumbnail': _link(
            'getThumbnail',
            f'A {FALLBACK_FORMAT.upper()} thumbnail (every deployment serves it) of {sizes}.',
            {**new_image, 'format': FALLBACK_FORMAT},
        ),
        'negotiatedThumbnail': _link(
            'getNegotiatedThumbnail',
            f'A thumbnail, in the format the Accept header prefers, of {sizes}.',
            new_image,
        ),
        'imagesAfter': _link(
            'listImages', 'The images listed after this one.', {'after': '$response.body#/id'}
        ),
    }
    links.update(
        {
            name + HEADERS_ONLY: _link(
                link['operationId'] + HEADERS_ONLY,
                'Headers only: ' + link['description'],
                link['parameters'],
            )
            for name, link in links.items()
        }
    )
    # NOTE: a link has no field for a credential; the token goes in the
    #   header that the deleteToken scheme reads, as a client sends it.
    links['delete'] = _link(
        'deleteImage',
        'Delete it with its delete_token.',
        {**new_image, 'header.Authorization': 'Bearer {$response.body#/delete_token}'},
    )
    return links


def _download(served: _Served) -> Object:
    return _immutable(
        served,
        'downloadImage',
        'Download an image',
        ('image_id',),
        content={'image/jpeg': _binary_content('image/jpeg')},
        errors={'404': _error('No image has this id.'), '503': _backend_down()},
    )


def _animation(served: _Served) -> Object:
    return _immutable(
        served,
        'downloadAnimation',
        'Download the animated WebP of an animation (its "animation" url)',
        ('image_id',),
        content={'image/webp': _binary_content('image/webp')},
        errors={
            '404': _error('No image has this id, or the image is not an animation.'),
            '503': _backend_down(),
        },
    )


def _delete(served: _Served) -> Object:
    return {
        'operationId': 'deleteImage',
        'summary': 'Delete an image and its thumbnails',
        'description': (
            'Takes the delete_token of the upload that stored the image, or an API key.'
        ),
        'security': _needs_key(served, 'deleteToken'),
        'parameters': _parameters(served, 'image_id'),
        'responses': {
            '204': {'description': 'Deleted.'},
            **_refused(served),
            '403': _error('This credential may not delete this image.'),
            '404': _error('No image has this id.'),
            '503': _backend_down(),
            '507': _error('The disk is full or refuses writes.'),
        },
    }


def _describe(served: _Served) -> Object:
    alt = {
        'type': 'string',
        'maxLength': MAX_ALT_CHARS,
        'description': 'What the image shows, for people who cannot see it; "" removes it.',
    }
    change = {'type': 'object', 'required': ['alt'], 'additionalProperties': False}
    change['properties'] = {'alt': alt}
    return {
        'operationId': 'describeImage',
        'summary': "Change an image's alt text",
        'description': (
            'Allowed to whoever may delete the image: the delete_token of its upload, or an '
            "API key (with no keys set, anyone; a token that is not the image's is refused)."
        ),
        'security': _needs_key(served, 'deleteToken'),
        'parameters': _parameters(served, 'image_id'),
        'requestBody': {
            'required': True,
            'content': {
                'application/json': {'schema': change},
                'application/merge-patch+json': {'schema': change},
            },
        },
        'responses': {
            '200': {'description': 'Changed.', 'content': _json(_schema('Image'))},
            '400': _error(
                f'The body is not a JSON object with one member "alt", a string of at most '
                f'{MAX_ALT_CHARS} characters.'
            ),
            **_refused(served),
            '403': _error('This credential may not change this image.'),
            '404': _error('No image has this id.'),
            '413': _error(f'The body is over {MAX_PATCH_BYTES} bytes.'),
            '415': _error('The body is not JSON.'),
            '503': _backend_down(),
            '507': _error('The disk is full or refuses writes.'),
        },
    }


def _thumbnail(served: _Served) -> Object:
    return _thumbnail_operation(
        served,
        'getThumbnail',
        'Render a thumbnail (only the sizes the image lists, in the formats it lists)',
        'format',
    )


def _negotiated_thumbnail(served: _Served) -> Object:
    operation = _thumbnail_operation(
        served,
        'getNegotiatedThumbnail',
        'Render a thumbnail in the best format the Accept header names '
        f'({FALLBACK_FORMAT.upper()} by default)',
        'Accept',
    )
    operation['responses']['200']['headers'].update(
        {
            'Vary': {'schema': {'type': 'string', 'const': 'Accept'}},
            'Content-Location': {
                'description': 'The explicit URL of the format served.',
                'schema': {'type': 'string'},
            },
        }
    )
    return operation


def _thumbnail_operation(served: _Served, operation_id: str, summary: str, chooser: str) -> Object:
    """A thumbnail's GET, its format given by the parameter ``chooser`` (format or Accept)."""
    operation = _immutable(
        served,
        operation_id,
        summary,
        ('image_id', 'width', 'height', chooser),
        content={
            FORMAT_MEDIA_TYPES[name]: _binary_content(FORMAT_MEDIA_TYPES[name])
            for name in served.formats
        },
        errors={
            '404': _error(
                'No image has this id, or it has no thumbnail of this size (its sizes are '
                'its "thumbnails" list) or in this format.'
            ),
            '503': _retry_later(
                'Too busy, a render failed, or the index or the image store does not answer; '
                'retry shortly.'
            ),
        },
    )
    operation['responses']['200']['headers'][CACHE_HEADER] = _header(CACHE_HEADER)
    return operation


def _health() -> Object:
    return {
        'operationId': 'getHealth',
        'summary': 'Report whether look can serve, and the state of each part',
        'security': PUBLIC,
        'responses': {
            '200': {
                'description': 'look can serve (a cache that is down does not stop it).',
                'content': _json(_schema('Health')),
            },
            '503': {
                'description': 'look cannot serve now.',
                'headers': {'Retry-After': _header('Retry-After')},
                'content': _json(_schema('Health')),
            },
        },
    }


def _this_document() -> Object:
    return {
        'operationId': 'getOpenAPI',
        'summary': 'This document',
        'security': PUBLIC,
        'responses': {
            '200': {
                'description': 'The OpenAPI 3.1 document of this service.',
                'content': _json({'type': 'object'}),
            }
        },
    }


# -- what operations share ----------------------------------------------------------------


def _immutable(
    served: _Served,
    operation_id: str,
    summary: str,
    parameters: Sequence[str],
    *,
    content: Object,
    errors: Object,
) -> Object:
    """An operation on something that never changes: validators, a year's caching, 304s."""
    validators = {
        'ETag': _header('ETag'),
        'Last-Modified': _header('Last-Modified'),
        'Cache-Control': _header('Immutable'),
    }
    return {
        'operationId': operation_id,
        'summary': summary,
        'security': PUBLIC,
        'parameters': _parameters(served, *parameters, 'If-None-Match', 'If-Modified-Since'),
        'responses': {
            '200': {
                'description': 'It never changes, so it may be cached for a year.',
                'headers': {**validators, 'Content-Length': {'schema': {'type': 'integer'}}},
                'content': content,
            },
            '304': {'description': "The client's copy is current.", 'headers': validators},
            **errors,
        },
    }


def _head_of(operation: Object) -> Object:
    """Return the HEAD of a GET: the same answers, with no body."""
    head = copy.deepcopy(operation)
    head['operationId'] += HEADERS_ONLY
    head['summary'] = 'Headers only: ' + operation['summary'][0].lower() + operation['summary'][1:]
    for response in head['responses'].values():
        response.pop('content', None)
        response.pop('links', None)
    return head


def _needs_key(served: _Served, *others: str) -> Security:
    """Return the security of an operation that takes an API key (or ``others``)."""
    schemes = [{'apiKey': []}, *({name: []} for name in others)]
    return schemes if served.keys_required else [{}, *schemes]


def _refused(served: _Served) -> Object:
    """The 401 of an operation that takes a key, where keys are set."""
    if not served.keys_required:
        return {}
    return {
        '401': {
            'description': 'No valid API key came; nothing of the body was read.',
            'headers': {'WWW-Authenticate': _header('WWW-Authenticate')},
            'content': _json(_schema('Error')),
        }
    }


def _error(description: str) -> Object:
    return {
        'description': description,
        'headers': {'Cache-Control': _header('No-Store')},
        'content': _json(_schema('Error')),
    }


def _retry_later(description: str) -> Object:
    refusal = _error(description)
    refusal['headers']['Retry-After'] = _header('Retry-After')
    return refusal


def _backend_down() -> Object:
    return _retry_later('The index or the image store does not answer now; retry.')


def _link(operation_id: str, description: str, parameters: Object) -> Object:
    return {'operationId': operation_id, 'description': description, 'parameters': parameters}


def _json(schema: Object) -> Object:
    return {'application/json': {'schema': schema}}


def _binary_content(media_type: str) -> Object:
    return {'schema': {'type': 'string', 'contentMediaType': media_type}}


def _image_bytes() -> Object:
    # NOTE: no minLength or maxLength: JSON Schema counts a string's characters,
    #   and schemathesis cannot make a binary body of a length it is told; the
    #   byte limit is in the operation's description and its 413.
    return {'type': 'string', 'format': 'binary'}


def _schema(name: str) -> Object:
    return {'$ref': f'#/components/schemas/{name}'}


def _parameters(served: _Served, *names: str) -> list[Object]:
    every = _every_parameter(served)
    return [every[name] for name in names]


def _header(name: str) -> Object:
    return {'$ref': f'#/components/headers/{name}'}


# -- components -------------------------------------------------------------------------


def _schemas(served: _Served) -> Object:
    return {
        'ImageId': {
            'type': 'string',
            'format': 'uuid',
            'pattern': f'^{ID_PATTERN}$',
            'description': 'An image id, in its one spelling: a lowercase, hyphenated UUID.',
        },
        'Image': {
            'type': 'object',
            'required': ['id', 'image', 'modified', 'size', 'alt', 'thumbnails', 'formats'],
            'properties': {
                'id': _schema('ImageId'),
                'image': {'type': 'string', 'description': 'URI of the JPEG.'},
                'modified': {'type': 'string', 'description': 'Upload time, HTTP date.'},
                'size': {
                    'type': 'array',
                    'items': {'type': 'integer', 'minimum': 1},
                    'minItems': 2,
                    'maxItems': 2,
                    'description': '[width, height] in pixels.',
                },
                'alt': {
                    'type': 'string',
                    'maxLength': MAX_ALT_CHARS,
                    'description': 'What the image shows, in words; empty when nobody said.',
                },
                'placeholder': {
                    'type': 'object',
                    'description': (
                        'What to paint while the image loads: a ThumbHash (standard '
                        'base64) and its average colour. Absent until look has one.'
                    ),
                    'required': ['thumbhash', 'color'],
                    'additionalProperties': False,
                    'properties': {
                        'thumbhash': {'type': 'string', 'format': 'byte'},
                        'color': {'type': 'string', 'pattern': '^#[0-9a-f]{6}$'},
                    },
                },
                'animation': {
                    'type': 'object',
                    'description': (
                        'Present for an animation: its frames, total duration and the '
                        'URI of the animated WebP (the JPEG is its first frame).'
                    ),
                    'required': ['frames', 'duration_ms', 'url'],
                    'additionalProperties': False,
                    'properties': {
                        'frames': {'type': 'integer', 'minimum': 2},
                        'duration_ms': {'type': 'integer', 'minimum': 0},
                        'url': {'type': 'string'},
                    },
                },
                'thumbnails': {
                    'type': 'array',
                    'items': {'type': 'string'},
                    'description': 'URIs of the JPEG thumbnails, largest first.',
                },
                'formats': {
                    'type': 'object',
                    'description': (
                        'Each thumbnail format, best first: its media type and a '
                        'srcset of its thumbnails with their widths, for <picture>.'
                    ),
                    'propertyNames': {'enum': list(served.formats)},
                    'additionalProperties': {
                        'type': 'object',
                        'required': ['type', 'srcset'],
                        'additionalProperties': False,
                        'properties': {
                            'type': {'type': 'string'},
                            'srcset': {'type': 'string'},
                        },
                    },
                },
            },
        },
        'CreatedImage': {
            'allOf': [_schema('Image')],
            'required': ['delete_token'],
            'properties': {
                'delete_token': {
                    'type': 'string',
                    'description': (
                        'Deletes this image (Authorization: Bearer <token>). '
                        'Shown once: look keeps only its hash.'
                    ),
                }
            },
        },
        'Error': {
            'type': 'object',
            'required': ['title', 'description'],
            'additionalProperties': False,
            'properties': {
                'title': {'type': 'string'},
                'description': {'type': 'string'},
            },
        },
        'Health': {
            'type': 'object',
            'required': ['status', 'index', 'storage', 'thumbnailer', 'cache'],
            'properties': {
                'status': {'type': 'string', 'enum': ['ok', 'degraded', 'fail']},
                **{
                    part: _schema('HealthPart')
                    for part in ('index', 'storage', 'thumbnailer', 'cache')
                },
            },
        },
        'HealthPart': {
            'type': 'object',
            'required': ['status'],
            'properties': {
                'status': {
                    'type': 'string',
                    'enum': [
                        'ok',
                        'fail',
                        'unavailable',
                        'disabled',
                        'read-only',
                        'full',
                        'quarantine',
                        'damaged',
                    ],
                },
                'detail': {'type': 'string'},
            },
        },
    }


def _every_parameter(served: _Served) -> Object:
    side = {
        'type': 'integer',
        # Both sides of every thumbnail are at least the smallest side;
        # the route takes no side of more digits.
        'minimum': served.min_thumb_size,
        'maximum': 10**MAX_SIDE_DIGITS - 1,
    }
    return {
        'image_id': {
            'name': 'image_id',
            'in': 'path',
            'required': True,
            'description': 'The id of an image, as in its "id".',
            'schema': _schema('ImageId'),
        },
        **{
            name: {
                'name': name,
                'in': 'path',
                'required': True,
                'description': f'The {name} of a size in the image\'s "thumbnails" list.',
                'schema': side,
            }
            for name in ('width', 'height')
        },
        'format': {
            'name': 'format',
            'in': 'path',
            'required': True,
            'description': 'A thumbnail format this deployment serves.',
            'schema': {'type': 'string', 'enum': list(served.formats)},
        },
        'Accept': {
            'name': 'Accept',
            'in': 'header',
            'required': False,
            'description': (
                ', then '.join(FORMAT_MEDIA_TYPES[name] for name in served.formats)
                + ' among equal q-values.'
            ),
            'schema': {'type': 'string'},
        },
        'limit': {
            'name': 'limit',
            'in': 'query',
            'description': 'Images per page.',
            'schema': {
                'type': 'integer',
                'minimum': MIN_PAGE_SIZE,
                'maximum': MAX_PAGE_SIZE,
                'default': DEFAULT_PAGE_SIZE,
            },
        },
        'after': {
            'name': 'after',
            'in': 'query',
            'description': 'Start after this image id (the last of the previous page).',
            'schema': {'type': 'string', 'format': 'uuid'},
        },
        'order': {
            'name': 'order',
            'in': 'query',
            'description': 'Oldest (upload order) or newest first.',
            'schema': {'type': 'string', 'enum': list(ORDERS), 'default': ORDERS[0]},
        },
        **{
            name: {'name': name, 'in': 'header', 'required': False, 'schema': {'type': 'string'}}
            for name in ('If-None-Match', 'If-Modified-Since')
        },
    }


def _headers() -> Object:
    return {
        'WWW-Authenticate': {
            'description': 'The Bearer challenge (RFC 6750) of every 401.',
            'required': True,
            'schema': {'type': 'string', 'pattern': '^Bearer( |$)'},
        },
        'ETag': {'description': 'Strong validator.', 'schema': {'type': 'string'}},
        'Last-Modified': {'description': 'Upload time.', 'schema': {'type': 'string'}},
        'Immutable': {
            'description': 'It never changes: a new upload gets a new id.',
            'schema': {'type': 'string', 'const': IMMUTABLE},
        },
        'No-Store': {
            'description': '`no-store`: no cache keeps an error.',
            'schema': {'type': 'string'},
        },
        'Retry-After': {
            'description': 'Seconds to wait before trying again.',
            'schema': {'type': 'integer', 'minimum': 0},
        },
        CACHE_HEADER: {
            'description': 'Whether the thumbnail came from the cache.',
            'schema': {'type': 'string', 'enum': ['Hit', 'Miss']},
        },
    }


def _security_schemes() -> Object:
    return {
        'apiKey': {
            'type': 'http',
            'scheme': 'bearer',
            'description': 'One of the keys in LOOK_API_KEYS or LOOK_API_KEYS_FILE.',
        },
        'deleteToken': {
            'type': 'http',
            'scheme': 'bearer',
            'description': 'The delete_token of the upload that stored the image.',
        },
    }


class OpenAPI:
    """Serve the document, serialised once."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = json.dumps(document, indent=1).encode()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body

    on_head = on_get
