"""The look benchmark: look and its limits measured side by side; run with ``python -m bench``."""
