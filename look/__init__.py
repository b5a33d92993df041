"""look: a self-hosted image-sharing REST service."""
