"""The local forge: one bare repository per plan, held by the control plane."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from swarmstack.errors import Conflict, NotFound, UsageError
from swarmstack.forge import hostgit


class LocalForge:
    def __init__(self, root: Path) -> None:
        self.root = root

    def repo(self, plan_id: int) -> Path:
        return self.root / f"plan-{plan_id}.git"

    def require(self, plan_id: int) -> Path:
        path = self.repo(plan_id)
        if not (path / "HEAD").is_file():
            raise NotFound(f"plan {plan_id} has no repository in the forge")
        return path

    def import_repo(self, plan_id: int, source: Path) -> Path:
        """The plan's repository, a bare clone of ``source`` (a local repository). The clone
        runs in a fresh directory and is moved into place whole."""
        target = self.repo(plan_id)
        if target.exists():
            raise Conflict(f"plan {plan_id} already has a repository at {target}")
        if not (source / ".git").exists() and not (source / "HEAD").is_file():
            raise UsageError(f"{source} is not a git repository")
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".plan-{plan_id}-", dir=self.root))
        try:
            partial = work / "repo.git"
            hostgit.run("clone", "--bare", "--no-local", "--", str(source.resolve()), str(partial))
            work_repo = partial
            work_repo.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target
