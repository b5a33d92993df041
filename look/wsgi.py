"""The gunicorn entry point: ``gunicorn -c gunicorn.conf.py look.wsgi:app``."""

from look.app import create_app

app = create_app()
