"""git in a sandbox's workspace: status, diff, log and commit, run inside the sandbox.

Every call is one argument list for ``/usr/bin/git``, run by the sandbox's guest agent in
``/workspace`` as the sandbox's own user — never through a shell, never on the host. A caller's
input reaches git only after a check:

* a revision is a ref name by ``git check-ref-format``'s rules (one level allowed: ``main``,
  ``HEAD``, an object id), optionally followed by ``~N`` / ``^N``; it never starts with ``-``
  and is no URL or transport (``ext::``, ``file://``). It is passed after ``--end-of-options``;
* a path is a plain workspace path (:func:`swarmstack.sandbox.paths.check_pathspec`), passed
  after ``--`` with literal pathspecs (no globs, no ``:`` magic);
* a commit message goes in on stdin (``--file=-``), so it may say anything, ``-m`` included.

The workspace's own configuration cannot make git run programs for these commands: hooks,
fsmonitor, external diff and textconv drivers, signing, pagers, automatic gc and every transport
are switched off on the command line, and the system and global configuration are not read.
Filters named in ``.gitattributes`` still run, inside the sandbox, as its user.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from swarmstack.errors import Conflict, UsageError
from swarmstack.sandbox.base import Sandbox, SandboxError
from swarmstack.sandbox.paths import check_pathspec

GIT = "/usr/bin/git"
TIMEOUT_S = 120.0
MAX_REF = 1024
_SAFE_CONFIG = {
    "core.hooksPath": "/dev/null",
    "core.fsmonitor": "false",
    "core.pager": "cat",
    "protocol.allow": "never",
    "commit.gpgSign": "false",
    "log.showSignature": "false",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "color.ui": "false",
}
_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "LC_ALL": "C",
}
_LOG_FORMAT = "--format=%H%x00%an%x00%ae%x00%aI%x00%s"
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_REVISION = re.compile(r"^(?P<name>[^~^]*)(?P<suffix>(?:[~^][0-9]{0,6})*)$")


class RefRefused(UsageError):
    """A ref or revision that is not a plain ref name, or reads as an option or a URL."""

    code = "bad_ref"


class GitFailed(Conflict):
    """git refused what was asked in this workspace (no repository, unknown ref, nothing to
    commit); the message carries git's own words."""

    code = "git_failed"


# -- models ----------------------------------------------------------------------------------------


class GitFileStatus(BaseModel):
    path: str
    kind: Literal["changed", "renamed", "copied", "unmerged", "untracked", "ignored"]
    index: str = Field(description="the index's status letter (porcelain v2 X; '.' unchanged)")
    worktree: str = Field(description="the work tree's status letter (porcelain v2 Y)")
    orig_path: str | None = Field(default=None, description="where a rename or copy came from")


class GitStatus(BaseModel):
    branch: str | None = Field(description="the current branch; null when HEAD is detached")
    commit: str | None = Field(description="HEAD's commit; null before the first commit")
    upstream: str | None = None
    ahead: int | None = None
    behind: int | None = None
    clean: bool
    files: list[GitFileStatus]


class GitCommit(BaseModel):
    sha: str
    author: str
    email: str
    date: str = Field(description="the author date, strict ISO 8601")
    subject: str


class GitDiff(BaseModel):
    ref: str | None = Field(description="what the work tree was compared with; null: the index")
    stat: bool
    text: str


# -- what callers may pass -------------------------------------------------------------------------


def check_ref(ref: str) -> str:
    """``ref`` if it is a revision git can only read as one: a ref name by ``git
    check-ref-format --allow-onelevel`` with optional ``~N``/``^N`` suffixes."""
    if not ref:
        raise RefRefused("a ref may not be empty")
    if len(ref) > MAX_REF:
        raise RefRefused(f"a ref is at most {MAX_REF} characters")
    if "\0" in ref:
        raise RefRefused("a ref may not hold a NUL byte")
    if ref.startswith("-"):
        raise RefRefused(f"{ref!r} starts with '-': git would read it as an option")
    lowered = ref.lower()
    if "ext::" in lowered or lowered.startswith("file:") or "://" in ref:
        raise RefRefused(f"{ref!r} is a URL or a transport, not a ref")
    match = _REVISION.match(ref)
    name = match.group("name") if match else ref
    problem = ref_format_problem(name)
    if problem is not None:
        raise RefRefused(f"{ref!r} is not a valid ref: {problem}")
    return ref


def ref_format_problem(name: str) -> str | None:
    """Why ``name`` breaks ``git check-ref-format --allow-onelevel``, or None."""
    if not name:
        return "it is empty"
    if name == "@":
        return "it is '@' alone"
    if bad := _REF_FORBIDDEN.search(name):
        return f"it holds {bad.group()!r}"
    if ".." in name:
        return "it holds '..'"
    if "@{" in name:
        return "it holds '@{'"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "it has an empty component (a leading, trailing or doubled '/')"
    if name.endswith("."):
        return "it ends with '.'"
    for component in name.split("/"):
        if component.startswith("."):
            return f"a component ({component!r}) starts with '.'"
        if component.endswith(".lock"):
            return f"a component ({component!r}) ends with '.lock'"
    return None


# -- the operations --------------------------------------------------------------------------------


async def status(sandbox: Sandbox) -> GitStatus:
    out = await _git(
        sandbox, ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"]
    )
    return parse_status(out)


