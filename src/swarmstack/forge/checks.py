"""A repository's checks, run on a commit of the forge inside a fresh sandbox.

The commit's tree (``git archive``, so nothing of ``.git`` goes in) is unpacked into the
sandbox's workspace and the check command runs there under a time limit; the sandbox is
destroyed afterwards whatever happened. The command is a shell line from the plan or the
repository's configuration — it is the repository's own code, which is why it runs in a
sandbox and never on the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from swarmstack.forge import hostgit
from swarmstack.sandbox.base import Backend, SandboxSpec

TREE_FILE = ".swarm-tree.tar"
# What a check's output keeps for the agent that must fix it: the end is what says why.
OUTPUT_LIMIT = 20_000


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    exit_code: int
    timed_out: bool
    output: str  # stdout and stderr, cut to the last OUTPUT_LIMIT characters
    seconds: float


def _tail(data: bytes) -> str:
    text = data.decode(errors="replace")
    if len(text) <= OUTPUT_LIMIT:
        return text
    return f"… ({len(text) - OUTPUT_LIMIT} characters before)\n" + text[-OUTPUT_LIMIT:]


async def run_checks(
    backend: Backend,
    repo: Path,
    sha: str,
    command: str,
    *,
    timeout_s: float = 600.0,
    spec: SandboxSpec | None = None,
) -> CheckResult:
    """Run ``command`` (``sh -c``) on commit ``sha`` of the bare ``repo`` in a new sandbox."""
    started = time.monotonic()
    tree = hostgit.run("archive", "--format=tar", "--end-of-options", sha, cwd=repo)
    sandbox = await backend.create(spec)
    try:
        await sandbox.write_file(TREE_FILE, tree)
        unpacked = await sandbox.exec(["tar", "-xf", TREE_FILE], timeout_s=120)
        if not unpacked.ok:
            output = _tail(unpacked.stdout + unpacked.stderr)
            raise hostgit.GitFailed(f"the tree of {sha} did not unpack: {output.strip()}")
        await sandbox.delete(TREE_FILE)
        result = await sandbox.exec(["sh", "-c", command], timeout_s=timeout_s)
    finally:
        await sandbox.destroy()
    return CheckResult(
        passed=result.ok,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        output=_tail(result.stdout + result.stderr),
        seconds=round(time.monotonic() - started, 3),
    )
