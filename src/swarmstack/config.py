"""Settings, in one place: environment variables prefixed ``SWARM_`` (or a ``.env`` file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "swarm"


def _default_sandbox_dir() -> Path:
    # Not under the data directory: that sits in a home directory, often closed to other users
    # (root's is 0700), and bubblewrap binds each sandbox's files as the sandbox's own uid.
    return Path("/var/tmp") / f"swarm-{os.geteuid()}"


class Settings(BaseSettings):
    """Everything a control plane or a client can be told; every field maps to ``SWARM_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="SWARM_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql://...; default: swarm.db in the data directory",
    )
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    busy_timeout_ms: int = Field(default=10_000, ge=0)
    db_threads: int = Field(
        default=6,
        ge=1,
        le=256,
        description="PostgreSQL: store calls of the agent routes in flight at once, "
        "each in a thread with its own connection",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8420, ge=0, le=65535)
    admin_token: str | None = Field(
        default=None, description="an admin token to accept besides those in the database"
    )

    lease_ttl_s: float = Field(default=60.0, gt=0, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_base_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=300.0, ge=0)
    sweep_interval_s: float = Field(default=1.0, gt=0)
    claim_wait_max_s: float = Field(default=60.0, ge=0)

    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_plan_bytes: int = Field(default=64 << 20, ge=1024)
    max_file_bytes: int = Field(
        default=64 << 20,
        ge=1024,
        le=64 << 20,
        description="the largest file uploaded into a sandbox (the guest agent takes 64 MiB)",
    )

    sandbox_backend: Literal["auto", "bwrap", "qemu", "firecracker"] = Field(
        default="auto", description="which backend runs the sandboxes of the VM API"
    )
    bwrap_disk: Literal["none", "loop"] = Field(
        default="none",
        description="'loop' gives each bubblewrap sandbox a workspace file system of its "
        "disk_mib (root only; about 40 ms more a start); VM backends always have one",
    )
    sandbox_dir: Path = Field(
        default_factory=_default_sandbox_dir,
        description="where live sandboxes keep their files; every directory on the way must "
        "let other users through (o+x)",
    )
    max_sandboxes: int = Field(
        default=32, ge=1, le=4096, description="sandboxes the VM API keeps alive at once"
    )

    max_run_agents: int = Field(
        default=64,
        ge=0,
        le=1000,
        description="the most agents a run the control plane starts itself may have "
        "(POST /v1/plans/{id}/run); 0: it starts none",
    )

    merge_queue: bool = Field(
        default=True,
        description="merge each ticket's branch into its plan's integration branch, after the "
        "checks pass on the merged tree, before the ticket counts as done",
    )
    checks_timeout_s: float = Field(
        default=900.0, gt=0, le=24 * 3600, description="how long a merge's checks may run"
    )

    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SWARM_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
        description="the key the LLM gateway sends upstream; it never leaves the control plane",
    )
    github_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SWARM_GITHUB_TOKEN", "GITHUB_TOKEN"),
        description="the token the GitHub forge uses; it never leaves the control plane",
    )
    github_api_url: str = Field(
        default="https://api.github.com",
        description="GitHub's REST API; GitHub Enterprise Server's is https://HOST/api/v3",
    )
    github_git_url: str = Field(
        default="https://github.com",
        description="where GitHub serves git: a repository is <this>/<owner>/<name>.git",
    )
    llm_upstream_url: str = Field(
        default="https://api.anthropic.com",
        description="where the LLM gateway forwards model calls: the Anthropic API, or any "
        "server that speaks it (the scripted model)",
    )
    llm_timeout_s: float = Field(default=600.0, gt=0, le=3600)
    llm_max_body_bytes: int = Field(
        default=32 << 20, ge=1024, description="the largest model request the gateway takes"
    )
    llm_price_file: Path | None = Field(
        default=None, description="a JSON price table to use instead of the built-in one"
    )
    ticket_budget_usd: float = Field(
        default=10.0, ge=0, description="what one ticket's model calls may cost in all"
    )
    plan_budget_usd: float | None = Field(
        default=None, ge=0, description="a plan's budget when its plan file names none"
    )

    max_push_bytes: int = Field(
        default=256 << 20, ge=1024, description="the largest git push the broker takes"
    )

    api_url: str = Field(default="http://127.0.0.1:8420", description="where clients find the API")
    token: str | None = Field(default=None, description="the bearer token clients send")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'swarm.db'}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def repos_dir(self) -> Path:
        """The local forge: a bare repository per plan."""
        return self.data_dir / "repos"

    @property
    def snapshot_dir(self) -> Path:
        """Snapshots and their metadata: durable and private, unlike the sandbox directory."""
        return self.data_dir / "snapshots"
