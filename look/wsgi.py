"""The gunicorn entry point: ``gunicorn -c gunicorn.conf.py look.wsgi:app``."""

import logging

from look.web.app import create_app


def _log_where_gunicorn_logs() -> None:
    """Send look's messages to gunicorn's error log, when gunicorn has set one up.

    Done at import, before the app is made: with ``--preload`` that happens in
    the master, whose start-up messages (where images are stored, what
    recovery did) would otherwise be lost.
    """
    error_log = logging.getLogger('gunicorn.error')
    if not error_log.handlers:
        return  # not under gunicorn
    look_log = logging.getLogger('look')
    look_log.setLevel(error_log.level)
    look_log.handlers = list(error_log.handlers)
    look_log.propagate = False


_log_where_gunicorn_logs()
app = create_app()
