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
from dataclasses import dataclass, field
from pathlib import Path

from swarmstack.errors import SwarmError
from swarmstack.tickets.models import Lease

GIT_TIMEOUT_S = 300.0
AGENT_NAME = "Swarm agent"
AGENT_EMAIL = "agent@swarm.invalid"

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
    conflicted: list[str] = field(default_factory=list)  # a fix attempt's, for its agent

    @property
    def branch(self) -> str:
        return f"swarm/{self.lease.ticket.id}"

    @classmethod
    def clone(cls, api_url: str, lease: Lease, path: Path, *, base: str | None = None) -> Workspace:
        """A fresh clone of the plan's repository at ``base`` (default: its default branch),
        on the ticket's branch ``swarm/<ticket id>``. For a fix attempt the branch is the
        one the last attempt pushed, with ``base`` as it is now merged into it: conflicted
        files hold git's markers for the agent to resolve, and the merge is concluded when
        the runner commits."""
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remote = f"{api_url.rstrip('/')}/git/plan-{lease.ticket.plan_id}.git"
        ws = cls(path, remote, lease)
        at = ["--branch", base] if base else []
        ws.git("clone", "--quiet", "--no-tags", *at, remote, str(path), cwd=path.parent)
        fix = lease.ticket.fix
        if fix is not None and ws._has_remote_branch():
            ws.git("checkout", "--quiet", "-B", ws.branch, f"origin/{ws.branch}")
            ws.conflicted = ws.merge_in(f"origin/{fix.base}")
        else:
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

    def _has_remote_branch(self) -> bool:
        return bool(self.git("branch", "--remotes", "--list", f"origin/{self.branch}").strip())

    def merge_in(self, ref: str) -> list[str]:
        """Merge ``ref`` into the work tree without committing; the paths left conflicted."""
        # git wants an identity even for a merge it does not commit; the sandbox has none.
        who = ["-c", f"user.name={AGENT_NAME}", "-c", f"user.email={AGENT_EMAIL}"]
        done = self._run([*who, "merge", "--no-ff", "--no-commit", "--no-edit", ref])
        if done.returncode != 0 and "CONFLICT" not in done.stdout + done.stderr:
            words = (done.stderr or done.stdout).strip()
            raise GitError(f"git merge failed: {words[-2000:]}")
        out = self.git("diff", "--name-only", "--diff-filter=U")
        return [line for line in out.splitlines() if line]

    def markers_left(self, paths: list[str]) -> list[str]:
        """Those of ``paths`` that still hold a conflict marker line."""
        left = []
        for name in paths:
            try:
                text = (self.path / name).read_text(errors="replace")
            except OSError:
                continue  # deleted or never there: nothing of the conflict is left in it
            lines = text.splitlines()
            if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in lines):
                left.append(name)
        return left

    def commit(self, message: str, *, author: str = AGENT_NAME) -> bool:
        """Commit everything the agent changed; False when it changed nothing."""
        self.git("add", "--all")
        merging = (self.path / ".git" / "MERGE_HEAD").exists()
        if not merging and not self.git("status", "--porcelain").strip():
            return False
        self.git(
            "-c", f"user.name={author}", "-c", f"user.email={AGENT_EMAIL}",
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
        done = self._run(list(args), cwd=cwd)
        if done.returncode != 0:
            words = (done.stderr or done.stdout).strip().replace(self.lease.token, "<lease>")
            raise GitError(f"git {args[0]} failed: {words[-2000:]}")
        return done.stdout

    def _run(self, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {self.lease.token}",
        }
        try:
            return subprocess.run(
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
