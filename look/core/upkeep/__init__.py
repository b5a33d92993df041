"""Keeping index and image store in step by hand: check and repair, and moving a store in."""
