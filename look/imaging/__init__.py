"""Pixels: formats, checks before decoding, the Pillow work, renditions and the process pool.

No Falcon: the functions that touch untrusted bytes are top-level and
picklable, and run in the pool's processes (``look.imaging.pool``).
"""
