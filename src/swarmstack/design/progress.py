"""A design's events as one line each, for people: the CLI's progress and its log view."""

from __future__ import annotations

from typing import Any


def plural(n: int, noun: str) -> str:
    """``1 error``, ``3 errors``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe(kind: str, data: dict[str, Any]) -> str | None:
    """The line for a ``design.*`` event, or None for one that is not worth a line."""
    call = str(data.get("call", data.get("phase", "")))
    if kind == "design.started":
        return f"designing “{data.get('title', '')}”"
    if kind == "design.request":
        attempt = int(data.get("attempt", 1))
        return f"→ {call}" + (f" (attempt {attempt})" if attempt > 1 else "")
    if kind == "design.answer":
        if not data.get("accepted"):
            problems = [str(p) for p in data.get("problems") or []]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            return f"← {call}: refused, {problems[0] if problems else 'no reason'}{more}"
        usage = data.get("usage") or {}
        return (
            f"← {call}: {usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} "
            f"out, ${float(data.get('cost_usd', 0)):.4f}"
        )
    if kind == "design.validation":
        errors = data.get("errors") or []
        if not errors:
            return f"checks, round {data.get('round', 0)}: valid"
        codes = ", ".join(sorted({str(e.get("code")) for e in errors}))
        return f"checks, round {data.get('round', 0)}: {plural(len(errors), 'error')} ({codes})"
    if kind == "design.fixed":
        edges = data.get("edges") or []
        pairs = ", ".join(f"{later} after {earlier}" for later, earlier in edges)
        return f"ordered {plural(len(edges), 'pair')} of tickets that share files: {pairs}"
    if kind == "design.repair":
        problems = data.get("problems") or []
        return f"repair round {data.get('round')}: {plural(len(problems), 'problem')} to fix"
    if kind == "design.done":
        return (
            f"draft ready: {plural(int(data.get('tickets', 0)), 'ticket')} in "
            f"{plural(int(data.get('waves', 0)), 'wave')}, "
            f"{plural(int(data.get('repair_rounds', 0)), 'repair round')}, "
            f"{plural(int(data.get('calls', 0)), 'model call')}, "
            f"${float(data.get('cost_usd', 0)):.4f}"
        )
    if kind == "design.failed":
        return f"design failed: {data.get('reason', '')}"
    return None
