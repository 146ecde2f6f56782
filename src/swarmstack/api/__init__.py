"""The HTTP API: an app factory and thin routes over the library.

``create_app`` is imported on first use: the typed client (and so the agent runner in a
sandbox) reads the request and response models in :mod:`swarmstack.api.schemas` without
loading FastAPI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmstack.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from swarmstack.api.app import create_app

        return create_app
    raise AttributeError(f"module 'swarmstack.api' has no attribute {name!r}")
