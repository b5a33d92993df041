"""The command line: ``look serve``, ``look check [--repair]`` and ``look migrate``.

(``python -m look`` is the same.) It reads the same environment as the
service (LOOK_STORAGE_PATH, LOOK_INDEX_URL, LOOK_IMAGES_URL, ...), so
``check`` and ``migrate`` look at the store the service uses, and are safe to
run while it runs.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from collections.abc import Sequence

from look.config import Config, ConfigError, without_password
from look.core.backends import open_library
from look.core.index.journal import JournalIndex
from look.core.index.postgres import PostgresIndex
from look.core.upkeep import check, migrate
from look.imaging.animation import stored_animation
from look.imaging.render import stored_placeholder, stored_size


def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime('%Y-%m-%d %H:%M UTC')


def _print_findings(findings: check.Findings, *, keeps_every_row: bool) -> None:
    print(f'index: {findings.images} images; image store: {findings.objects} JPEGs')
    print(f'listed, but their JPEG is gone: {len(findings.missing)}')
    for image in findings.missing:
        print(f'  {image.id} (uploaded {_when(image.modified)})')
    if keeps_every_row:
        print(f'JPEGs no row lists, left by failed writes: {len(findings.failed_writes)}')
        for stored in findings.failed_writes:
            print(f'  {stored.id} (written {_when(stored.modified)})')
    else:
        print(f'JPEGs the index does not list: {len(findings.unlisted)}')
        for stored in findings.unlisted:
            print(f'  {stored.id} (written {_when(stored.modified)})')
    print(f'in quarantine: {len(findings.quarantined)}')
    for stored in findings.quarantined:
        print(f'  {stored.id} (written {_when(stored.modified)})')
    print(f'left behind by deletes: {len(findings.leftovers)}')
    for stored in findings.leftovers:
        print(f'  {stored.id}')
    print(f'animations whose WebP is gone: {len(findings.missing_animations)}')
    for image in findings.missing_animations:
        print(f'  {image.id} (uploaded {_when(image.modified)})')
    print(f'damaged index records: {len(findings.damage)}')
    for problem in findings.damage:
        print(f'  {problem}')
    print(f'waiting to be removed by look itself: {len(findings.waiting)}')
    for stored in findings.waiting:
        print(f'  {stored.id} (written {_when(stored.modified)})')
    # NOTE: a count, no list: every image of a store older than placeholders is one.
    print(f'without a placeholder: {len(findings.without_placeholder)}')


def _check(arguments: argparse.Namespace) -> int:
    config = Config()
    library = open_library(config)
    keeps_every_row = library.index.keeps_every_row
    try:
        findings = check.inspect(
            library.index,
            library.images,
            grace=arguments.grace,
            settle=config.remove_failed_uploads_after,
        )
        _print_findings(findings, keeps_every_row=keeps_every_row)
        if findings.sound and not findings.without_placeholder:
            print('index and images agree')
            return 0
        if not arguments.repair and findings.sound:
            print(
                'index and images agree; run `python -m look check --repair` to give '
                f'{len(findings.without_placeholder)} images their placeholder'
            )
            return 1
        if not arguments.repair:
            restore = (
                'remove what failed writes left'
                if keeps_every_row
                else 'restore unlisted and quarantined JPEGs into the index'
            )
            print(
                'run `python -m look check --repair` to drop entries whose JPEG is gone, '
                f'{restore}, remove what deletes left behind, and write a damaged index again'
            )
            return 1
        repairs = check.repair(
            library.index,
            library.images,
            findings,
            read_size=stored_size,
            read_placeholder=stored_placeholder,
            read_animation=stored_animation,
        )
        print(
            f'repaired: {repairs.dropped} entries dropped, {repairs.restored} images restored, '
            f'{repairs.removed} leftovers removed'
            + (
                f', {repairs.failed_writes_removed} left by failed writes removed'
                if keeps_every_row
                else ''
            )
            + (f', {repairs.placeholders} placeholders made' if repairs.placeholders else '')
            + (', index written again' if repairs.rewritten else '')
        )
        for failure in repairs.failed:
            print(f'  could not repair {failure}')
        return 2 if repairs.failed else 0
    finally:
        library.close()


def _migrate(arguments: argparse.Namespace) -> int:
    source_config = Config()
    if source_config.index_url or source_config.images_url:
        raise ConfigError(
            'migrate moves the local store of LOOK_STORAGE_PATH: unset LOOK_INDEX_URL and '
            'LOOK_IMAGES_URL, and name the targets with --to-index and --to-images'
        )
    # NOTE: the targets are read as the service reads them, so they are checked alike;
    #   no originals are kept on this host: they are all here already.
    target_config = Config(
        environ={
            **os.environ,
            'LOOK_INDEX_URL': arguments.to_index,
            'LOOK_IMAGES_URL': arguments.to_images or '',
            'LOOK_ORIGINALS_CACHE_BYTES': '0',
        }
    )
    source = open_library(source_config)
    target = open_library(target_config)
    try:
        if not isinstance(source.index, JournalIndex) or not isinstance(
            target.index, PostgresIndex
        ):
            raise ConfigError('migrate moves a local store into PostgreSQL (and S3)')
        where = target_config.images_url or f'{source_config.storage_path} (staying there)'
        print(
            f'moving {source_config.storage_path} to {where} and '
            f'{without_password(target_config.index_url)}'
        )
        moved = migrate.migrate(
            source.index,
            source.images,
            to_index=target.index,
            to_images=target.images if target_config.images_url else None,
            report=lambda line: print(f'  {line}', flush=True),
        )
        listed, expected = target.index.count(), source.index.count()
        print(
            f'done: {moved.images} images and {moved.tombstones} deleted ids moved, '
            f'{moved.copied} JPEGs copied, {moved.present} there already; the index lists '
            f'{listed} images, the local store {expected}'
        )
        for failure in moved.failed:
            print(f'  could not move {failure}')
        if moved.failed:
            return 1
        return 0
    finally:
        target.close()
        source.close()


def _serve(arguments: argparse.Namespace) -> int:
    """Become gunicorn, with look's packaged settings, serving look.wsgi:app."""
    argv = [sys.executable, '-m', 'gunicorn', '-c', 'python:look.server.settings']
    if arguments.bind:
        argv += ['--bind', arguments.bind]
    argv += [*arguments.gunicorn, 'look.wsgi:app']
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached: exec replaces this process


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; return the exit status."""
    parser = argparse.ArgumentParser(
        prog='look',
        description='Serve look, check its store, or move a local store into shared backends.',
    )
    commands = parser.add_subparsers(dest='command', required=True)
    serving = commands.add_parser(
        'serve',
        help='run look under gunicorn with its settings (LOOK_BIND, WEB_CONCURRENCY, ...)',
        description='Run look under gunicorn. Arguments after -- go to gunicorn as they are.',
    )
    serving.add_argument(
        '--bind', metavar='ADDRESS', help='where to listen, as LOOK_BIND (127.0.0.1:8000)'
    )
    serving.add_argument('gunicorn', nargs='*', metavar='-- GUNICORN-ARGUMENTS')
    serving.set_defaults(run=_serve)
    checking = commands.add_parser(
        'check', help='compare the index with the stored JPEGs, and repair with --repair'
    )
    checking.add_argument('--repair', action='store_true', help='repair what was found')
    checking.add_argument(
        '--grace',
        type=float,
        default=check.DEFAULT_GRACE_SECONDS,
        metavar='SECONDS',
        help='leave JPEGs younger than this: they may be uploads in progress (%(default)gs)',
    )
    checking.set_defaults(run=_check)
    moving = commands.add_parser(
        'migrate',
        help='copy the local store into PostgreSQL and an object store (safe to run again)',
    )
    moving.add_argument(
        '--to-index', required=True, metavar='URL', help='postgresql://... (LOOK_INDEX_URL)'
    )
    moving.add_argument(
        '--to-images',
        metavar='URL',
        help='s3://BUCKET[/PREFIX] (LOOK_IMAGES_URL); without it the JPEGs stay where they are',
    )
    moving.set_defaults(run=_migrate)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
    try:
        status: int = arguments.run(arguments)
    except ConfigError as ex:
        print(f'error: {ex}', file=sys.stderr)
        return 2
    return status


if __name__ == '__main__':
    sys.exit(main())
