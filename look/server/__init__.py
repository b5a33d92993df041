"""gunicorn: look's worker, the settings and hooks gunicorn.conf.py loads, start-up checks, logs.

Nothing in look imports this floor; gunicorn does.
"""
