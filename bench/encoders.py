"""WebP and AVIF settings for thumbnails, on real photographs: ``python -m bench.encoders``.

Each photograph is stored as look stores uploads (a q85 JPEG, cover-cropped
down to 1920x1080 or 1080x1920 when it is larger), and its thumbnails at 1/2,
1/4 and 1/8 of that are drafted, cropped or resized as look does. Every
encoding of the same thumbnail pixels is then compared with look's JPEG of
them: median bytes against the JPEG's, SSIM against the pixels encoded (luma
and chroma, BT.601 YCbCr as JPEG has it), the worst photograph's luma SSIM
less the JPEG's, and CPU milliseconds to encode and to render (decode and
scale plus encode), medians over the photographs. One process, one image at a
time; the encodings of each thumbnail run in a shuffled order.

Photographs: every JPEG or PNG in PHOTO_DIR if given; otherwise Debian's
lomiri-wallpapers-16.04 and -20.04 (``apt-get download``) and scikit-image's
astronaut (``pip download``), fetched into a temporary directory; and a
generated screenshot, for contrast. With ``--look``, only the JPEG and
look's own settings (look.thumbnailer.ENCODINGS), for steadier times with
``--repeat``. Needs numpy, which look does not.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from look.imaging import pool as thumbnailer
from look.imaging.convert import convert_upload
from look.imaging.pool import IMAGE_BLOCKS_CACHED
from look.imaging.render import scale_stored

JPEG_QUALITY = 85  # look's default LOOK_JPEG_QUALITY
STORED = (1920, 1080)
LEVELS = {2: '960x540', 4: '480x270', 8: '240x135'}
DEBIAN_PACKAGES = ('lomiri-wallpapers-16.04', 'lomiri-wallpapers-20.04')
# The photographs of those packages (the rest are drawings and renders).
DEBIAN_PHOTOS = {
    'aitzgorri_by_Aitzol_Berasategi.jpg': 'landscape, autumn trees',
    'picosdeeuropa_by_Aitzol_Berasategi.jpg': 'mountains, sky',
    'Bridge_by_Sander_Klootwijk.jpg': 'sky, thin lines',
    'sunset_by_Aitzol_Berasategi.jpg': 'into the sun',
    'Dragonfly_by_Bolly.jpg': 'foliage',
    'life_by_Aitzol_Berasategi.jpg': 'forest stream, texture',
    'analogpattern_by_Peter_Nerlich.jpg': 'texture close-up',
    'seeding_by_Clements_Engelhardt.jpg': 'dusk, backlit',
    'Infinite-Sea_by_Aury88.jpg': 'night sky, stars',
    'Wine_by_Jakkub_Mede.jpg': 'indoor, low light (portrait format)',
    'friends_by_Aitzol_Berasategi.jpg': 'dogs, fur (portrait format)',
    'Kleiber_by_Lukas_Baubkus.jpg': 'bird, bokeh',
    'free_by_Peter_Nerlich.jpg': 'indoor, smooth gradients',
    'Picture_0B_by_freespace.jpg': 'saturated red',
    'Picture_1A_by_freespace.jpg': 'saturated colours (1365x1074)',
}
SKIMAGE_PHOTOS = {'astronaut.png': 'portrait, skin (512x512)'}

WEBP = [('webp', {'quality': q, 'method': m}) for q in (70, 75, 80, 85, 90) for m in range(7)]
AVIF = [
    ('avif', {'quality': q, 'speed': s, 'subsampling': ss, 'max_threads': 1})
    for q in (40, 50, 55, 60, 65, 70, 75)
    for s in (6, 7, 8, 9, 10)
    for ss in ('4:2:0', '4:4:4')
]
# NOTE: a pool process is one of a core's worth; a second thread only
#   pays if it costs no more CPU than it saves in waiting.
THREADS = [
    ('avif', {'quality': 60, 'speed': s, 'subsampling': '4:2:0', 'max_threads': 2})
    for s in (8, 10)
]
JPEG = ('jpeg', {'quality': JPEG_QUALITY})
Encodings = list[tuple[str, dict[str, Any]]]


def fetch_photos(directory: pathlib.Path) -> dict[pathlib.Path, str]:
    """Download the photographs' packages into ``directory``; return path -> description."""
    for package in DEBIAN_PACKAGES:
        subprocess.run(['apt-get', 'download', package], cwd=directory, check=True)
    for deb in directory.glob('*.deb'):
        subprocess.run(['dpkg', '-x', deb, directory / 'debian'], check=True)
    backgrounds = directory / 'debian' / 'usr' / 'share' / 'backgrounds'
    photos = {backgrounds / name: f'{text}; Debian {", ".join(DEBIAN_PACKAGES)}'
              for name, text in DEBIAN_PHOTOS.items()}  # fmt: skip
    pip = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary', ':all:']
    subprocess.run([*pip, '-d', directory, 'scikit-image'], check=True)
    with zipfile.ZipFile(next(directory.glob('scikit_image-*.whl'))) as wheel:
        version = pathlib.Path(str(wheel.filename)).name.split('-')[1]
        for name, text in SKIMAGE_PHOTOS.items():
            path = directory / name
            path.write_bytes(wheel.read(f'skimage/data/{name}'))
            photos[path] = f'{text}; PyPI scikit-image {version}, skimage/data/{name}'
    return photos


