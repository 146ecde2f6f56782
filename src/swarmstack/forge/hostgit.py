"""git on the host, hardened: nothing a repository holds can make the control plane run a
program.

Every host-side git command runs with hooks off (``core.hooksPath=/dev/null``), no fsmonitor,
no ``core.sshCommand`` or other transport than the ones named, no pager, no signing, no
automatic gc, external diff and textconv off for diffs, and neither the system nor the global
configuration read. The repositories it runs in are the control plane's own bare ones, whose
configuration no push can change; a workspace (which a sandbox controls, ``.git/config``
included) is never a place where host-side git runs.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from swarmstack.errors import SwarmError

GIT = "git"
SAFE_CONFIG = {
    "core.hooksPath": "/dev/null",
    "core.fsmonitor": "false",
    "core.sshCommand": "false",
    "core.pager": "cat",
    "core.askPass": "",
    "credential.helper": "",
    "protocol.allow": "never",
    "protocol.file.allow": "always",  # local clones of a source repository
    "commit.gpgSign": "false",
    "tag.gpgSign": "false",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "receive.fsckObjects": "true",
    "receive.denyDeletes": "true",
    "uploadpack.allowFilter": "true",
}
ENV = {
    "PATH": "/usr/bin:/bin",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "HOME": "/nonexistent",
    "LC_ALL": "C",
}


class GitFailed(SwarmError):
    """A host-side git command that failed."""


def argv(*args: str) -> list[str]:
    config = [part for key, value in SAFE_CONFIG.items() for part in ("-c", f"{key}={value}")]
    return [GIT, *config, *args]


def run(
    *args: str,
    cwd: Path | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> bytes:
    """Run git; its standard output, or GitFailed with its standard error."""
    code, out, err = run_status(*args, cwd=cwd, input=input, env=env)
    if code != 0:
        message = err.decode(errors="replace").strip()
        raise GitFailed(f"git {args[0]} failed: {message[-500:]}")
    return out


def run_status(
    *args: str,
    cwd: Path | None = None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, bytes, bytes]:
    """Run git for a command whose exit status is an answer (``merge-tree``: 1 is a conflict);
    ``env`` adds variables (a committer's identity) to the hardened environment."""
    base = {**ENV, "GIT_DIR": str(cwd)} if cwd is not None and cwd.suffix == ".git" else ENV
    done = subprocess.run(
        argv(*args),
        cwd=cwd,
        input=input,
        capture_output=True,
        env={**base, **(env or {})},
        check=False,
        timeout=600,
    )
    return done.returncode, done.stdout, done.stderr


async def serve(service: str, repo: Path, body: bytes | None, *, advertise: bool) -> bytes:
    """``git upload-pack`` or ``git receive-pack`` in stateless-RPC mode (git's smart HTTP)."""
    args = [service.removeprefix("git-"), "--stateless-rpc"]
    if advertise:
        args.append("--advertise-refs")
    process = await asyncio.create_subprocess_exec(
        *argv(*args, str(repo)),
        stdin=subprocess.PIPE if body is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,  # no GIT_PROTOCOL: protocol v0, which receive-pack speaks in any case
    )
    out, err = await process.communicate(body)
    if process.returncode != 0:
        raise GitFailed(f"git {service} failed: {err.decode(errors='replace').strip()[-500:]}")
    return out
