"""Run the groups, print the table and write bench/results.md: ``python -m bench``.

Knobs for quicker runs while developing: BENCH_ONLY (a comma list of groups:
uncached, cached, herd, index, shared), BENCH_SECONDS, BENCH_WARMUP,
BENCH_ROUNDS, BENCH_CONCURRENCY, BENCH_POOL_JOBS, BENCH_INDEX_SIZE, and
BENCH_KEEP=1 to keep the work directory.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

from bench import report
from bench.report import Row
from bench.rounds import serves
from bench.scenarios import FAILURES, GROUPS, MEASUREMENTS, Context, Settings, log

from support.redis import RedisServer

REPO = pathlib.Path(__file__).resolve().parent.parent
WORK_ROOT = REPO / 'bench' / '.work'  # ignored by git; on the same disk as a real storage


def main() -> int:
    # NOTE: the default SIGTERM action skips `finally`; raising stops every server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started, settings, machine = time.monotonic(), Settings.from_env(), report.machine()
    WORK_ROOT.mkdir(exist_ok=True)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix='run-', dir=WORK_ROOT))
    log(f'work directory {workdir}')
    try:
        with RedisServer() as redis_server:
            assert redis_server.process is not None
            serves(redis_server.process.pid)
            ctx = Context(settings, workdir, redis_server)
            for group in settings.groups:
                try:
                    with contextlib.ExitStack() as ctx.stack:
                        MEASUREMENTS[group](ctx)
                except FAILURES as ex:
                    # NOTE: look is what is measured, so a wrong answer is a
                    #   result: the other groups still run and the table says so.
                    log(f'{group} failed: {ex}')
                    ctx.rows.append(Row(f'{group}: could not measure', *'----', False))
                    ctx.notes.append(f'{group} could not be measured: {ex}')
    finally:
        if not os.environ.get('BENCH_KEEP'):
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    # NOTE: a run of some groups must not replace the committed results of all.
    results = (
        REPO / 'bench' / 'results.md' if settings.groups == GROUPS else WORK_ROOT / 'results.md'
    )
    results.write_text(report.markdown(ctx.rows, machine, settings.describe(), ctx.notes, elapsed))
    print(report.table(ctx.rows))
    log(f'done in {elapsed:.0f}s; wrote {results.relative_to(REPO)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