def screenshot() -> Image.Image:
    """Return a made-up 1920x1080 desktop window: flat colours, text, sharp edges."""
    rng = random.Random(1)
    image = Image.new('RGB', STORED, (246, 246, 248))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(16)
    draw.rectangle((0, 0, 1920, 48), fill=(40, 44, 52))
    draw.text((24, 14), 'look: thumbnails in WebP and AVIF', font=font, fill='white')
    draw.rectangle((0, 48, 320, 1080), fill=(230, 232, 238))
    for row in range(24):
        draw.text((24, 72 + 40 * row), f'Folder {row + 1}', font=font, fill=(60, 60, 70))
    words = ('the', 'quick', 'brown', 'fox', 'jumps', 'over', 'lazy', 'dogs', 'thumbnails')
    for row in range(40):
        line = ' '.join(rng.choice(words) for _ in range(rng.randrange(8, 20)))
        draw.text((360, 80 + 24 * row), line, font=font, fill=(20, 20, 20))
    for n, colour in enumerate([(0, 120, 212), (16, 124, 16), (209, 52, 56)]):
        draw.rounded_rectangle((1500, 80 + 60 * n, 1860, 124 + 60 * n), 8, fill=colour)
    return image


def store(image: Image.Image, path: pathlib.Path) -> pathlib.Path:
    """Write ``image`` as look would store it, cover-cropped down to 1920x1080 if larger."""
    target = STORED if image.width >= image.height else STORED[::-1]
    if image.width >= target[0] and image.height >= target[1]:
        image = ImageOps.fit(image, target, Image.Resampling.LANCZOS)
    image.save(path, 'PNG')
    convert_upload(str(path), 100_000_000, JPEG_QUALITY)
    return path


def encode(image: Image.Image, fmt: str, params: dict[str, Any]) -> tuple[bytes, float]:
    """Return ``image`` encoded and the CPU seconds that took (every thread's)."""
    out = io.BytesIO()
    started = time.process_time()
    image.save(out, fmt.upper(), **params)
    return out.getvalue(), time.process_time() - started


def planes(image: Image.Image) -> list[np.ndarray]:
    """Return the Y, Cb and Cr planes of ``image`` as floats."""
    return [np.asarray(plane, dtype=np.float64) for plane in image.convert('YCbCr').split()]


_WINDOW = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
_WINDOW /= _WINDOW.sum()


def _blur(plane: np.ndarray) -> np.ndarray:
    """Filter with SSIM's 11-tap Gaussian (sigma 1.5), keeping only whole windows."""
    rows = sum(w * plane[i : plane.shape[0] - 10 + i] for i, w in enumerate(_WINDOW))
    return sum(w * rows[:, i : rows.shape[1] - 10 + i] for i, w in enumerate(_WINDOW))


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Return the mean SSIM of two planes (Wang et al. 2004, 8-bit constants)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _blur(x), _blur(y)
    vx, vy, cov = _blur(x * x) - mx * mx, _blur(y * y) - my * my, _blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def scale_seconds(stored: pathlib.Path, size: tuple[int, int], times: int = 5) -> float:
    """Return the median CPU seconds to open, draft and scale the stored JPEG to ``size``."""
    samples = []
    for _ in range(times):
        started = time.process_time()
        with Image.open(stored) as image:
            scale_stored(image, size).load()
        samples.append(time.process_time() - started)
    return statistics.median(samples)


