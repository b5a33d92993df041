"""The command line: ``python -m look check [--repair]``.

It reads the same environment as the service (LOOK_STORAGE_PATH, ...), so
it looks at the store the service uses, and it is safe to run while the
service runs.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from collections.abc import Sequence

from look import check
from look.backends import open_library
from look.config import Config, ConfigError
from look.thumbnailer import stored_size


def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime('%Y-%m-%d %H:%M UTC')


def _print_findings(findings: check.Findings) -> None:
    print(f'index: {findings.images} images; image store: {findings.objects} JPEGs')
    print(f'listed, but their JPEG is gone: {len(findings.missing)}')
    for image in findings.missing:
        print(f'  {image.id} (uploaded {_when(image.modified)})')
    print(f'JPEGs the index does not list: {len(findings.unlisted)}')
    for stored in findings.unlisted:
        print(f'  {stored.id} (written {_when(stored.modified)})')
    print(f'in quarantine: {len(findings.quarantined)}')
    for stored in findings.quarantined:
        print(f'  {stored.id} (written {_when(stored.modified)})')
    print(f'left behind by deletes: {len(findings.leftovers)}')
    for stored in findings.leftovers:
        print(f'  {stored.id}')
    print(f'damaged index records: {len(findings.damage)}')
    for problem in findings.damage:
        print(f'  {problem}')


def _check(arguments: argparse.Namespace) -> int:
    library = open_library(Config())
    try:
        findings = check.inspect(library.index, library.images, grace=arguments.grace)
        _print_findings(findings)
        if findings.sound:
            print('index and images agree')
            return 0
        if not arguments.repair:
            print(
                'run `python -m look check --repair` to drop entries whose JPEG is gone, '
                'restore unlisted and quarantined JPEGs into the index, remove what deletes '
                'left behind, and write a damaged index again'
            )
            return 1
        repairs = check.repair(library.index, library.images, findings, read_size=stored_size)
        print(
            f'repaired: {repairs.dropped} entries dropped, {repairs.restored} images restored, '
            f'{repairs.removed} leftovers removed'
            + (', index written again' if repairs.rewritten else '')
        )
        for failure in repairs.failed:
            print(f'  could not repair {failure}')
        return 2 if repairs.failed else 0
    finally:
        library.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; return the exit status."""
    parser = argparse.ArgumentParser(prog='python -m look', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
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
