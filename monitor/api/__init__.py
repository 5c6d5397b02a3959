"""The HTTP API (FastAPI): ``create_app(settings, engine=None, metrics=None, scheduler_state=None)``."""

from monitor.api.app import create_app

__all__ = ["create_app"]
