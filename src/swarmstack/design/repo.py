"""A repository as the design agent sees it: the file tree and the files that say the most.

A local path is read in place (the tracked files of a git work tree, else every file under
it but caches and VCS directories); a URL is cloned shallowly into a temporary directory
first. The summary has a size budget, so a big repository still fits in one prompt: the tree
is cut after :data:`MAX_PATHS` paths and each key file after :data:`MAX_FILE_CHARS`.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from swarmstack.errors import UsageError

MAX_PATHS = 400
# A directory outside git is walked until this many files: enough to see its shape, and a
# bounded cost when someone points the design at a home directory (or at /).
MAX_WALK = 20_000
MAX_FILE_CHARS = 6_000
MAX_KEY_FILES = 12
# Files that describe a project, most telling first; matched case-insensitively by name.
KEY_NAMES = (
    "readme.md",
    "readme.rst",
    "readme",
    "readme.txt",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "package.json",
    "cargo.toml",
    "go.mod",
    "makefile",
    "requirements.txt",
    "architecture.md",
    "contributing.md",
)
SKIPPED_DIRS = {".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox"}
_URL = re.compile(r"^(https?|ssh|git|file)://|^[\w.-]+@[\w.-]+:")


class KeyFile(BaseModel):
    path: str
    text: str
    truncated: bool = False


class RepoSummary(BaseModel):
    """What the prompt says about the repository."""

    source: str = Field(description="the path or URL it was read from")
    head: str | None = Field(default=None, description="the commit, for a git repository")
    files: list[str] = Field(default_factory=list, description="paths, sorted, maybe cut")
    total_files: int = 0
    key_files: list[KeyFile] = Field(default_factory=list)

    def render(self) -> str:
        """The summary as Markdown for the prompt."""
        if not self.total_files:
            return f"Repository `{self.source}`: empty, no files yet.\n"
        lines = [f"Repository `{self.source}`" + (f" at commit {self.head}" if self.head else "")]
        shown = len(self.files)
        cut = f" (the first {shown} shown)" if shown < self.total_files else ""
        lines += ["", f"### Files: {self.total_files}{cut}", "", "```"]
        lines += [*self.files, "```"]
        for key in self.key_files:
            note = " (cut)" if key.truncated else ""
            lines += ["", f"### `{key.path}`{note}", "", "````", key.text.rstrip("\n"), "````"]
        return "\n".join(lines) + "\n"


def is_url(source: str) -> bool:
    return bool(_URL.match(source))


def summarize(source: str) -> RepoSummary:
    """Summarize a local repository or a git URL; :class:`UsageError` if it cannot be read."""
    if is_url(source):
        with tempfile.TemporaryDirectory(prefix="swarm-design-") as tmp:
            clone(source, Path(tmp) / "repo")
            summary = summarize_path(Path(tmp) / "repo")
        return summary.model_copy(update={"source": source})
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UsageError(f"the repository {source} is not a directory")
    return summarize_path(path.resolve())


def summarize_path(root: Path) -> RepoSummary:
    files, head = _git_files(root)
    if files is None:
        files = _walk(root)
    files.sort()
    key_files = [_read(root, p) for p in _key_paths(files)]
    return RepoSummary(
        source=str(root),
        head=head,
        files=files[:MAX_PATHS],
        total_files=len(files),
        key_files=[k for k in key_files if k is not None],
    )


def _git(root: Path, *args: str) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    return done.stdout if done.returncode == 0 else None


def _git_files(root: Path) -> tuple[list[str] | None, str | None]:
    """Tracked files and HEAD, or (None, None) outside a git work tree."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != root.resolve():
        return None, None
    listed = _git(root, "ls-files", "-z")
    if listed is None:
        return None, None
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    return [p for p in listed.split("\0") if p], head.strip() if head else None


def _walk(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        rel = Path(dirpath).relative_to(root)
        found += [(rel / name).as_posix() for name in sorted(filenames)]
        if len(found) >= MAX_WALK:
            return found[:MAX_WALK]
    return found


def _key_paths(files: list[str]) -> list[str]:
    """Key files: known names at the top first (in KEY_NAMES order), then one level down."""
    rank = {name: n for n, name in enumerate(KEY_NAMES)}
    chosen = [p for p in files if p.count("/") <= 1 and Path(p).name.lower() in rank]
    chosen.sort(key=lambda p: (p.count("/"), rank[Path(p).name.lower()], p))
    return chosen[:MAX_KEY_FILES]


def _read(root: Path, rel: str) -> KeyFile | None:
    try:
        raw = (root / rel).read_bytes()[: MAX_FILE_CHARS * 4]
    except OSError:
        return None
    if b"\0" in raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    return KeyFile(path=rel, text=text[:MAX_FILE_CHARS], truncated=len(text) > MAX_FILE_CHARS)


def clone(url: str, into: Path, *, shallow: bool = True) -> None:
    """``git clone`` of ``url`` into ``into`` (its last commit only, when ``shallow``); a
    failure is a :class:`UsageError` with git's reason."""
    depth = ["--depth", "1"] if shallow else []
    done = subprocess.run(
        ["git", "clone", "--quiet", *depth, "--", url, str(into)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300 if shallow else 600,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "git failed"
        raise UsageError(f"cannot clone the repository {url}: {reason}")
