"""A ticket's workspace: the plan's repository cloned from the git broker, and its push back.

The remote is the control plane's broker (``<api>/git/plan-<id>.git``) and the credential the
lease token, sent as an ``Authorization`` header from the environment of each git command — it
is never written into ``.git/config``, so nothing the agent leaves in the workspace holds it::

    ws = Workspace.clone(api_url, lease, root / "ticket-7")
    ... the driver works in ws.path ...
    if ws.commit("T-7: add the parser", author="swarm-agent"):
        ws.push()
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from swarmstack.errors import SwarmError
from swarmstack.tickets.models import Lease

GIT_TIMEOUT_S = 300.0

CACHE_PATTERNS = (
    "__pycache__/",
    "*.py[co]",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
)

# The runner's own git ignores what the agent may have configured in the workspace: no hooks,
# no fsmonitor, no credential helpers, no pager.
_HARDENED = [
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "credential.helper=",
    "-c", "core.pager=cat",
]  # fmt: skip


class GitError(SwarmError):
    """A git command of the runner failed; the message carries git's own words."""

    code = "git_failed"


@dataclass
class Workspace:
    path: Path
    remote: str
    lease: Lease
    base_sha: str = ""

    @property
    def branch(self) -> str:
        return f"swarm/{self.lease.ticket.id}"

    @classmethod
    def clone(cls, api_url: str, lease: Lease, path: Path) -> Workspace:
        """A fresh clone of the plan's repository at its default branch, on the ticket's
        branch ``swarm/<ticket id>``."""
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remote = f"{api_url.rstrip('/')}/git/plan-{lease.ticket.plan_id}.git"
        ws = cls(path, remote, lease)
        ws.git("clone", "--quiet", "--no-tags", remote, str(path), cwd=path.parent)
        ws.git("checkout", "--quiet", "-B", ws.branch)
        # Caches the agent's test runs leave are not part of its change.
        exclude = path / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a") as out:
            out.write("\n".join(("", *CACHE_PATTERNS, "")))
        ws.base_sha = ws.git("rev-parse", "HEAD").strip()
        return ws

    @classmethod
    def empty(cls, lease: Lease, path: Path) -> Workspace:
        """A workspace with no repository (the plan has none in the forge)."""
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return cls(path, "", lease)

    def commit(self, message: str, *, author: str = "Swarm agent") -> bool:
        """Commit everything the agent changed; False when it changed nothing."""
        self.git("add", "--all")
        if not self.git("status", "--porcelain").strip():
            return False
        email = "agent@swarm.invalid"
        self.git(
            "-c", f"user.name={author}", "-c", f"user.email={email}",
            "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message,
        )  # fmt: skip
        return True

    def push(self) -> str:
        """Push the ticket's branch to the broker (replacing an earlier attempt's); its sha."""
        sha = self.git("rev-parse", "HEAD").strip()
        self.git("push", "--quiet", "--no-verify", self.remote, f"+HEAD:refs/heads/{self.branch}")
        return sha

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {self.lease.token}",
        }
        try:
            done = subprocess.run(
                ["git", *_HARDENED, *args],
                cwd=cwd or self.path,
                env=env,
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} took longer than {GIT_TIMEOUT_S:g}s") from None
        if done.returncode != 0:
            words = (done.stderr or done.stdout).strip().replace(self.lease.token, "<lease>")
            raise GitError(f"git {args[0]} failed: {words[-2000:]}")
        return done.stdout
