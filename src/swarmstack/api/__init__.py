"""The HTTP API: an app factory and thin routes over the library."""

from swarmstack.api.app import create_app

__all__ = ["create_app"]
