"""The README's examples that can run here run as written."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from look.config import settings_table

from support.documents import code_block, section
from support.imagegen import image_bytes
from support.processes import REPO_ROOT

README = pathlib.Path('README.md')


def test_the_testclient_example_passes_under_this_projects_pytest_settings(
    tmp_path: pathlib.Path,
) -> None:
    example = code_block(section(README, 'Testing your code against look'), 'python')
    (tmp_path / 'test_example.py').write_text(example)
    # As the section says: a photo.jpg beside the test file.
    (tmp_path / 'photo.jpg').write_bytes(image_bytes('JPEG', (1200, 800), seed=5))

    # NOTE: this project's own settings (pyproject.toml), filterwarnings = error
    #   among them: a file left open or a process left behind fails the run.
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'pytest',
            '-q',
            '-p',
            'no:cacheprovider',
            '-c',
            str(REPO_ROOT / 'pyproject.toml'),
            '--rootdir',
            str(tmp_path),
            str(tmp_path / 'test_example.py'),
        ],
        cwd=tmp_path,
        # NOTE: the example needs no plugin; loading every installed one took most of the time.
        env={**os.environ, 'PYTHONDONTWRITEBYTECODE': '1', 'PYTEST_DISABLE_PLUGIN_AUTOLOAD': '1'},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r'\b1 passed\b', result.stdout), result.stdout


def test_the_settings_table_is_look_configs_own() -> None:
    """Each setting is declared once, in look/config.py; the README's table is made from it.

    To write it again: ``python -c 'from look.config import settings_table as t; print(t())'``.
    """
    assert settings_table() in section(README, 'Configuration')
