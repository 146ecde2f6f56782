"""A ticket's log as lines for people: its events, an agent's entries read as a transcript
(``swarm tickets log`` and the MCP server's ``show_ticket``)."""

from __future__ import annotations

import time

from swarmstack.tickets.models import Event


def log_line(event: Event) -> str:
    """One event: its time, sequence, kind and what it says."""
    when = time.strftime("%H:%M:%S", time.localtime(event.ts))
    return f"{when}  #{event.seq:<6} {event.kind:<18} {_details(event)}"


def _details(event: Event) -> str:
    """An agent's entries read as a transcript; every other event as its fields."""
    data = event.data
    if event.kind in ("agent.message", "agent.status", "agent.error"):
        return _first_lines(str(data.get("text", "")))
    if event.kind == "agent.tool_call":
        shown = data.get("input") or {}
        if isinstance(shown, dict):
            main = next((shown[k] for k in ("command", "file_path", "path") if k in shown), None)
            shown = main if main is not None else shown
        return f"{data.get('name')}: {_first_lines(str(shown))}"
    if event.kind == "agent.tool_result":
        mark = "error: " if data.get("is_error") else ""
        return mark + _first_lines(str(data.get("output", "")))
    if event.kind == "agent.output":
        return f"[{data.get('stream')}] {data.get('text', '')}"
    return " ".join(f"{k}={v}" for k, v in data.items() if v is not None)


def _first_lines(text: str, lines: int = 3) -> str:
    kept = text.strip().splitlines()
    more = f" … (+{len(kept) - lines} lines)" if len(kept) > lines else ""
    return " ⏎ ".join(kept[:lines]) + more
