"""Rendering a stored JPEG as a thumbnail: the Pillow work, run in a pool process."""

from __future__ import annotations

import io

from PIL import Image

from look.imaging import plugins
from look.imaging.convert import placeholder
from look.imaging.formats import encoding


def render_thumbnail(source: str, size: tuple[int, int], format: str, jpeg_quality: int) -> bytes:
    """Return the stored image at ``source`` resized to exactly ``size``, encoded as ``format``."""
    pillow_format, params = encoding(format, jpeg_quality)
    plugins.register()  # JPEG XL's writer
    # NOTE: stored JPEGs passed the pixel limit of their day when uploaded;
    #   a limit the process kept from its last conversion is not theirs.
    #   The address-space limit still bounds the decode.
    Image.MAX_IMAGE_PIXELS = None
    out = io.BytesIO()
    with Image.open(source) as image:
        thumbnail = scale_stored(image, size)
        # NOTE: stored JPEGs carry no metadata (convert_upload), and none may
        #   reach a thumbnail even so: Pillow's AVIF writer copies an ICC
        #   profile from info unless told otherwise, its JPEG writer a comment,
        #   and pillow-jxl's writer the EXIF of getexif(), which a JPEG opened
        #   keeps after its info is cleared: exif=b'' says there is none.
        thumbnail.info.clear()
        thumbnail.save(out, pillow_format, exif=b'', **params)
    return out.getvalue()


def scale_stored(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Return the opened, not yet loaded, stored JPEG ``image`` as RGB of exactly ``size``."""
    width, height = image.size
    # NOTE: draft() makes libjpeg decode at 1/2, 1/4 or 1/8 scale (DCT
    #   scaling), never below the target; thumbnail() only does that when
    #   the target is at most half of what it asks for.
    drafted = image.draft('RGB', size)
    scale = round(width / drafted[1][2]) if drafted else 1
    if size == (width // scale, height // scale):
        # PERF: the decoder has done the whole resize. It rounds a scaled
        #   side up where halving rounds down; the extra row or column is
        #   what halving leaves out, so it is cropped. Resizing 961x541 to
        #   960x540 instead made the whole render 4.6x slower.
        thumbnail = image if image.size == size else image.crop((0, 0, *size))
    else:
        thumbnail = image.resize(size, Image.Resampling.LANCZOS)
    return thumbnail if thumbnail.mode == 'RGB' else thumbnail.convert('RGB')


def stored_size(path: str) -> tuple[int, int]:
    """Return the pixel size of a stored JPEG, from its header (for a check's restore)."""
    with Image.open(path, formats=('JPEG',)) as image:
        width, height = image.size
    return width, height


def stored_placeholder(path: str) -> tuple[str, str]:
    """Return the placeholder (ThumbHash, colour) of a stored JPEG, from a draft at 1/8 scale."""
    Image.MAX_IMAGE_PIXELS = None  # as render_thumbnail: it passed its day's limit
    with Image.open(path, formats=('JPEG',)) as image:
        width, height = image.size
        image.draft('RGB', (max(1, width // 8), max(1, height // 8)))
        return placeholder(image)
