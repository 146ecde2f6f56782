"""ASGI entry points for servers started by import string (``--factory``)."""

from __future__ import annotations

from fastapi import FastAPI

from swarmstack.api.app import create_app
from swarmstack.config import Settings


def app_from_env() -> FastAPI:
    """The app, configured from ``SWARM_*`` environment variables."""
    return create_app(Settings())