def measure(
    stored: pathlib.Path, encodings: Encodings, repeat: int, rng: random.Random
) -> Iterator[tuple[int, int, dict[str, float]]]:
    """Yield (level, encoding index, figures) for every thumbnail of one stored photo."""
    for level in LEVELS:
        with Image.open(stored) as image:
            size = (image.width // level, image.height // level)
            pixels = scale_stored(image, size)
            pixels.load()
        reference = planes(pixels)
        scale = scale_seconds(stored, size)
        times: dict[int, list[float]] = {n: [] for n in range(len(encodings))}
        sizes: dict[int, bytes] = {}
        for _ in range(repeat):
            order = list(range(len(encodings)))
            rng.shuffle(order)
            for n in order:
                sizes[n], seconds = encode(pixels, *encodings[n])
                times[n].append(seconds)
        for n, data in sizes.items():
            with Image.open(io.BytesIO(data)) as decoded:
                ssims = [ssim(a, b) for a, b in zip(reference, planes(decoded), strict=True)]
            encode_ms = statistics.median(times[n]) * 1000
            yield (
                level,
                n,
                {
                    'bytes': len(data),
                    'ssim_y': ssims[0],
                    'ssim_c': (ssims[1] + ssims[2]) / 2,
                    'encode_ms': encode_ms,
                    'render_ms': scale * 1000 + encode_ms,
                },
            )


def settings_text(fmt: str, params: dict[str, Any]) -> str:
    """Return ``q60 speed 8 4:2:0 1 thread``-like text for a table cell."""
    names = {'quality': 'q', 'method': 'method ', 'speed': 'speed '}
    text = [f'{names.get(key, "")}{value}' for key, value in params.items() if key in names]
    text += [params['subsampling']] if 'subsampling' in params else []
    threads = params.get('max_threads')
    text += [f'{threads} thread{"s" if threads > 1 else ""}'] if threads else []
    return ' '.join(text)


def table(encodings: Encodings, results: dict[int, list[dict[str, float]]]) -> list[str]:
    """Return markdown rows: medians over the photographs, sizes against the JPEG's."""
    jpeg = results[0]
    lines = [
        '| format | settings | bytes vs JPEG | SSIM Y | SSIM CbCr | worst ΔSSIM Y '
        '| encode ms (CPU) | render ms (CPU) |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for n, (fmt, params) in enumerate(encodings):
        rows = results[n]
        ratio = statistics.median(r['bytes'] / j['bytes'] for r, j in zip(rows, jpeg, strict=True))
        worst = min(r['ssim_y'] - j['ssim_y'] for r, j in zip(rows, jpeg, strict=True))
        medians = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        lines.append(
            f'| {fmt} | {settings_text(fmt, params)} | {ratio:.2f} | {medians["ssim_y"]:.4f} '
            f'| {medians["ssim_c"]:.4f} | {worst:+.4f} | {medians["encode_ms"]:.1f} '
            f'| {medians["render_ms"]:.1f} |'
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog='python -m bench.encoders', description=__doc__)
    parser.add_argument('photo_dir', nargs='?', type=pathlib.Path)
    parser.add_argument('--repeat', type=int, default=1, help='encodes of each, for the time')
    parser.add_argument('--look', action='store_true', help="only look's own settings")
    args = parser.parse_args()
    if args.look:
        encodings = [JPEG, *thumbnailer.ENCODINGS.items()]
    else:
        encodings = [JPEG, *WEBP, *AVIF, *THREADS]
    Image.core.set_blocks_max(IMAGE_BLOCKS_CACHED)  # as in look's pool processes
    with tempfile.TemporaryDirectory(prefix='look-encoders-') as work:
        workdir = pathlib.Path(work)
        if args.photo_dir:
            photos = {path: f'from {args.photo_dir}' for path in sorted(args.photo_dir.iterdir())
                      if path.suffix.lower() in ('.jpg', '.jpeg', '.png')}  # fmt: skip
        else:
            photos = fetch_photos(workdir)
        stored = []
        for n, (path, text) in enumerate(photos.items()):
            with Image.open(path) as image:
                print(f'- {path.name} ({image.width}x{image.height}): {text}')
                upright = ImageOps.exif_transpose(image).convert('RGB')
            stored.append(store(upright, workdir / f'{n}.jpeg'))
        print('- screenshot (1920x1080): generated by bench.encoders.screenshot()')
        stored.append(store(screenshot(), workdir / 'screenshot.jpeg'))

        rng = random.Random(0)
        results: dict[int, dict[int, list[dict[str, float]]]] = {
            level: {n: [] for n in range(len(encodings))} for level in LEVELS
        }
        for number, path in enumerate(stored, 1):
            print(f'measuring {number}/{len(stored)}', file=sys.stderr, flush=True)
            for level, n, figures in measure(path, encodings, args.repeat, rng):
                results[level][n].append(figures)
    for level, name in LEVELS.items():
        print(f'\n### thumbnails at 1/{level} ({name} of 1920x1080), {len(stored)} pictures\n')
        print('\n'.join(table(encodings, results[level])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
