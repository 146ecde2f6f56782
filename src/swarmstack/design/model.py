"""One structured question to the model: a prompt, a tool it must call, a typed answer.

The tool's input schema is the answer's pydantic model. An answer that calls no tool, or
whose input does not validate, goes back to the model in the same conversation as an error
``tool_result`` listing every problem, up to ``attempts`` times; then :class:`DesignFailed`.
Every request and every answer is an event (``design.request``, ``design.answer``), so the way
a plan came about can be replayed from the log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anthropic
from pydantic import BaseModel, ValidationError

from swarmstack.design.request import Emit, no_events
from swarmstack.design.schema import problems_of, tool
from swarmstack.errors import DesignFailed
from swarmstack.llm.prices import PriceTable
from swarmstack.llm.sse import Usage

A = TypeVar("A", bound=BaseModel)
# Events carry the prompt and the answer; past this they are cut (the model saw it all).
EVENT_TEXT_LIMIT = 60_000


@dataclass
class Spent:
    """What the design's model calls used, in all."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


def _clip(text: str) -> str:
    if len(text) <= EVENT_TEXT_LIMIT:
        return text
    return text[:EVENT_TEXT_LIMIT] + f"\n… ({len(text) - EVENT_TEXT_LIMIT} more characters)"


class Asker:
    """Asks the model structured questions through the Messages API (streamed)."""

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        model: str,
        system: str,
        attempts: int = 3,
        max_tokens: int = 16_000,
        emit: Emit = no_events,
        prices: PriceTable | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.system = system
        self.attempts = attempts
        self.max_tokens = max_tokens
        self.emit = emit
        self.prices = prices or PriceTable()
        self.spent = Spent()

    def request(self, tool_def: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The Messages API request body (without ``stream``, which the SDK adds)."""
        return {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system,
            "messages": messages,
            "tools": [tool_def],
            "tool_choice": {"type": "tool", "name": tool_def["name"]},
        }

    async def ask(
        self,
        *,
        phase: str,
        call: str,
        prompt: str,
        tool_name: str,
        description: str,
        answer: type[A],
        check: Callable[[A], list[str]] | None = None,
    ) -> A:
        """The model's answer to ``prompt`` as an ``answer``, or :class:`DesignFailed`."""
        tool_def = tool(tool_name, answer, description)
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        said = prompt
        problems: list[str] = []
        for attempt in range(1, self.attempts + 1):
            await self.emit(
                "design.request",
                {"phase": phase, "call": call, "attempt": attempt, "prompt": _clip(said)},
            )
            message = await self._send(call, self.request(tool_def, messages))
            content = [b.model_dump(mode="json", exclude_none=True) for b in message.content]
            use = next(
                (b for b in content if b.get("type") == "tool_use" and b.get("name") == tool_name),
                None,
            )
            parsed: A | None = None
            if use is None:
                problems = [f"the answer called no tool: call {tool_name} with the answer"]
            else:
                try:
                    parsed = answer.model_validate(use.get("input"))
                    problems = check(parsed) if check is not None else []
                except ValidationError as exc:
                    problems = problems_of(exc)
            if problems and message.stop_reason == "max_tokens":
                problems.append(
                    f"the answer was cut off at {self.max_tokens} tokens: write it more briefly"
                )
            await self.emit(
                "design.answer",
                {
                    "phase": phase,
                    "call": call,
                    "attempt": attempt,
                    "accepted": not problems,
                    "problems": problems,
                    "input": _clip(json.dumps(use.get("input") if use else content)),
                    **self._count(message),
                },
            )
            if parsed is not None and not problems:
                return parsed
            said = "Your answer was refused:\n" + "\n".join(f"- {p}" for p in problems)
            said += f"\n\nCall {tool_name} again with the whole corrected answer."
            messages = [*messages, {"role": "assistant", "content": content}]
            if use is not None:
                result = {
                    "type": "tool_result",
                    "tool_use_id": use["id"],
                    "is_error": True,
                    "content": said,
                }
                messages.append({"role": "user", "content": [result]})
            else:
                messages.append({"role": "user", "content": said})
        raise DesignFailed(
            f"the model's {call} answer did not fit the schema after {self.attempts} "
            f"attempts: {'; '.join(problems[:5])}"
        )

    async def _send(self, call: str, body: dict[str, Any]) -> anthropic.types.Message:
        try:
            async with self.client.messages.stream(**body) as stream:
                return await stream.get_final_message()
        except anthropic.APIStatusError as exc:
            raise DesignFailed(
                f"the model API refused the {call} request: HTTP {exc.status_code}: "
                f"{_api_message(exc)}"
            ) from None
        except anthropic.APIConnectionError as exc:
            raise DesignFailed(
                f"cannot reach the model API at {self.client.base_url}: {exc}"
            ) from None

    def _count(self, message: anthropic.types.Message) -> dict[str, Any]:
        usage = Usage()
        usage.update(message.usage.model_dump())
        cost = self.prices.cost(message.model, usage)
        self.spent.calls += 1
        self.spent.input_tokens += usage.input_tokens
        self.spent.output_tokens += usage.output_tokens
        self.spent.cost_usd += cost.usd
        return {
            "model": message.model,
            "stop_reason": message.stop_reason,
            "usage": usage.as_dict(),
            "cost_usd": cost.usd,
        }


def _api_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message
