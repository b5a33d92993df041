"""gunicorn settings for look: ``gunicorn -c gunicorn.conf.py look.wsgi:app``.

Command-line flags and GUNICORN_CMD_ARGS override anything set here.
"""

import math
import os
import shutil
import sys
import tempfile

bind = os.environ.get('LOOK_BIND', '127.0.0.1:8000')

# NOTE: every worker writes its Prometheus samples to one directory, and
#   /metrics in any worker adds them all up. It must be set before a worker
#   imports look; a fresh one per server, so no stale samples are counted.
_OWN_METRICS_DIR = 'PROMETHEUS_MULTIPROC_DIR' not in os.environ
if _OWN_METRICS_DIR:
    os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp(prefix='look-metrics-')

# One worker per core; the image work itself runs in each worker's process
# pool, so worker threads mostly wait on the pool, the disk or Redis.
workers = int(os.environ.get('WEB_CONCURRENCY', os.cpu_count() or 1))
# gthread, but a connection gets a thread only once its request line and
# headers have all arrived: see look/worker.py.
worker_class = 'look.worker.HeadFirstWorker'
# NOTE: more threads than the 8 images (renders and uploads) a worker lets
#   wait on its pool, so cache hits and downloads always find a free thread.
#   Keep-alive clients stay on one worker, so one worker may take a whole
#   page of thumbnails.
threads = 12

# NOTE: the workers' image pools share the cores out: cores // workers image
#   processes each, at least 1. With a pool as large as the machine in every
#   worker, twice as many images took turns on the cores under full load.
#   A LOOK_PROCESSES of your own wins. Set here for --preload (the master
#   makes the app) and again in post_fork from the final number of workers.
_SHARE_CORES = 'LOOK_PROCESSES' not in os.environ


def _cores_per_worker(worker_count):
    return str(max(1, (os.cpu_count() or 1) // worker_count))


if _SHARE_CORES:
    os.environ['LOOK_PROCESSES'] = _cores_per_worker(workers)


def _seconds(name, default):
    value = os.environ.get(name, default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise SystemExit(f'{name} must be a number of seconds greater than 0, got {value!r}')
    return seconds


timeout = 60
graceful_timeout = 30
keepalive = 5
# NOTE: seconds a client may take to send a request's line and headers, all
#   of them, from when it connects (on a kept-alive connection, from the
#   request's first byte); then it gets a 408 and the connection is closed.
#   Bodies have their own limit in look (LOOK_UPLOAD_TIMEOUT). gunicorn has
#   no such setting: post_fork hands it to the worker.
header_timeout = _seconds('LOOK_HEADER_TIMEOUT', '10')

# Uploads are streamed to disk, so request bodies need no limit here; look
# enforces LOOK_MAX_UPLOAD_BYTES itself. Header limits stay at gunicorn's.

# LOOK_LOG_FORMAT=json: gunicorn's lines and look's, one JSON object each.
if os.environ.get('LOOK_LOG_FORMAT', '').strip().lower() == 'json':
    logger_class = 'look.logs.JsonLogger'

# NOTE: no access log by default, as in gunicorn itself: a line per request
#   costs every request its formatting and a write. `--access-logfile -`
#   (or GUNICORN_CMD_ARGS) turns it on. look's own messages go to gunicorn's
#   error log (look/wsgi.py).


def on_starting(server):
    """Stop before any socket or worker if look's settings are bad or writes would be open."""
    from gunicorn import systemd

    from look import startup

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
    if problem is not None:
        server.log.error(problem)
        if server.pidfile is not None:
            server.pidfile.unlink()
        sys.exit(1)


def post_fork(server, worker):
    """Give this worker its deadlines, its body slots and its pool's share of the cores."""
    from look.config import Config

    config = Config()
    worker.header_timeout = header_timeout
    worker.max_bodies = config.max_concurrent_uploads
    worker.body_wait = config.max_queue_seconds
    if _SHARE_CORES:
        share = _cores_per_worker(server.cfg.workers)
        os.environ['LOOK_PROCESSES'] = share
        # With --preload the master made the app, thumbnailer included, already.
        from look import thumbnailer

        thumbnailer.resize_all(int(share))


def post_worker_init(worker):
    """Start the worker's thumbnailer pool before the first request needs it."""
    from look import thumbnailer

    thumbnailer.start_all()


def worker_exit(server, worker):
    """Stop the worker's pool processes so none outlive gunicorn; close its connections."""
    from look import backends, thumbnailer

    thumbnailer.close_all()
    backends.close_all()


def child_exit(server, worker):
    """Stop counting a gone worker's gauges (its counters still add up)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this server made."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ['PROMETHEUS_MULTIPROC_DIR'], ignore_errors=True)
