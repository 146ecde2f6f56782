"""Merging ticket branches into the integration branch of a bare repository, with real git,
and running the repository's checks on the result in a real (bubblewrap) sandbox."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from sandbox_fixtures import backend_for
from swarmstack.errors import Conflict
from swarmstack.forge import merge as merging
from swarmstack.forge.checks import CheckResult, run_checks
from swarmstack.forge.merge import merge


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main",
         *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip()


def commit(work: Path, branch: str, start: str, files: dict[str, str]) -> None:
    git(work, "checkout", "-q", "-B", branch, start)
    for name, text in files.items():
        (work / name).write_text(text)
    git(work, "add", ".")
    git(work, "commit", "-qm", f"{branch}: {', '.join(files)}")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A bare repository: main has a.txt; t1 adds b.txt, t2 changes a.txt's second line,
    t3 changes the same line another way; all three start from main."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q")
    (work / "a.txt").write_text("one\ntwo\nthree\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "first")
    commit(work, "t1", "main", {"b.txt": "new\n"})
    commit(work, "t2", "main", {"a.txt": "one\nTWO\nthree\n"})
    commit(work, "t3", "main", {"a.txt": "one\n2\nthree\n"})
    bare = tmp_path / "plan.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return bare


def test_merges_fast_forward_then_merge_then_conflict(repo: Path) -> None:
    start = git(repo, "rev-parse", "main")

    first = merge(repo, into="main", branch="t1", message="t1")
    assert (first.merged, first.how, first.base_sha) == (True, "fast-forward", start)
    assert first.sha == git(repo, "rev-parse", "t1") == git(repo, "rev-parse", "main")

    second = merge(repo, into="main", branch="t2", message="Merge ticket t2")
    assert (second.merged, second.how) == (True, "merge")
    assert git(repo, "rev-parse", "main") == second.sha
    parents = git(repo, "log", "-1", "--format=%P", "main").split()
    assert parents == [first.sha, git(repo, "rev-parse", "t2")]
    assert git(repo, "log", "-1", "--format=%s|%an", "main") == "Merge ticket t2|Swarm"
    assert git(repo, "show", "main:a.txt") == "one\nTWO\nthree"
    assert git(repo, "show", "main:b.txt") == "new"

    third = merge(repo, into="main", branch="t3", message="t3")
    assert (third.merged, third.how, third.sha) == (False, "conflict", None)
    assert third.conflicts == ["a.txt"]
    assert "CONFLICT (content): Merge conflict in a.txt" in third.details
    assert git(repo, "rev-parse", "main") == second.sha  # untouched

    again = merge(repo, into="main", branch="t1", message="t1")
    assert (again.merged, again.how, again.sha) == (True, "already merged", second.sha)


def test_a_merge_that_lost_a_race_is_told_to_merge_again(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moved = merging._move

    def racing(repo_: Path, branch: str, new: str, old: str) -> None:
        moved(repo_, branch, git(repo, "rev-parse", "t1"), old)  # another merge got there first
        moved(repo_, branch, new, old)

    monkeypatch.setattr(merging, "_move", racing)
    with pytest.raises(Conflict, match="main moved while a merge into it ran; merge again"):
        merge(repo, into="main", branch="t2", message="t2")
    assert git(repo, "rev-parse", "main") == git(repo, "rev-parse", "t1")


# -- checks on the merged tree, in a sandbox -------------------------------------------------


async def _checks(repo: Path, command: str, **options: Any) -> CheckResult:
    async for backend, _root in backend_for("bwrap"):
        return await run_checks(backend, repo, git(repo, "rev-parse", "main"), command, **options)
    raise AssertionError("no backend")


async def test_checks_run_on_the_merged_tree_in_a_sandbox(repo: Path) -> None:
    merge(repo, into="main", branch="t1", message="t1")
    merge(repo, into="main", branch="t2", message="t2")
    passed = await _checks(repo, "cat a.txt b.txt && test ! -e .git && id -u")
    assert passed.passed and passed.exit_code == 0, passed.output
    assert passed.output.startswith("one\nTWO\nthree\nnew\n")
    assert passed.output.split()[-1] != "0"  # not root, and no .git in the tree

    failed = await _checks(repo, "echo checking; echo 'FAILED test_a' >&2; exit 3")
    assert (failed.passed, failed.exit_code, failed.timed_out) == (False, 3, False)
    assert "checking" in failed.output and "FAILED test_a" in failed.output


async def test_checks_that_hang_are_stopped_and_long_output_keeps_its_end(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung = await _checks(repo, "sleep 60", timeout_s=1)
    assert hung.timed_out and not hung.passed
    monkeypatch.setattr("swarmstack.forge.checks.OUTPUT_LIMIT", 100)
    noisy = await _checks(repo, "seq 1 10000; echo the-reason")
    assert noisy.output.startswith("… (") and noisy.output.endswith("the-reason\n")
