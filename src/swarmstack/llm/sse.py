"""Server-sent events of the Anthropic Messages API: writing them, and reading usage from them.

A streamed message is ``message_start`` (with the input side of ``usage``), then for each
content block ``content_block_start``, deltas and ``content_block_stop``, then ``message_delta``
(the ``stop_reason`` and the output side of ``usage``) and ``message_stop``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One SSE event as the API frames it: its type, its JSON, a blank line."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class Usage:
    """Token counts of one model call (the Messages API's ``usage`` object)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def update(self, usage: dict[str, Any] | None) -> None:
        """Take the counts ``usage`` carries; a stream sends them in two parts, and a later
        figure of a count replaces the earlier one (they are totals, not increments)."""
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = (usage or {}).get(name)
            if isinstance(value, int) and value >= 0:
                setattr(self, name, value)

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


@dataclass
class StreamWatcher:
    """Reads a Messages API event stream as it passes through, chunk by chunk, without
    changing it: the usage, the model, the stop reason and whether it ended properly."""

    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    stop_reason: str | None = None
    complete: bool = False
    error: str | None = None
    _buffer: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while True:
            cut = self._frame_end()
            if cut is None:
                return
            end, length = cut
            frame, self._buffer = self._buffer[:end], self._buffer[end + length :]
            self._frame(frame)

    def _frame_end(self) -> tuple[int, int] | None:
        found = [
            (i, len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := self._buffer.find(sep)) >= 0
        ]
        return min(found) if found else None

    def _frame(self, frame: bytes) -> None:
        data = b"\n".join(
            line[5:].lstrip() for line in frame.splitlines() if line.startswith(b"data:")
        )
        if not data:
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message") or {}
            self.model = message.get("model") or self.model
            self.usage.update(message.get("usage"))
        elif kind == "message_delta":
            self.stop_reason = (payload.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.usage.update(payload.get("usage"))
        elif kind == "message_stop":
            self.complete = True
        elif kind == "error":
            self.error = str((payload.get("error") or {}).get("message") or "stream error")
