"""``/openapi.json``: an OpenAPI 3.1 description of every route, kept honest by a test."""

from __future__ import annotations

import copy
import json
from typing import Any

import falcon

from look import __version__

_ERROR = {'$ref': '#/components/responses/Error'}
_UUID = {'type': 'string', 'format': 'uuid'}
_JPEG = {'image/jpeg': {'schema': {'type': 'string', 'contentMediaType': 'image/jpeg'}}}
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


def _jpeg_operation(summary: str, parameters: list[Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        'summary': summary,
        'parameters': parameters + _CONDITIONAL_PARAMETERS,
        'responses': {
            '200': {
                'description': 'The JPEG; it never changes, so it may be cached for a year.',
                'headers': {
                    **_VALIDATOR_HEADERS,
                    'Content-Length': {'schema': {'type': 'integer'}},
                },
                'content': _JPEG,
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
        status: ({'description': 'Error; headers only.'} if response == _ERROR else response)
        for status, response in head['responses'].items()
    }
    return head


def openapi_document(*, max_upload_bytes: int, min_thumb_size: int) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of look with this configuration's limits."""
    image_id = {
        'name': 'image_id',
        'in': 'path',
        'required': True,
        'description': 'The id of an image, as in its "id".',
        'schema': _UUID,
    }
    list_images = {
        'summary': 'List images, oldest first, a page at a time',
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
        },
    }
    get_image = _jpeg_operation('Download an image', [image_id], _errors(404))
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
    get_thumbnail = _jpeg_operation(
        'Render a thumbnail (only the sizes in the image\'s "thumbnails")',
        thumbnail_parameters,
        {'404': _ERROR, '503': _retry_later('Too busy or a render failed; retry shortly.')},
    )
    get_thumbnail['responses']['200']['headers']['X-Look-Cache'] = {
        'description': 'Whether the thumbnail came from the cache.',
        'schema': {'type': 'string', 'enum': ['Hit', 'Miss']},
    }
    health = {
        'summary': 'Report whether look can serve, and the state of each part',
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
            'status': {'type': 'string', 'enum': ['ok', 'fail', 'unavailable', 'disabled']},
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
                f'down to {min_thumb_size} pixels a side. Every error is JSON with '
                '"title" and "description".'
            ),
        },
        'paths': {
            '/images': {
                'get': list_images,
                'head': _head_of(list_images),
                'post': {
                    'summary': 'Upload an image',
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
                                    'schema': {'$ref': '#/components/schemas/Image'}
                                }
                            },
                        },
                        '400': _ERROR,
                        '408': _ERROR,
                        '413': _ERROR,
                        '415': _ERROR,
                        '422': _ERROR,
                        '503': _retry_later('The image could not be converted now; retry.'),
                        '507': _ERROR,
                    },
                },
            },
            '/images/{image_id}.jpeg': {
                'get': get_image,
                'head': _head_of(get_image),
                'delete': {
                    'summary': 'Delete an image and its thumbnails',
                    'parameters': [image_id],
                    'responses': {'204': {'description': 'Deleted.'}, **_errors(404)},
                },
            },
            '/thumbnails/{image_id}/{width}x{height}.jpeg': {
                'get': get_thumbnail,
                'head': _head_of(get_thumbnail),
            },
            '/health': {'get': health, 'head': _head_of(health)},
            '/openapi.json': {'get': openapi},
        },
        'components': {
            'schemas': {
                'Image': {
                    'type': 'object',
                    'required': ['id', 'image', 'modified', 'size', 'thumbnails'],
                    'additionalProperties': False,
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
                            'description': 'URIs of the thumbnails, largest first.',
                        },
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
                    'required': ['status', 'storage', 'thumbnailer', 'cache'],
                    'properties': {
                        'status': {'type': 'string', 'enum': ['ok', 'fail']},
                        'storage': part,
                        'thumbnailer': part,
                        'cache': part,
                    },
                },
            },
            'responses': {
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
                }
            },
            'headers': {
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
