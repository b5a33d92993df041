"""look: a self-hosted image-sharing REST service."""

__version__ = '0.1.0'
