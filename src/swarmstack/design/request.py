"""A design request (the body of ``POST /v1/plans`` that asks for a design) and how to run one.

The CLI with ``--out`` and the control plane run the same :func:`run_design`, against the
same upstream as the LLM gateway (``SWARM_LLM_UPSTREAM_URL``, with ``ANTHROPIC_API_KEY``):
the Anthropic API by default, the scripted model in tests and in the demo.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from swarmstack.config import Settings
from swarmstack.design.repo import RepoSummary, summarize
from swarmstack.errors import UsageError
from swarmstack.llm.prices import PriceTable
from swarmstack.tickets.models import Estimate, Text

if TYPE_CHECKING:  # the SDK loads when a design runs, not when the API app is built
    import anthropic

    from swarmstack.design.agent import DesignResult

ANTHROPIC_API = "https://api.anthropic.com"
DEFAULT_MODEL = "claude-sonnet-4-6"
Emit = Callable[[str, dict[str, Any]], Awaitable[None]]


class DesignOptions(BaseModel):
    """How the design agent works; the body of a design request carries them."""

    model: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=200)
    max_estimate: Estimate = Field(default=4.0, description="largest ticket, in agent-hours")
    max_repair_rounds: int = Field(default=3, ge=0, le=10)
    attempts: int = Field(
        default=3, ge=1, le=10, description="tries per answer that breaks the schema"
    )
    critique: bool = Field(default=True, description="let the model review the checked plan")
    max_tokens: int = Field(default=16_000, ge=256, le=64_000)
    parallel: int = Field(default=4, ge=1, le=32, description="expansion calls at once")


async def no_events(_kind: str, _data: dict[str, Any]) -> None:
    return None


class DesignRequest(BaseModel):
    """Design a plan for ``spec``: stored as a draft, approved later (``swarm plan approve``)."""

    model_config = ConfigDict(extra="forbid")

    spec: Text = Field(min_length=1, max_length=500_000, description="the spec, in Markdown")
    repo: Text | None = Field(
        default=None,
        max_length=4096,
        description="the repository the plan is for: a path on the control plane's machine "
        "or a git URL; read unless repo_summary is given",
    )
    repo_summary: RepoSummary | None = Field(
        default=None, description="the repository as the caller read it (the CLI sends it)"
    )
    title: Text | None = Field(default=None, min_length=1, max_length=500)
    options: DesignOptions = Field(default_factory=DesignOptions)


def upstream_client(settings: Settings) -> anthropic.AsyncAnthropic:
    """A Messages API client for the gateway's upstream, with the control plane's key."""
    import anthropic

    url = settings.llm_upstream_url.rstrip("/")
    key = settings.anthropic_api_key
    if key is None and url == ANTHROPIC_API:
        raise UsageError(
            "the design agent calls the Anthropic API and ANTHROPIC_API_KEY is not set "
            "(or point SWARM_LLM_UPSTREAM_URL at a server that speaks it, such as "
            "`swarm model serve`)"
        )
    return anthropic.AsyncAnthropic(
        base_url=url,
        # A local stand-in wants no key, but the SDK wants one to send.
        api_key=key.get_secret_value() if key is not None else "unused",
        timeout=settings.llm_timeout_s,
        max_retries=3,
    )


def prices_of(settings: Settings) -> PriceTable:
    if settings.llm_price_file is not None:
        return PriceTable.from_file(settings.llm_price_file)
    return PriceTable()


async def repo_of(request: DesignRequest) -> RepoSummary | None:
    """The request's repository summary, reading the repository if the caller did not."""
    if request.repo_summary is not None:
        return request.repo_summary
    if request.repo is None:
        return None
    return await asyncio.to_thread(summarize, request.repo)


async def run_design(
    request: DesignRequest,
    settings: Settings,
    *,
    emit: Emit = no_events,
    client: anthropic.AsyncAnthropic | None = None,
) -> DesignResult:
    """Design the plan ``request`` asks for; :class:`~swarmstack.errors.DesignFailed` if the
    model's answers never make a valid one, :class:`UsageError` for an unreadable repo."""
    from swarmstack.design.agent import DesignAgent

    own = client is None
    client = client or upstream_client(settings)  # first: a missing key is said at once
    try:
        repo = await repo_of(request)
        agent = DesignAgent(client, request.options, emit=emit, prices=prices_of(settings))
        return await agent.design(request.spec, repo, title=request.title)
    finally:
        if own:
            await client.close()
