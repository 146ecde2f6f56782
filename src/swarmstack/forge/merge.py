"""Merging a ticket's branch into the integration branch, inside the forge's bare repository.

No work tree: ``git merge-tree --write-tree`` merges the two commits in memory and writes the
result's tree (or reports the conflicted paths), ``git commit-tree`` makes the merge commit,
and ``git update-ref`` moves the integration branch only if it still points where the merge
started — so two merges that race cannot lose either one; the loser is told to merge again.
A branch that already contains the integration branch is fast-forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarmstack.errors import Conflict
from swarmstack.forge import hostgit

IDENTITY = {
    "GIT_AUTHOR_NAME": "Swarm",
    "GIT_AUTHOR_EMAIL": "swarm@localhost",
    "GIT_COMMITTER_NAME": "Swarm",
    "GIT_COMMITTER_EMAIL": "swarm@localhost",
}


@dataclass(frozen=True)
class MergeResult:
    """What merging ``head`` into the integration branch did, or why it could not."""

    merged: bool
    base_sha: str  # the integration branch before
    head_sha: str  # the ticket's branch
    sha: str | None = None  # the integration branch after; None when it did not merge
    how: str = ""  # "fast-forward", "merge", "already merged", or "conflict"
    conflicts: list[str] = field(default_factory=list)
    details: str = ""  # git's own account of the conflicts, for the agent that fixes them


def _rev(repo: Path, ref: str) -> str:
    return (
        hostgit.run("rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}", cwd=repo)
        .decode()
        .strip()
    )


def _is_ancestor(repo: Path, older: str, newer: str) -> bool:
    code, _, err = hostgit.run_status("merge-base", "--is-ancestor", older, newer, cwd=repo)
    if code not in (0, 1):
        raise hostgit.GitFailed(f"git merge-base failed: {err.decode(errors='replace').strip()}")
    return code == 0


def merge(repo: Path, *, into: str, branch: str, message: str) -> MergeResult:
    """Merge ``branch`` into ``into`` (both branch names of the bare ``repo``).

    Raises :class:`Conflict` when ``into`` moved while this merge ran (merge again), and
    :class:`~swarmstack.forge.hostgit.GitFailed` when git itself fails.
    """
    result = prepare(repo, into=into, branch=branch, message=message)
    if result.merged:
        land(repo, into, result)
    return result


def prepare(repo: Path, *, into: str, branch: str, message: str) -> MergeResult:
    """What merging ``branch`` into ``into`` makes, without moving ``into``: the commit
    ``into`` would point at (a new merge commit, ``branch`` itself for a fast-forward, ``into``
    itself when already merged), or the conflicts. The merge queue checks that commit before
    it lands it with :func:`land`."""
    base, head = _rev(repo, f"refs/heads/{into}"), _rev(repo, f"refs/heads/{branch}")
    if _is_ancestor(repo, head, base):
        return MergeResult(True, base, head, sha=base, how="already merged")
    if _is_ancestor(repo, base, head):
        return MergeResult(True, base, head, sha=head, how="fast-forward")
    code, out, err = hostgit.run_status(
        "merge-tree", "--write-tree", "--name-only", "--messages", base, head, cwd=repo,
    )  # fmt: skip
    if code not in (0, 1):
        raise hostgit.GitFailed(f"git merge-tree failed: {err.decode(errors='replace').strip()}")
    tree, conflicts, details = _parse_merge_tree(out.decode(errors="replace"))
    if code == 1:
        return MergeResult(False, base, head, how="conflict", conflicts=conflicts, details=details)
    commit = (
        hostgit.run(
            "commit-tree", tree, "-p", base, "-p", head, "-m", message, cwd=repo, env=IDENTITY
        )
        .decode()
        .strip()
    )
    return MergeResult(True, base, head, sha=commit, how="merge")


def land(repo: Path, into: str, result: MergeResult) -> None:
    """Point ``into`` at a prepared merge, if it still points where the merge started;
    :class:`Conflict` if it moved (prepare again)."""
    if result.sha is None or not result.merged:
        raise ValueError("only a merge that went through can land")
    if result.sha != result.base_sha:
        _move(repo, into, result.sha, result.base_sha)


def _move(repo: Path, branch: str, new: str, old: str) -> None:
    """Point ``branch`` at ``new`` if it still points at ``old``."""
    code, _, err = hostgit.run_status(
        "update-ref", "-m", "swarm merge", f"refs/heads/{branch}", new, old, cwd=repo
    )
    if code != 0:
        raise Conflict(
            f"{branch} moved while a merge into it ran; merge again "
            f"({err.decode(errors='replace').strip()[-200:]})"
        )


def _parse_merge_tree(out: str) -> tuple[str, list[str], str]:
    """``merge-tree --write-tree --name-only`` output: the tree, the conflicted paths (once
    each, in order), and the informational messages."""
    head, _, messages = out.partition("\n\n")
    lines = head.splitlines()
    tree = lines[0].strip() if lines else ""
    conflicts = list(dict.fromkeys(line for line in lines[1:] if line))
    return tree, conflicts, messages.strip()