async def diff(sandbox: Sandbox, ref: str | None = None, *, stat: bool = False) -> GitDiff:
    """The work tree against ``ref`` (default: against the index)."""
    args = ["diff", "--no-ext-diff", "--no-textconv", "--no-color"]
    if stat:
        args.append("--stat")
    args.append("--end-of-options")
    if ref is not None:
        args.append(check_ref(ref))
    args.append("--")
    out = await _git(sandbox, args)
    return GitDiff(ref=ref, stat=stat, text=out.decode(errors="replace"))


async def log(sandbox: Sandbox, n: int = 20, ref: str | None = None) -> list[GitCommit]:
    """The last ``n`` commits reachable from ``ref`` (default: HEAD), newest first."""
    args = ["log", "-z", f"--max-count={n}", _LOG_FORMAT, "--end-of-options"]
    if ref is not None:
        args.append(check_ref(ref))
    args.append("--")
    return parse_log(await _git(sandbox, args))


async def commit(
    sandbox: Sandbox,
    message: str,
    paths: list[str] | None = None,
    *,
    author_name: str | None = None,
    author_email: str | None = None,
) -> GitCommit:
    """Commit ``paths`` as they are in the work tree (new, changed or deleted), or, with no
    paths, every change in it. Hooks do not run. Returns the new commit."""
    pathspecs = [check_pathspec(p) for p in paths or []]
    env: dict[str, str] = {}
    if author_name is not None:
        env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = author_name
    if author_email is not None:
        env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = author_email
    await _git(sandbox, ["add", "--all", "--", *pathspecs])
    commit_args = ["commit", "--no-verify", "--file=-"]
    if pathspecs:
        commit_args += ["--", *pathspecs]
    await _git(sandbox, commit_args, stdin=message.encode(), env=env)
    commits = await log(sandbox, 1)
    if not commits:
        raise SandboxError("git committed, but the new commit cannot be read back")
    return commits[0]


async def _git(
    sandbox: Sandbox,
    args: list[str],
    *,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
) -> bytes:
    argv = [GIT, "--no-pager", "--literal-pathspecs"]
    for key, value in _SAFE_CONFIG.items():
        argv += ["-c", f"{key}={value}"]
    result = await sandbox.exec(
        [*argv, *args], env={**_ENV, **(env or {})}, stdin=stdin, timeout_s=TIMEOUT_S
    )
    if result.timed_out:
        raise SandboxError(f"git {args[0]} did not finish in {TIMEOUT_S:.0f}s")
    if result.exit_code in (126, 127):
        raise SandboxError(f"git cannot run in this sandbox: {_words(result.stderr)}")
    if result.exit_code != 0:
        words = _words(result.stderr) or _words(result.stdout) or f"exit {result.exit_code}"
        raise GitFailed(f"git {args[0]} failed: {words}")
    return result.stdout


def _words(raw: bytes, limit: int = 2000) -> str:
    text = raw.decode(errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + " …"


# -- parsing ---------------------------------------------------------------------------------------


def parse_status(raw: bytes) -> GitStatus:
    """``git status --porcelain=v2 --branch -z`` output as a structure."""
    records = raw.decode(errors="replace").split("\0")
    branch: str | None = None
    head: str | None = None
    upstream: str | None = None
    ahead = behind = None
    files: list[GitFileStatus] = []
    i = 0
    while i < len(records):
        record = records[i]
        i += 1
        if not record:
            continue
        if record.startswith("# "):
            key, _, value = record[2:].partition(" ")
            if key == "branch.oid":
                head = None if value == "(initial)" else value
            elif key == "branch.head":
                branch = None if value == "(detached)" else value
            elif key == "branch.upstream":
                upstream = value
            elif key == "branch.ab":
                a, _, b = value.partition(" ")
                ahead, behind = int(a.lstrip("+")), int(b.lstrip("-"))
            continue
        tag = record[0]
        if tag in ("?", "!"):
            kind: Literal["untracked", "ignored"] = "untracked" if tag == "?" else "ignored"
            files.append(GitFileStatus(path=record[2:], kind=kind, index=tag, worktree=tag))
        elif tag == "1":  # 1 XY sub mH mI mW hH hI path
            fields = record.split(" ", 8)
            xy = fields[1]
            files.append(GitFileStatus(path=fields[8], kind="changed", index=xy[0], worktree=xy[1]))
        elif tag == "2":  # 2 XY sub mH mI mW hH hI Xscore path, then NUL and the original path
            fields = record.split(" ", 9)
            xy, score = fields[1], fields[8]
            orig = records[i] if i < len(records) else None
            i += 1
            files.append(
                GitFileStatus(
                    path=fields[9],
                    kind="renamed" if score.startswith("R") else "copied",
                    index=xy[0],
                    worktree=xy[1],
                    orig_path=orig,
                )
            )
        elif tag == "u":  # u XY sub m1 m2 m3 mW h1 h2 h3 path
            fields = record.split(" ", 10)
            xy = fields[1]
            files.append(
                GitFileStatus(path=fields[10], kind="unmerged", index=xy[0], worktree=xy[1])
            )
    return GitStatus(
        branch=branch,
        commit=head,
        upstream=upstream,
        ahead=ahead,
        behind=behind,
        clean=not any(f.kind != "ignored" for f in files),
        files=files,
    )


def parse_log(raw: bytes) -> list[GitCommit]:
    """``git log -z`` output in :data:`_LOG_FORMAT`: five NUL-separated fields a commit."""
    fields = raw.decode(errors="replace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    if len(fields) % 5:
        raise SandboxError(f"git log answered {len(fields)} fields, not five a commit")
    return [
        GitCommit(sha=sha, author=author, email=email, date=date, subject=subject)
        for sha, author, email, date, subject in (
            fields[k : k + 5] for k in range(0, len(fields), 5)
        )
    ]
