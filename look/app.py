"""The application factory: ``look.app.create_app(config)``, as TestClient suites call it."""

from look.web.app import create_app

__all__ = ['create_app']
