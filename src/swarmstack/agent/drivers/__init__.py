"""The coding agents a runner can drive, by name, each imported only when chosen."""

from __future__ import annotations

from typing import Any

from swarmstack.agent.task import Driver
from swarmstack.errors import UsageError

NAMES = ("claude-code", "command", "builtin")


def make_driver(name: str, **options: Any) -> Driver:
    """The driver called ``name``, built with its options (see each driver's class)."""
    if name == "claude-code":
        from swarmstack.agent.drivers.claude_code import ClaudeCodeDriver

        return ClaudeCodeDriver(**options)
    if name == "command":
        from swarmstack.agent.drivers.command import CommandDriver

        return CommandDriver(**options)
    if name == "builtin":
        from swarmstack.agent.drivers.builtin import BuiltinDriver

        return BuiltinDriver(**options)
    raise UsageError(f"unknown driver {name!r}: use one of {', '.join(NAMES)}")
