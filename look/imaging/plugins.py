"""The plugins of formats Pillow does not read itself, registered where uploads are decoded."""

from __future__ import annotations

_registered = False


def register() -> None:
    """Register the HEIF and JPEG XL plugins with Pillow, once per process.

    NOTE: called by the pool's functions, never at import: a web worker that
      imports look.imaging loads neither libheif nor libjxl, and a pool
      process loads them on its first upload or render.
    """
    global _registered
    if _registered:
        return
    import pillow_heif
    from pillow_jxl import JpegXLImagePlugin

    # NOTE: one thread each, as AVIF's encoder has: a pool process has a
    #   core's share, and more threads only contend for it. Thumbnails,
    #   depth maps and auxiliary images of a HEIC are never shown, so libheif
    #   is not asked to list them.
    pillow_heif.register_heif_opener(
        decode_threads=1, thumbnails=False, depth_images=False, aux_images=False
    )
    JpegXLImagePlugin.DECODE_THREADS = 1
    _registered = True
