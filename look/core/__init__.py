"""What look keeps: image ids, the index, the image store, the library, the upload spool, upkeep.

No Falcon and no Pillow: this floor stores and lists images whatever serves
them, and imports nothing of look but its domain errors.
"""
