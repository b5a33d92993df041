"""The project's Markdown documents, read by the tests that run their examples as written."""

from __future__ import annotations

import pathlib
import re

from support.processes import REPO_ROOT


def section(document: pathlib.Path, title: str) -> str:
    """Return the text under the heading ``title`` (any level), up to the next of its level."""
    text = (REPO_ROOT / document).read_text()
    match = re.search(rf'^(#+) {re.escape(title)}\n', text, re.MULTILINE)
    assert match, f'{document} has no section {title!r}'
    rest = text[match.end() :]
    end = re.search(rf'^#{{1,{len(match.group(1))}}} ', rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def code_block(text: str, language: str) -> str:
    """Return the one ```language block of ``text``."""
    blocks = re.findall(rf'^```{language}\n(.*?)^```$', text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f'{len(blocks)} {language} blocks, not 1'
    return str(blocks[0])
