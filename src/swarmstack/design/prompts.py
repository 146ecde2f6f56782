"""The design agent's prompts: Markdown files in ``prompts/``, with ``$name`` placeholders."""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template


@cache
def _template(name: str) -> Template:
    return Template((resources.files(__package__) / "prompts" / f"{name}.md").read_text())


def render(name: str, **values: object) -> str:
    """The prompt ``name`` with its placeholders filled; a missing one is a KeyError."""
    return _template(name).substitute({k: str(v) for k, v in values.items()})
