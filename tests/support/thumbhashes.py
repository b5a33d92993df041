"""ThumbHashes by the published reference implementation (npm's ``thumbhash``), run in node.

The gallery decodes ThumbHashes with a decoder of its own (look/web/static/gallery.js);
these are what it is compared against, and the real hashes the tests set on images.
"""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess

from PIL import Image

from support.imagegen import picture
from support.processes import require_executable

REFERENCE = 'thumbhash@0.1.1'
# ThumbHash encodes images of at most 100x100 pixels.
MOST_SIDE = 100
# The ThumbHash of imagegen's picture((1600, 1200), seed=1) (the browser tests' PHOTO), and its
# average colour, as the reference computes them (pinned; test_browser checks them again).
PHOTO_THUMBHASH = 'WjkKNZIQXXhgpnd4iHeHhgRx9Spk'
PHOTO_COLOR = '#866a4c'


def install_reference(directory: pathlib.Path) -> pathlib.Path:
    """Install the reference implementation into ``directory`` (npm's cache makes it quick)."""
    npm = require_executable('npm')
    subprocess.run(
        [npm, 'install', '--no-audit', '--no-fund', '--silent', REFERENCE],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return directory


def _node(reference: pathlib.Path, script: str, argument: object) -> object:
    node = require_executable('node')
    result = subprocess.run(
        [node, '--input-type=module', '-e', script, json.dumps(argument)],
        cwd=reference,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(result.stdout)


def encode(reference: pathlib.Path, image: Image.Image) -> tuple[str, str]:
    """Return the reference's ThumbHash (standard base64) of an image, and its average colour."""
    small = image.convert('RGBA')
    small.thumbnail((MOST_SIDE, MOST_SIDE))
    script = """
    import * as thumbhash from 'thumbhash';
    const [w, h, data] = JSON.parse(process.argv[1]);
    const hash = thumbhash.rgbaToThumbHash(w, h, Buffer.from(data, 'base64'));
    const { r, g, b } = thumbhash.thumbHashToAverageRGBA(hash);
    const hex = (v) => Math.round(v * 255).toString(16).padStart(2, '0');
    const color = `#${hex(r)}${hex(g)}${hex(b)}`;
    console.log(JSON.stringify([Buffer.from(hash).toString('base64'), color]));
    """
    hash_, color = _node(
        reference, script, [*small.size, base64.b64encode(small.tobytes()).decode()]
    )  # type: ignore[misc]
    return str(hash_), str(color)


def decode(reference: pathlib.Path, thumbhash: str) -> tuple[int, int, bytes]:
    """Return the reference's decoding of a ThumbHash: width, height and RGBA bytes."""
    script = """
    import * as thumbhash from 'thumbhash';
    const hash = Buffer.from(JSON.parse(process.argv[1]), 'base64');
    const { w, h, rgba } = thumbhash.thumbHashToRGBA(hash);
    console.log(JSON.stringify([w, h, Buffer.from(rgba).toString('base64')]));
    """
    width, height, data = _node(reference, script, thumbhash)  # type: ignore[misc]
    return int(width), int(height), base64.b64decode(data)


def photo_picture() -> Image.Image:
    """Return the picture PHOTO_THUMBHASH is of."""
    return picture((1600, 1200), seed=1)
