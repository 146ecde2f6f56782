"""Reading plan files (JSON or YAML) into a :class:`PlanSpec`.

Everything that can go wrong while reading becomes one :class:`UsageError` whose message is a
single line naming the file and every problem in it, so ``swarm plan validate`` can print it
as is and a person can fix the whole file in one pass.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from swarmstack.errors import UsageError
from swarmstack.tickets.models import PlanSpec, Requirement, TicketSpec

Format = Literal["json", "yaml"]

_EXTENSIONS: dict[str, Format] = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
_MAX_SHOWN_VALUE = 40  # characters of an offending value quoted back in a message


def load_plan(path: str | Path) -> PlanSpec:
    """Read and parse the plan file at ``path``.

    The format comes from the extension (``.json``, ``.yaml``, ``.yml``); any other extension
    is detected from the content. A missing, unreadable or non-UTF-8 file raises
    :class:`UsageError` with one line.
    """
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{source}: is a directory, not a plan file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return parse_plan(text, source=source, fmt=_EXTENSIONS.get(path.suffix.lower()))


def parse_plan(text: str, *, source: str = "<plan>", fmt: Format | None = None) -> PlanSpec:
    """Parse plan text into a :class:`PlanSpec`.

    ``fmt=None`` detects the format: JSON if the text parses as JSON, YAML otherwise. Syntax
    errors, a top level that is not a mapping and every type problem raise one
    :class:`UsageError` whose message is a single line starting with ``source``; its
    ``details`` hold the problems as a list for callers that want them separately.
    """
    data = _decode(text, source, fmt)
    if not isinstance(data, dict):
        found = "an empty document" if data is None else f"a {_kind(data)}"
        raise UsageError(
            f"{source}: the top level must be a mapping with 'title' and 'tickets', found {found}"
        )
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        raise UsageError(_summary(source, problems), details={"problems": problems}) from None
    except RecursionError:
        raise UsageError(f"{source}: nested too deeply") from None


# -- decoding --------------------------------------------------------------------------------


def _decode(text: str, source: str, fmt: Format | None) -> Any:
    if fmt == "json":
        return _decode_json(text, source)
    if fmt == "yaml":
        return _decode_yaml(text, source)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Text that opens like JSON was meant to be JSON: its JSON error is the useful one,
        # not whatever YAML makes of a stray brace.
        if text.lstrip().startswith(("{", "[")):
            return _decode_json(text, source)
        return _decode_yaml(text, source)
    except RecursionError:
        raise UsageError(f"{source}: nested too deeply") from None


def _decode_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise UsageError(f"{source}: nested too deeply") from None


def _decode_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {_yaml_reason(exc)}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise UsageError(f"{source}: nested too deeply") from None


def _yaml_reason(exc: yaml.MarkedYAMLError) -> str:
    reason = exc.problem or exc.context or "syntax error"
    mark = exc.problem_mark or exc.context_mark
    if mark is not None:
        # PyYAML marks count from zero; editors count from one.
        reason += f" at line {mark.line + 1}, column {mark.column + 1}"
    return _one_line(reason)


# -- describing type problems ----------------------------------------------------------------


def _summary(source: str, problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: {len(problems)} problems: " + "; ".join(problems)


def _describe(error: ErrorDetails) -> str:
    """One problem as ``where: what``, e.g. ``tickets[3].estimate: must be > 0``."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden" and loc:
        where, field = _where(loc[:-1]), loc[-1]
        return f"{where}: unknown field {_quote(field)}{_did_you_mean(loc, field)}"
    if kind == "missing" and loc:
        return f"{_where(loc[:-1])}: missing required field {_quote(loc[-1])}"
    return f"{_where(loc)}: {_what(error)}"


def _what(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _kind(error["input"])
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)  # "must be > 0", not "> 0.0", for a float field
        return f"must be {bounds[kind]} {limit}, got {_shown(error['input'])}"
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_type":
        return f"must be a string, got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"must be a number, got {_shown(error['input'])}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, got {_shown(error['input'])}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, got {got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {_shown(error['input'])}"
    message = error["msg"]
    return message[:1].lower() + message[1:]


def _where(loc: tuple[int | str, ...]) -> str:
    """``('tickets', 3, 'estimate')`` -> ``tickets[3].estimate``; the empty path is the top."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "top level"


_ITEMS: dict[int | str, type[BaseModel]] = {"tickets": TicketSpec, "requirements": Requirement}


def _did_you_mean(loc: tuple[int | str, ...], field: int | str) -> str:
    model = _ITEMS.get(loc[0], PlanSpec) if len(loc) >= 3 else PlanSpec
    close = difflib.get_close_matches(str(field), list(model.model_fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _quote(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else repr(value)


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) > _MAX_SHOWN_VALUE:
        text = text[: _MAX_SHOWN_VALUE - 3] + "..."
    return text


def _kind(value: object) -> str:
    names = {dict: "mapping", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _one_line(text: str) -> str:
    return " ".join(text.split())
