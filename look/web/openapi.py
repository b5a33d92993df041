"""``/openapi.json``: an OpenAPI 3.1 description of every route, kept honest by a test."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import falcon

from look import __version__
from look.imaging.formats import FORMAT_MEDIA_TYPES

_ERROR = {'$ref': '#/components/responses/Error'}
_UNAUTHORIZED = {'$ref': '#/components/responses/Unauthorized'}
_UUID = {'type': 'string', 'format': 'uuid'}
_JPEG = {'image/jpeg': {'schema': {'type': 'string', 'contentMediaType': 'image/jpeg'}}}
_PUBLIC: list[dict[str, list[str]]] = []  # no credential needed
_CHALLENGE = {'WWW-Authenticate': {'$ref': '#/components/headers/WWW-Authenticate'}}
_VALIDATOR_HEADERS = {
    'ETag': {'$ref': '#/components/headers/ETag'},
    'Last-Modified': {'$ref': '#/components/headers/Last-Modified'},
    'Cache-Control': {'$ref': '#/components/headers/Cache-Control'},
}
_CONDITIONAL_PARAMETERS = [
    {'$ref': '#/components/parameters/If-None-Match'},
    {'$ref': '#/components/parameters/If-Modified-Since'},
]


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ERROR for status in statuses}


def _retry_later(description: str) -> dict[str, Any]:
    return {
        'description': description,
        'headers': {'Retry-After': {'schema': {'type': 'integer', 'minimum': 0}}},
        'content': {'application/json': {'schema': {'$ref': '#/components/schemas/Error'}}},
    }


def _backend_down() -> dict[str, Any]:
    return _retry_later('The index or the image store does not answer now; retry.')


def _image_operation(
    summary: str, parameters: list[Any], extra: dict[str, Any], content: dict[str, Any] = _JPEG
) -> dict[str, Any]:
    return {
        'summary': summary,
        'security': _PUBLIC,
        'parameters': parameters + _CONDITIONAL_PARAMETERS,
        'responses': {
            '200': {
                'description': 'The image; it never changes, so it may be cached for a year.',
                'headers': {
                    **_VALIDATOR_HEADERS,
                    'Content-Length': {'schema': {'type': 'integer'}},
                },
                'content': content,
            },
            '304': {
                'description': "The client's copy is current.",
                'headers': _VALIDATOR_HEADERS,
            },
            **extra,
        },
    }


def _head_of(operation: dict[str, Any]) -> dict[str, Any]:
    head = copy.deepcopy(operation)
    head['summary'] = 'Headers only: ' + operation['summary'][0].lower() + operation['summary'][1:]
    for response in head['responses'].values():
        if isinstance(response, dict) and 'content' in response:
            response.pop('content')
    head['responses'] = {
        status: _headers_only(response) for status, response in head['responses'].items()
    }
    return head


def _headers_only(response: dict[str, Any]) -> dict[str, Any]:
    if response == _ERROR:
        return {'description': 'Error; headers only.'}
    if response == _UNAUTHORIZED:
        return {'description': 'No valid API key came; headers only.', 'headers': _CHALLENGE}
    return response


def _needs_key(keys_required: bool, *others: str) -> list[dict[str, list[str]]]:
    """Return the security of an operation that takes an API key (or ``others``)."""
    schemes = [{'apiKey': []}, *({name: []} for name in others)]
    return schemes if keys_required else [{}, *schemes]


def openapi_document(
    *,
    max_upload_bytes: int,
    min_thumb_size: int,
    formats: Sequence[str] = ('jpeg',),
    keys_required: bool = False,
) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of look with this configuration's limits and keys."""
    refused = {'401': _UNAUTHORIZED} if keys_required else {}
    image_id = {
        'name': 'image_id',
        'in': 'path',
        'required': True,
        'description': 'The id of an image, as in its "id".',
        'schema': _UUID,
    }
    list_images = {
        'summary': 'List images, oldest first, a page at a time',
        'security': _needs_key(keys_required),
        'parameters': [
            {
                'name': 'limit',
                'in': 'query',
                'description': 'Images per page.',
                'schema': {'type': 'integer', 'minimum': 1, 'maximum': 1000, 'default': 100},
            },
            {
                'name': 'after',
                'in': 'query',
                'description': 'Start after this image id (the last of the previous page).',
                'schema': _UUID,
            },
            {
                'name': 'order',
                'in': 'query',
                'description': 'Oldest (upload order) or newest first.',
                'schema': {'type': 'string', 'enum': ['oldest', 'newest'], 'default': 'oldest'},
            },
        ],
        'responses': {
            '200': {
                'description': 'A page of images.',
                'headers': {
                    'Link': {
                        'description': 'RFC 8288 `<...>; rel="next"` while more images remain.',
                        'schema': {'type': 'string'},
                    }
                },
                'content': {
                    'application/json': {
                        'schema': {
                            'type': 'array',
                            'items': {'$ref': '#/components/schemas/Image'},
                        }
                    }
                },
            },
            **_errors(400),
            **refused,
            '503': _backend_down(),
        },
    }
    get_image = _image_operation(
        'Download an image', [image_id], {**_errors(404), '503': _backend_down()}
    )
    thumbnail_parameters = [
        image_id,
        {
            'name': 'width',
            'in': 'path',
            'required': True,
            'schema': {'type': 'integer', 'minimum': 1},
        },
        {
            'name': 'height',
            'in': 'path',
            'required': True,
            'schema': {'type': 'integer', 'minimum': 1},
        },
    ]
    thumbnail_content = {
        FORMAT_MEDIA_TYPES[name]: {
            'schema': {'type': 'string', 'contentMediaType': FORMAT_MEDIA_TYPES[name]}
        }
        for name in formats
    }
    thumbnail_errors = {
        '404': _ERROR,
        '503': _retry_later(
            'Too busy, a render failed, or the index or the image store does not answer; '
            'retry shortly.'
        ),
    }
    get_thumbnail = _image_operation(
        'Render a thumbnail (only the sizes the image lists, in the formats it lists)',
        [
            *thumbnail_parameters,
            {
                'name': 'format',
                'in': 'path',
                'required': True,
                'schema': {'type': 'string', 'enum': list(formats)},
            },
        ],
        thumbnail_errors,
        thumbnail_content,
    )
    negotiated = _image_operation(
        'Render a thumbnail in the best format the Accept header names (JPEG by default)',
        [
            *thumbnail_parameters,
            {
                'name': 'Accept',
                'in': 'header',
                'required': False,
                'description': 'AVIF, then WebP, then JPEG among equal q-values.',
                'schema': {'type': 'string'},
            },
        ],
        thumbnail_errors,
        thumbnail_content,
    )
    negotiated['responses']['200']['headers'].update(
        {
            'Vary': {'schema': {'type': 'string', 'const': 'Accept'}},
            'Content-Location': {
                'description': 'The explicit URL of the format served.',
                'schema': {'type': 'string'},
            },
        }
    )
    for operation in (get_thumbnail, negotiated):
        operation['responses']['200']['headers']['X-Look-Cache'] = {
            'description': 'Whether the thumbnail came from the cache.',
            'schema': {'type': 'string', 'enum': ['Hit', 'Miss']},
        }
    health = {
        'summary': 'Report whether look can serve, and the state of each part',
        'security': _PUBLIC,
        'responses': {
            '200': {
                'description': 'look can serve (a cache that is down does not stop it).',
                'content': {
                    'application/json': {'schema': {'$ref': '#/components/schemas/Health'}}
                },
            },
            '503': {
                'description': 'look cannot serve now.',
                'headers': {'Retry-After': {'schema': {'type': 'integer', 'minimum': 0}}},
                'content': {
                    'application/json': {'schema': {'$ref': '#/components/schemas/Health'}}
                },
            },
        },
    }
    openapi = {
        'summary': 'This document',
        'security': _PUBLIC,
        'responses': {
            '200': {
                'description': 'The OpenAPI 3.1 document of this service.',
                'content': {'application/json': {'schema': {'type': 'object'}}},
            }
        },
    }
    part = {
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
    }
    return {
        'openapi': '3.1.0',
        'info': {
            'title': 'look',
            'version': __version__,
            'description': (
                'Self-hosted image sharing. Upload any common image format; look '
                'stores an upright sRGB JPEG and renders thumbnails in halving sizes '
                f'down to {min_thumb_size} pixels a side, as {", ".join(formats)}. Every '
                'error is JSON with "title" and "description". Image and thumbnail URLs '
                'are public; uploading and listing take an API key where keys are set, '
                "deleting takes an API key or the image's delete token."
            ),
        },
        'paths': {
            '/images': {
                'get': list_images,
                'head': _head_of(list_images),
                'post': {
                    'summary': 'Upload an image',
                    'security': _needs_key(keys_required),
                    'description': (
                        'The body is the image itself (any Content-Type), or a '
                        'multipart/form-data form with the image in the field "image" '
                        f'(else the first file). At most {max_upload_bytes} bytes.'
                    ),
                    'requestBody': {
                        'required': True,
                        'content': {
                            'application/octet-stream': {
                                'schema': {'type': 'string', 'format': 'binary'}
                            },
                            'image/*': {'schema': {'type': 'string', 'format': 'binary'}},
                            'multipart/form-data': {
                                'schema': {
                                    'type': 'object',
                                    'properties': {
                                        'image': {'type': 'string', 'format': 'binary'}
                                    },
                                    'required': ['image'],
                                }
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
                            'content': {
                                'application/json': {
                                    'schema': {'$ref': '#/components/schemas/CreatedImage'}
                                }
                            },
                        },
                        '400': _ERROR,
                        **refused,
                        '408': _ERROR,
                        '409': _ERROR,
                        '413': _ERROR,
                        '415': _ERROR,
                        '422': _ERROR,
                        '503': _retry_later(
                            'Too many uploads, the image could not be converted now, or the '
                            'index or the image store does not answer; retry.'
                        ),
                        '507': _ERROR,
                    },
                },
            },
            '/images/{image_id}.jpeg': {
                'get': get_image,
                'head': _head_of(get_image),
                'delete': {
                    'summary': 'Delete an image and its thumbnails',
                    'description': (
                        'Takes the delete_token of the upload that stored the image, '
                        'or an API key.'
                    ),
                    'security': _needs_key(keys_required, 'deleteToken'),
                    'parameters': [image_id],
                    'responses': {
                        '204': {'description': 'Deleted.'},
                        **refused,
                        **_errors(403, 404, 507),
                        '503': _backend_down(),
                    },
                },
            },
            '/thumbnails/{image_id}/{width}x{height}.{format}': {
                'get': get_thumbnail,
                'head': _head_of(get_thumbnail),
            },
            '/thumbnails/{image_id}/{width}x{height}': {
                'get': negotiated,
                'head': _head_of(negotiated),
            },
            '/health': {'get': health, 'head': _head_of(health)},
            '/openapi.json': {'get': openapi},
        },
        'components': {
            'schemas': {
                'Image': {
                    'type': 'object',
                    'required': ['id', 'image', 'modified', 'size', 'thumbnails', 'formats'],
                    'properties': {
                        'id': _UUID,
                        'image': {'type': 'string', 'description': 'URI of the JPEG.'},
                        'modified': {'type': 'string', 'description': 'Upload time, HTTP date.'},
                        'size': {
                            'type': 'array',
                            'items': {'type': 'integer', 'minimum': 1},
                            'minItems': 2,
                            'maxItems': 2,
                            'description': '[width, height] in pixels.',
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
                            'propertyNames': {'enum': list(formats)},
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
                    'allOf': [{'$ref': '#/components/schemas/Image'}],
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
                        'index': part,
                        'storage': part,
                        'thumbnailer': part,
                        'cache': part,
                    },
                },
            },
            'securitySchemes': {
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
            },
            'responses': {
                'Unauthorized': {
                    'description': 'No valid API key came; nothing of the body was read.',
                    'headers': _CHALLENGE,
                    'content': {
                        'application/json': {'schema': {'$ref': '#/components/schemas/Error'}}
                    },
                },
                'Error': {
                    'description': 'An error, always JSON with a title and a description.',
                    'headers': {
                        'Cache-Control': {
                            'description': '`no-store`: no cache keeps an error.',
                            'schema': {'type': 'string'},
                        }
                    },
                    'content': {
                        'application/json': {'schema': {'$ref': '#/components/schemas/Error'}}
                    },
                },
            },
            'headers': {
                'WWW-Authenticate': {
                    'description': 'The Bearer challenge (RFC 6750) of every 401.',
                    'required': True,
                    'schema': {'type': 'string', 'pattern': '^Bearer( |$)'},
                },
                'ETag': {'description': 'Strong validator.', 'schema': {'type': 'string'}},
                'Last-Modified': {'description': 'Upload time.', 'schema': {'type': 'string'}},
                'Cache-Control': {
                    'description': '`public, max-age=31536000, immutable`',
                    'schema': {'type': 'string'},
                },
            },
            'parameters': {
                'If-None-Match': {
                    'name': 'If-None-Match',
                    'in': 'header',
                    'required': False,
                    'schema': {'type': 'string'},
                },
                'If-Modified-Since': {
                    'name': 'If-Modified-Since',
                    'in': 'header',
                    'required': False,
                    'schema': {'type': 'string'},
                },
            },
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
