"""The look benchmark: look and its limits measured side by side; run with ``python -m bench``."""

import pathlib
import sys

# NOTE: the servers and images are the tests' own (tests/support), imported as `support`.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / 'tests'))
