"""Run every measurement, print the table and write bench/results.md: ``python -m bench``.

Environment knobs for quicker runs while developing: BENCH_ONLY (comma list
of groups: uncached, cached, herd, index, shared, memory), BENCH_SECONDS,
BENCH_WARMUP, BENCH_ROUNDS, BENCH_CONCURRENCY, BENCH_POOL_JOBS,
BENCH_INDEX_SIZE, BENCH_KEEP=1 to keep the work directory.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from types import FrameType

from bench import report
from bench.harness import REPO, BenchError, log, redis_server
from bench.procfs import ProcError
from bench.report import Row
from bench.scenarios import MEASUREMENTS, Context, Settings, prepare_files

RESULTS = REPO / 'bench' / 'results.md'
WORK_ROOT = REPO / 'bench' / '.work'  # ignored by git; on the same disk as a real storage


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # NOTE: the default SIGTERM action skips `finally`; raising runs every
    #   stop of every process we started.
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    settings = Settings.from_env()
    machine_info = report.machine()
    WORK_ROOT.mkdir(exist_ok=True)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix='run-', dir=WORK_ROOT))
    rows: list[Row] = []
    try:
        with redis_server(workdir) as redis_url:
            ctx = Context(settings, workdir, redis_url)
            log(f'work directory {workdir}; generating images')
            prepare_files(ctx)
            for group in settings.groups:
                try:
                    rows += MEASUREMENTS[group](ctx)
                except (BenchError, ProcError, OSError) as ex:
                    # NOTE: look is what is measured, so a wrong answer is a
                    #   result: the other groups still run and the table says so.
                    log(f'{group} failed: {ex}')
                    rows.append(Row(f'{group}: could not measure', '-', '-', '-', '-', False))
                    ctx.notes.append(f'{group} could not be measured: {ex}')
    finally:
        if os.environ.get('BENCH_KEEP'):
            log(f'kept {workdir}')
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - started
    text = report.markdown(
        rows,
        machine_info=machine_info,
        settings=settings.describe(),
        notes=ctx.notes,
        elapsed=elapsed,
    )
    RESULTS.write_text(text)
    print(report.table(rows))
    log(f'done in {elapsed:.0f}s; wrote {RESULTS.relative_to(REPO)}')
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log('interrupted: every process the benchmark started has been stopped')
        sys.exit(130)
