"""gunicorn settings for look: ``gunicorn -c gunicorn.conf.py look.wsgi:app``.

They live in look.server.settings (which ``look serve`` loads from an
installed look); command-line flags and GUNICORN_CMD_ARGS override them.
"""

from look.server.settings import *  # noqa: F403
