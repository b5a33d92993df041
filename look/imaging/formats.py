"""The image formats look reads and the thumbnail formats it writes, with their encoders."""

from __future__ import annotations

# Every format look can render, in the order preferred when a client rates
# several equally: the smallest files first (JPEG XL is 0.67 of the JPEG's
# bytes at 960x540, AVIF 0.63: see ENCODINGS).
FORMAT_MEDIA_TYPES = {
    'avif': 'image/avif',
    'jxl': 'image/jxl',
    'webp': 'image/webp',
    'jpeg': 'image/jpeg',
}
FALLBACK_FORMAT = 'jpeg'  # every client can show it, so nothing is ever a 406


READABLE_FORMATS = 'JPEG, PNG, GIF, BMP, TIFF, WebP, HEIC/HEIF, AVIF or JPEG XL'


# NOTE: only these decoders see uploads. Pillow knows many more (EPS would
#   hand the upload to Ghostscript). Phones' MPO files open as JPEG. HEIF
#   (an iPhone's HEIC) is read by pillow-heif and JXL by pillow-jxl-plugin,
#   registered in the pool process (look.imaging.plugins); AVIF by Pillow.
ACCEPTED_FORMATS = ('JPEG', 'PNG', 'GIF', 'BMP', 'TIFF', 'WEBP', 'HEIF', 'AVIF', 'JXL')
# The media types of those formats, for those who name what they send; a
# HEIF whose pictures are HEVC is image/heic.
ACCEPTED_MEDIA_TYPES = (
    *(f'image/{name.lower()}' for name in ACCEPTED_FORMATS),
    'image/heic',
)


THUMBNAIL_FORMATS = ('jpeg', 'webp', 'avif', 'jxl')


# Pillow's save parameters of each thumbnail format but JPEG, whose quality is
# LOOK_JPEG_QUALITY. Stored JPEGs are sRGB: WebP without a profile is sRGB,
# and Pillow's AVIF says so in its nclx box (BT.709 primaries, sRGB transfer,
# full range) with JPEG's own BT.601 matrix.
# NOTE: chosen on 16 photographs and a screenshot at about the SSIM of the q85
#   JPEG (medians at 960x540, 480x270, 240x135; bench/README.md, "How the
#   thumbnail encoders were chosen").
#   WebP q85 is 0.70-0.77 of the JPEG's bytes at method 4 (libwebp's own);
#   methods 0-2 take half the time or less for 2-19 points more, 5-6 take
#   1-3 off for up to 2.2x the time. AVIF q70 is 0.69-0.71 at speed 9 (10 gives
#   the same bytes) for 35/12/4 ms of CPU; speed 8 takes 3-8 points off for
#   3-4x that, speed 6 6-9 points for 9-11x. 4:2:0 as in the JPEG: 4:4:4 is
#   4-7% larger and needs AV1's High profile. One thread: a pool process has
#   a core's share, and a second saves no CPU.
# NOTE: JPEG XL (pillow-jxl-plugin, libjxl 0.12) was chosen the same way, on
#   4 photographs (lomiri-wallpapers-20.04) and a grainy generated one,
#   against AVIF above: quality 85 (distance 1.45) is AVIF q70's SSIM on the
#   photographs (0.992/0.939/0.988/0.993 against 0.992/0.940/0.986/0.997),
#   0.67 of the JPEG's bytes (AVIF 0.63), for 15 ms of CPU at 960x540 (AVIF
#   22 ms) and 2.3 ms at 240x135 (AVIF 2.1). Effort 3: 4 gives the same
#   bytes, 5 saves 5-10% for 6x the time (88 ms), 7 for 12x. On the grainy
#   picture it is worse than AVIF (SSIM 0.89 against 0.92). On make bench's
#   generated 1920x1080 picture it costs more than AVIF, less than WebP: 22.8
#   ms a 960x540 answer against 15.4 (AVIF) and 27.7 (WebP), 4.6 ms at
#   240x135 against 4.2 and 4.3. Within what WebP costs, it is served by
#   default, to clients whose Accept names image/jxl (and not AVIF at a
#   higher q), which browsers that take AVIF never render. lossless_jpeg is
#   off: else the plugin turns a source JPEG it is handed into a JPEG XL of
#   the whole file, not of the thumbnail's pixels.
ENCODINGS: dict[str, dict[str, int | str]] = {
    'webp': {'quality': 85, 'method': 4},
    'avif': {'quality': 70, 'speed': 9, 'subsampling': '4:2:0', 'max_threads': 1},
    'jxl': {'quality': 85, 'effort': 3, 'num_threads': 1, 'lossless_jpeg': False},
}


# How encoding_tag() writes each parameter: every one can change the bytes
# (but lossless_jpeg, which is never on).
_TAG_PREFIXES = {
    'quality': 'q',
    'method': 'm',
    'speed': 's',
    'subsampling': '',
    'max_threads': 't',
    'effort': 'e',
    'num_threads': 't',
}


def encoding_tag(format: str, jpeg_quality: int) -> str:
    """Return a short name for how ``format`` is encoded; it changes whenever the bytes would."""
    if format == 'jpeg':
        return f'q{jpeg_quality}'
    params = encoding(format, jpeg_quality)[1]
    tags = [
        _TAG_PREFIXES[key] + str(value).replace(':', '')
        for key, value in params.items()
        if key in _TAG_PREFIXES
    ]
    return '-'.join([format, *tags])


def encoding(format: str, jpeg_quality: int) -> tuple[str, dict[str, int | str]]:
    """Return the Pillow format name and save parameters of a thumbnail format."""
    if format == 'jpeg':
        return 'JPEG', {'quality': jpeg_quality}
    if format not in ENCODINGS:
        raise ValueError(f'{format!r} is not one of {THUMBNAIL_FORMATS}')
    return format.upper(), ENCODINGS[format]
