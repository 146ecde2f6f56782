"""The local forge: one bare repository per plan, held by the control plane."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from swarmstack.errors import Conflict, InvalidRequest, NotFound
from swarmstack.forge import hostgit
from swarmstack.tickets.models import DiffStats


def ticket_branch(ticket_id: int) -> str:
    """The one branch a ticket's lease may push."""
    return f"swarm/{ticket_id}"


class LocalForge:
    def __init__(self, root: Path) -> None:
        self.root = root

    def repo(self, plan_id: int) -> Path:
        return self.root / f"plan-{plan_id}.git"

    def has_repo(self, plan_id: int) -> bool:
        return (self.repo(plan_id) / "HEAD").is_file()

    def require(self, plan_id: int) -> Path:
        path = self.repo(plan_id)
        if not self.has_repo(plan_id):
            raise NotFound(f"plan {plan_id} has no repository in the forge")
        return path

    def import_repo(self, plan_id: int, source: Path) -> Path:
        """The plan's repository, a bare clone of ``source`` (a local repository). The clone
        runs in a fresh directory and is moved into place whole."""
        target = self.repo(plan_id)
        if target.exists():
            raise Conflict(f"plan {plan_id} already has a repository at {target}")
        try:
            is_repo = (source / ".git").exists() or (source / "HEAD").is_file()
        except OSError as exc:  # a name too long, a directory that cannot be read
            raise InvalidRequest(f"{source} cannot be read: {exc.strerror}") from None
        if not is_repo:
            raise InvalidRequest(f"{source} is not a git repository")
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".plan-{plan_id}-", dir=self.root))
        try:
            partial = work / "repo.git"
            hostgit.run("clone", "--bare", "--no-local", "--", str(source.resolve()), str(partial))
            partial.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target

    def default_branch(self, plan_id: int) -> str:
        """The branch the plan's work goes into: the repository's HEAD."""
        repo = self.require(plan_id)
        return hostgit.run("symbolic-ref", "--short", "HEAD", cwd=repo).decode().strip()

    def sha(self, plan_id: int, branch: str) -> str:
        repo = self.require(plan_id)
        try:
            ref = f"refs/heads/{branch}^{{commit}}"
            out = hostgit.run("rev-parse", "--verify", "--end-of-options", ref, cwd=repo)
        except hostgit.GitFailed:
            raise NotFound(f"the forge has no branch {branch} for plan {plan_id}") from None
        return out.decode().strip()

    def stats(self, plan_id: int, head: str, base: str | None = None) -> DiffStats:
        """What ``head`` changes against ``base`` (default: the default branch), since they
        parted."""
        base = base or self.default_branch(plan_id)
        base_sha, head_sha = self.sha(plan_id, base), self.sha(plan_id, head)
        out = hostgit.run(
            "diff", "--numstat", "--no-ext-diff", "--no-textconv", "--no-renames",
            f"{base_sha}...{head_sha}", cwd=self.require(plan_id),
        )  # fmt: skip
        files = insertions = deletions = 0
        for line in out.decode(errors="replace").splitlines():
            added, removed, _path = line.split("\t", 2)
            files += 1
            insertions += int(added) if added.isdigit() else 0  # "-" for a binary file
            deletions += int(removed) if removed.isdigit() else 0
        return DiffStats(
            base=base,
            head=head,
            base_sha=base_sha,
            head_sha=head_sha,
            files_changed=files,
            insertions=insertions,
            deletions=deletions,
        )

    def diff(self, plan_id: int, base_sha: str, head_sha: str) -> str:
        """The unified diff of a pull request (what head changed since it left base)."""
        out = hostgit.run(
            "diff", "--no-ext-diff", "--no-textconv", "--no-color", f"{base_sha}...{head_sha}",
            cwd=self.require(plan_id),
        )  # fmt: skip
        return out.decode(errors="replace")
