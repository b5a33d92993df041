"""look's gunicorn settings and hooks: ``gunicorn -c python:look.server.settings look.wsgi:app``.

The top-level ``gunicorn.conf.py`` and ``look serve`` load this module.
Command-line flags and GUNICORN_CMD_ARGS override anything set here. The
values come from look's settings table (``look.config``); a bad one stops
gunicorn with one line naming its variable.
"""

import os
import shutil
import sys
import tempfile

from look.config import ConfigError, read


def _setting(attribute):
    try:
        return read(attribute)
    except ConfigError as ex:
        raise SystemExit(f'look cannot start: {ex}') from None


bind = _setting('bind')

# NOTE: every worker writes its Prometheus samples to one directory, and
#   /metrics in any worker adds them all up. It must be set before a worker
#   makes its metrics; a fresh one per server, so no stale samples are counted.
_OWN_METRICS_DIR = 'PROMETHEUS_MULTIPROC_DIR' not in os.environ
if _OWN_METRICS_DIR:
    os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp(prefix='look-metrics-')

# One worker per core; the image work itself runs in each worker's process
# pool, so worker threads mostly wait on the pool, the disk or Redis.
workers = _setting('workers')
# gthread, but a connection gets a thread only once its request line and
# headers have all arrived, and a request with a body only while a body slot
# is free: see look/server/worker.py.
worker_class = 'look.server.worker.HeadFirstWorker'
# NOTE: more threads than the bodies a worker receives at once
#   (LOOK_MAX_CONCURRENT_UPLOADS), so cache hits, downloads and renders
#   always find a free thread. Keep-alive clients stay on one worker, so one
#   worker may take a whole page of thumbnails.
threads = 12

timeout = 60
graceful_timeout = 30
keepalive = 5
# NOTE: seconds a client may take to send a request's line and headers, all
#   of them, from when it connects (on a kept-alive connection, from the
#   request's first byte); then it gets a 408 and the connection is closed.
#   Bodies have their own limit in look (LOOK_UPLOAD_TIMEOUT). gunicorn has
#   no such setting: post_fork hands it to the worker.
header_timeout = _setting('header_timeout')

# Uploads are streamed to disk, so request bodies need no limit here; look
# enforces LOOK_MAX_UPLOAD_BYTES itself. Header limits stay at gunicorn's.

# LOOK_LOG_FORMAT=json: gunicorn's lines and look's, one JSON object each.
if _setting('log_format') == 'json':
    logger_class = 'look.server.logs.JsonLogger'

# NOTE: no access log by default, as in gunicorn itself: a line per request
#   costs every request its formatting and a write. `--access-logfile -`
#   (or GUNICORN_CMD_ARGS) turns it on. look's own messages go to gunicorn's
#   error log (look/wsgi.py).

# NOTE: the workers' image pools share the cores out: cores // workers image
#   processes each, at least 1. With a pool as large as the machine in every
#   worker, twice as many images took turns on the cores under full load.
#   A LOOK_PROCESSES of your own wins.
_SHARE_CORES = 'LOOK_PROCESSES' not in os.environ


def _cores_per_worker(worker_count):
    return max(1, (os.cpu_count() or 1) // worker_count)


def on_starting(server):
    """Stop before any socket or worker if look's settings are bad or writes would be open."""
    from gunicorn import systemd

    from look.server import startup

    # The sockets gunicorn will serve on: systemd's or a re-executed master's, else the binds.
    inherited = os.environ.get('GUNICORN_FD')
    fds = systemd.listen_fds(unset_environment=False)
    if fds:
        addresses = list(range(systemd.SD_LISTEN_FDS_START, systemd.SD_LISTEN_FDS_START + fds))
    elif inherited:
        addresses = [int(fd) for fd in inherited.split(',')]
    else:
        addresses = server.cfg.address
    problem = startup.refusal(addresses)
    warning = startup.notice(addresses) if problem is None else None
    if warning is not None:
        server.log.warning(warning)
    if problem is not None:
        server.log.error(problem)
        if server.pidfile is not None:
            server.pidfile.unlink()
        sys.exit(1)


def post_fork(server, worker):
    """Give this worker its deadlines and its body slots."""
    worker.header_timeout = header_timeout
    worker.max_bodies = _setting('max_concurrent_uploads')
    worker.body_wait = _setting('max_queue_seconds')


def post_worker_init(worker):
    """Give the worker's pool its share of the cores, and start it before a request needs it."""
    from look.imaging import pool

    if _SHARE_CORES:
        pool.resize_all(_cores_per_worker(worker.cfg.workers))
    pool.start_all()


def worker_exit(server, worker):
    """Stop the worker's pool processes so none outlive gunicorn; close its connections."""
    from look.core import backends
    from look.imaging import pool

    pool.close_all()
    backends.close_all()


def child_exit(server, worker):
    """Stop counting a gone worker's gauges (its counters still add up)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this server made."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ['PROMETHEUS_MULTIPROC_DIR'], ignore_errors=True)
