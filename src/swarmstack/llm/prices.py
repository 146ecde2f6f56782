"""What a model call costs: a price table per model family, in US dollars per million tokens.

A name is priced by the longest prefix in the table that it starts with, so dated names
(``claude-haiku-4-5-20251001``) take their family's price. A model the table does not know is
priced at the dearest rate in it, and the cost says so (``assumed``): a budget errs on the side
of stopping early, never of spending more than it allows.

Writing to the prompt cache costs 1.25 times the input rate (the five-minute cache), reading
from it a tenth of the input rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from swarmstack.errors import UsageError
from swarmstack.llm.sse import Usage

# (input, output) per million tokens.
PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-2": (15.0, 75.0),
    "claude-opus": (5.0, 25.0),  # from Opus 4.5 on
    "claude-sonnet": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-haiku": (1.0, 5.0),
}
CACHE_WRITE = 1.25
CACHE_READ = 0.1


@dataclass(frozen=True)
class Cost:
    usd: float
    assumed: bool  # the model is not in the table: priced at its dearest rate


class PriceTable:
    def __init__(self, prices: dict[str, tuple[float, float]] | None = None) -> None:
        self.prices = dict(PRICES if prices is None else prices)
        if not self.prices:
            raise UsageError("a price table needs at least one model")
        self._dearest = max(self.prices.values(), key=lambda p: p[0] + p[1])

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        """A table from JSON: ``{"<model prefix>": {"input": 3.0, "output": 15.0}, ...}``."""
        try:
            raw = json.loads(path.read_text())
            prices = {
                str(name): (float(rate["input"]), float(rate["output"]))
                for name, rate in raw.items()
            }
        except OSError as exc:
            raise UsageError(f"cannot read the price table {path}: {exc.strerror}") from None
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UsageError(
                f'{path} is no price table: want {{"<model>": {{"input": $, "output": $}}}}'
            ) from None
        if any(rate < 0 for pair in prices.values() for rate in pair):
            raise UsageError(f"{path}: a price cannot be negative")
        return cls(prices)

    def rates(self, model: str) -> tuple[tuple[float, float], bool]:
        matches = [prefix for prefix in self.prices if model.startswith(prefix)]
        if not matches:
            return self._dearest, True
        return self.prices[max(matches, key=len)], False

    def cost(self, model: str, usage: Usage) -> Cost:
        (input_rate, output_rate), assumed = self.rates(model)
        usd = (
            usage.input_tokens * input_rate
            + usage.cache_creation_input_tokens * input_rate * CACHE_WRITE
            + usage.cache_read_input_tokens * input_rate * CACHE_READ
            + usage.output_tokens * output_rate
        ) / 1_000_000
        return Cost(round(usd, 8), assumed)
