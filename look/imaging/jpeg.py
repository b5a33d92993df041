"""JPEGs kept as they were made: metadata removed from the bytes, the pixels never decoded again.

A JPEG already upright and in sRGB (or with no profile) is what look would
store anyway, less its metadata; decoding and encoding it again at q85 only
loses detail. Its marker segments are walked here and every one that
carries metadata is left out; the entropy-coded scans are copied as they are.
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageCms

from look.imaging.preflight import EOI, MARKER, SOI, SOS, TEM

_APP0, _APP14, _COM = 0xE0, 0xEE, 0xFE
_APPS = range(0xE0, 0xF0)
_ORIENTATION = 0x0112


def is_kept_as_made(image: Image.Image) -> bool:
    """Return whether an opened, not yet loaded, upload is stored as its own bytes.

    A JPEG (or a phone's MPO, whose first picture is one) of YCbCr or RGB
    pixels, upright (no orientation, or 1), with no colour profile or an
    sRGB one. Grey and CMYK ones, and any other profile, are converted.
    """
    if image.format not in ('JPEG', 'MPO') or image.mode != 'RGB':
        return False
    # NOTE: another orientation could be turned losslessly (jpegtran's
    #   transforms), but no maintained library does it in-process:
    #   jpegtran-cffi's last release is from 2015 and Pillow has none. So
    #   those JPEGs are turned and encoded again, as before.
    if image.getexif().get(_ORIENTATION, 1) != 1:
        return False
    icc_profile = image.info.get('icc_profile')
    return not icc_profile or is_srgb(icc_profile)


# Every 8-bit level of each channel that matters to a profile's curves and
# primaries: greys, and ramps of each primary and secondary.
_PROBE_LEVELS = range(0, 256, 15)


@functools.cache
def _probe() -> Image.Image:
    colours = [
        (level * r, level * g, level * b)
        for level in _PROBE_LEVELS
        for r, g, b in (
            (1, 1, 1),
            (1, 0, 0),
            (0, 1, 0),
            (0, 0, 1),
            (1, 1, 0),
            (0, 1, 1),
            (1, 0, 1),
        )
    ]
    probe = Image.new('RGB', (len(colours), 1))
    probe.putdata(colours)
    return probe


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB'))


# NOTE: what sRGB profiles in the wild differ by (v2 or v4, lookup tables or
#   curves, Pillow's or the IEC's) moves a level by 1 at most.
_SRGB_TOLERANCE = 2


def is_srgb(icc_profile: bytes) -> bool:
    """Return whether an ICC profile maps colours as sRGB does (then it can be left out).

    What it does is tested rather than what it is called: ramps of greys
    and primaries converted to sRGB must come out as they went in.
    """
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if profile.profile.xcolor_space != 'RGB ':
            return False
        converted = ImageCms.profileToProfile(_probe(), profile, _srgb(), outputMode='RGB')
    except (ImageCms.PyCMSError, OSError, ValueError):
        return False  # converted as today, which ignores a broken profile
    pairs = zip(_probe().tobytes(), converted.tobytes(), strict=True)
    return max(abs(before - after) for before, after in pairs) <= _SRGB_TOLERANCE


def strip_metadata(data: bytes) -> bytes:
    """Return a JPEG's bytes without its metadata segments, the rest byte for byte.

    Left out: every APPn but APP0 JFIF and APP14 Adobe (so EXIF and XMP in
    APP1, ICC in APP2 (only sRGB's is ever left out, by the caller's
    choice), IPTC in APP13, MPF, maker notes), COM, and anything after the
    end of image (an MPO's other pictures, a phone's trailer). Kept: the
    frame, tables, restart interval and every scan, in their order.
    """
    if data[:2] != b'\xff\xd8':
        raise ValueError('not a JPEG: no start of image')
    kept = [b'\xff\xd8']
    position = 2
    end = len(data)
    while True:
        match = MARKER.search(data, position)
        if match is None:
            # NOTE: a file cut off after its last scan: libjpeg decodes it
            #   whole (the caller checked), so it is ended as it should be.
            kept.append(b'\xff\xd9')
            return b''.join(kept)
        if data[position : match.start()].strip(b'\xff'):
            raise ValueError(f'not a marker at byte {position}')
        position = match.start()
        marker = data[position + 1]
        if marker == EOI:
            kept.append(b'\xff\xd9')
            return b''.join(kept)
        if marker in (TEM, SOI):
            raise ValueError(f'a marker that has no place in a JPEG image at byte {position}')
        segment_end = position + 2 + int.from_bytes(data[position + 2 : position + 4], 'big')
        if segment_end > end or segment_end < position + 4:
            raise ValueError(f'a marker segment runs past the end at byte {position}')
        if _is_kept(marker, data[position + 4 : position + 9]):
            kept.append(data[position:segment_end])
        position = segment_end
        if marker == SOS:
            # The entropy-coded data: up to the next marker that is not a
            # restart or stuffing, which only those can contain.
            scan_end = MARKER.search(data, position)
            stop = scan_end.start() if scan_end else end
            kept.append(data[position:stop])
            position = stop


def _is_kept(marker: int, head: bytes) -> bool:
    """Return whether a segment (by its marker and first payload bytes) stays."""
    if marker == _COM:
        return False
    if marker in _APPS:
        return (marker == _APP0 and head == b'JFIF\0') or (
            marker == _APP14 and head.startswith(b'Adobe')
        )
    return True
