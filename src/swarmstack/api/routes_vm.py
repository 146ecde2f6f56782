"""The VM API: sandboxes on request — life cycle, commands, files and git — for admins only.

Every route takes an admin token (:data:`AdminContext` refuses any other before the route reads
its input). Each one: look the sandbox up (404), check the input (400), call the sandbox or the
manager, return. A paused sandbox answers 409 to anything but resume, destroy and reads of its
record. Command output streams as NDJSON lines while the command runs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from swarmstack.api.deps import AdminContext, Ctx, error_responses
from swarmstack.api.schemas import (
    SANDBOX_ID,
    CommitRequest,
    ExecRequest,
    FileWritten,
    VmSpec,
)
from swarmstack.errors import SwarmError
from swarmstack.sandbox import gitops
from swarmstack.sandbox.base import Exit, FileEntry, Output, Sandbox, SandboxInfo, Snapshot
from swarmstack.sandbox.paths import MAX_PATH, check_path

router = APIRouter(prefix="/v1", tags=["vms"])

SandboxId = Annotated[str, Path(pattern=SANDBOX_ID, max_length=64, description="a sandbox id")]
SnapshotId = Annotated[str, Path(pattern=SANDBOX_ID, max_length=64, description="a snapshot id")]
FilePath = Annotated[
    str, Query(max_length=MAX_PATH, description="a file, relative to the workspace")
]
Ref = Annotated[
    str | None,
    Query(
        max_length=gitops.MAX_REF,
        description="a ref name (check-ref-format rules) or object id, optionally with ~N/^N",
    ),
]

_NDJSON = "application/x-ndjson"
_EXEC_LINES = {
    "oneOf": [
        {
            "type": "object",
            "required": ["stream", "data"],
            "properties": {
                "stream": {"enum": ["stdout", "stderr"]},
                "data": {"type": "string", "description": "base64"},
            },
        },
        {
            "type": "object",
            "required": ["exit", "timed_out"],
            "properties": {
                "exit": {"type": "integer"},
                "timed_out": {"type": "boolean"},
                "error": {"type": "string"},
            },
        },
    ]
}
_BINARY = {"type": "string", "format": "binary"}


def _sandbox(ctx: Ctx, sandbox_id: str) -> Sandbox:
    return ctx.state.sandboxes.get(sandbox_id)


# -- life cycle ------------------------------------------------------------------------------------


@router.get("/vms", response_model=list[SandboxInfo], responses=error_responses(403))
async def list_vms(ctx: AdminContext) -> list[SandboxInfo]:
    """The sandboxes this control plane runs, oldest first."""
    return ctx.state.sandboxes.list_sandboxes()


@router.post(
    "/vms",
    status_code=201,
    response_model=SandboxInfo,
    responses=error_responses(403, 409, 413, 502, 503),
)
async def create_vm(spec: VmSpec, ctx: AdminContext) -> SandboxInfo:
    """Start a sandbox. 409 ``sandbox_limit`` when ``SWARM_MAX_SANDBOXES`` already run."""
    sandbox = await ctx.state.sandboxes.create(spec.to_spec())
    return sandbox.info()


@router.get("/vms/{sandbox_id}", response_model=SandboxInfo, responses=error_responses(403, 404))
async def get_vm(sandbox_id: SandboxId, ctx: AdminContext) -> SandboxInfo:
    return _sandbox(ctx, sandbox_id).info()


@router.delete("/vms/{sandbox_id}", status_code=204, responses=error_responses(403, 404, 502))
async def destroy_vm(sandbox_id: SandboxId, ctx: AdminContext) -> Response:
    """End every process of the sandbox and remove everything it had."""
    await ctx.state.sandboxes.destroy(sandbox_id)
    return Response(status_code=204)


@router.post(
    "/vms/{sandbox_id}/pause",
    response_model=SandboxInfo,
    responses=error_responses(403, 404, 409, 502),
)
async def pause_vm(sandbox_id: SandboxId, ctx: AdminContext) -> SandboxInfo:
    """Stop every process of the sandbox at once (409 if it is not running)."""
    return await ctx.state.sandboxes.pause(sandbox_id)


@router.post(
    "/vms/{sandbox_id}/resume",
    response_model=SandboxInfo,
    responses=error_responses(403, 404, 409, 502),
)
async def resume_vm(sandbox_id: SandboxId, ctx: AdminContext) -> SandboxInfo:
    """Restart a paused sandbox's processes (409 if it is not paused)."""
    return await ctx.state.sandboxes.resume(sandbox_id)


# -- snapshots -------------------------------------------------------------------------------------


@router.post(
    "/vms/{sandbox_id}/snapshot",
    status_code=201,
    response_model=Snapshot,
    responses=error_responses(403, 404, 409, 502),
)
async def snapshot_vm(sandbox_id: SandboxId, ctx: AdminContext) -> Snapshot:
    """Save the sandbox (its workspace's files, or the whole machine: see ``kind``)."""
    return await ctx.state.sandboxes.snapshot(sandbox_id)


@router.get("/snapshots", response_model=list[Snapshot], responses=error_responses(403))
async def list_snapshots(ctx: AdminContext) -> list[Snapshot]:
    """Every snapshot kept, oldest first; they outlive the server."""
    return ctx.state.sandboxes.list_snapshots()


@router.post(
    "/snapshots/{snapshot_id}/restore",
    status_code=201,
    response_model=SandboxInfo,
    responses=error_responses(403, 404, 409, 502, 503),
)
async def restore_snapshot(snapshot_id: SnapshotId, ctx: AdminContext) -> SandboxInfo:
    """Start a new sandbox from a snapshot."""
    sandbox = await ctx.state.sandboxes.restore(snapshot_id)
    return sandbox.info()


@router.delete("/snapshots/{snapshot_id}", status_code=204, responses=error_responses(403, 404))
async def delete_snapshot(snapshot_id: SnapshotId, ctx: AdminContext) -> Response:
    """Forget a snapshot and remove its files."""
    await ctx.state.sandboxes.delete_snapshot(snapshot_id)
    return Response(status_code=204)


# -- commands --------------------------------------------------------------------------------------


@router.post(
    "/vms/{sandbox_id}/exec",
    response_class=Response,
    responses={
        **error_responses(403, 404, 409, 413, 502),
        200: {
            "description": "NDJSON, one object a line, as the command runs: "
            '{"stream": "stdout"|"stderr", "data": <base64>} for output, and last '
            '{"exit": <code>, "timed_out": <bool>} (with "error" if it could not run)',
            "content": {_NDJSON: {"schema": _EXEC_LINES}},
        },
    },
)
async def exec_command(sandbox_id: SandboxId, body: ExecRequest, ctx: AdminContext) -> Response:
    """Run an argument list in the workspace and stream its output while it runs."""
    sandbox = _sandbox(ctx, sandbox_id)
    check_path(body.cwd, allow_root=True)
    stdin = base64.b64decode(body.stdin) if body.stdin is not None else None
    stream = sandbox.exec_stream(
        body.argv, cwd=body.cwd, env=body.env, timeout_s=body.timeout_s, stdin=stdin
    )
    # A refusal before the command starts (a bad cwd, a paused sandbox) keeps its own status.
    first = await anext(stream)
    return StreamingResponse(_ndjson(first, stream), media_type=_NDJSON)


async def _ndjson(first: Output | Exit, rest: AsyncIterator[Output | Exit]) -> AsyncIterator[bytes]:
    item = first
    try:
        while True:
            yield _line(item)
            if isinstance(item, Exit):
                return
            item = await anext(rest)
    except StopAsyncIteration:
        yield _line(Exit(-1, error="the command's output ended without an exit status"))
    except SwarmError as exc:  # the answer has started: the failure goes in-band
        yield _line(Exit(-1, error=exc.message))
    finally:
        close = getattr(rest, "aclose", None)
        if close is not None:
            await close()


def _line(item: Output | Exit) -> bytes:
    obj: dict[str, Any]
    if isinstance(item, Output):
        obj = {"stream": item.stream, "data": base64.b64encode(item.data).decode()}
    else:
        obj = {"exit": item.exit_code, "timed_out": item.timed_out}
        if item.error:
            obj["error"] = item.error
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


# -- files -----------------------------------------------------------------------------------------


@router.get(
    "/vms/{sandbox_id}/files",
    response_class=Response,
    responses={
        **error_responses(403, 404, 409, 502),
        200: {"description": "the file's bytes", "content": {"application/octet-stream": {}}},
    },
)
async def read_file(sandbox_id: SandboxId, path: FilePath, ctx: AdminContext) -> Response:
    """A file's bytes (409 for a directory: list it with ``/files/list``)."""
    sandbox = _sandbox(ctx, sandbox_id)
    data = await sandbox.read_file(check_path(path), limit=ctx.state.settings.max_file_bytes)
    return Response(data, media_type="application/octet-stream")


@router.get(
    "/vms/{sandbox_id}/files/list",
    response_model=list[FileEntry],
    responses=error_responses(403, 404, 409, 502),
)
async def list_files(
    sandbox_id: SandboxId,
    ctx: AdminContext,
    path: Annotated[
        str, Query(max_length=MAX_PATH, description="a directory, relative to the workspace")
    ] = ".",
) -> list[FileEntry]:
    """A directory's entries (symlinks as themselves), or a file's own entry."""
    sandbox = _sandbox(ctx, sandbox_id)
    return await sandbox.list_files(check_path(path, allow_root=True))


@router.put(
    "/vms/{sandbox_id}/files",
    response_model=FileWritten,
    responses=error_responses(403, 404, 409, 413, 502),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": _BINARY}},
        }
    },
)
async def write_file(
    sandbox_id: SandboxId,
    path: FilePath,
    request: Request,
    ctx: AdminContext,
    mode: Annotated[int, Query(ge=0, le=0o777, description="permission bits")] = 0o644,
) -> FileWritten:
    """Write the request body to a file, whole or not at all, making its directories. The
    body may be up to ``SWARM_MAX_FILE_BYTES``."""
    sandbox = _sandbox(ctx, sandbox_id)
    check_path(path)
    data = await request.body()
    await sandbox.write_file(path, data, mode=mode)
    return FileWritten(path=path, size=len(data))


@router.delete(
    "/vms/{sandbox_id}/files", status_code=204, responses=error_responses(403, 404, 409, 502)
)
async def delete_file(
    sandbox_id: SandboxId,
    path: FilePath,
    ctx: AdminContext,
    recursive: Annotated[bool, Query(description="delete a directory and all in it")] = False,
) -> Response:
    """Delete a file, or a directory with ``recursive``; a symlink goes, never its target."""
    sandbox = _sandbox(ctx, sandbox_id)
    await sandbox.delete(check_path(path), recursive=recursive)
    return Response(status_code=204)


# -- git -------------------------------------------------------------------------------------------


@router.get(
    "/vms/{sandbox_id}/git/status",
    response_model=gitops.GitStatus,
    responses=error_responses(403, 404, 409, 502),
)
async def git_status(sandbox_id: SandboxId, ctx: AdminContext) -> gitops.GitStatus:
    """The workspace repository's branch and changed files (porcelain v2, parsed)."""
    return await gitops.status(_sandbox(ctx, sandbox_id))


@router.get(
    "/vms/{sandbox_id}/git/diff",
    response_model=gitops.GitDiff,
    responses=error_responses(403, 404, 409, 502),
)
async def git_diff(
    sandbox_id: SandboxId,
    ctx: AdminContext,
    ref: Ref = None,
    stat: Annotated[bool, Query(description="a summary (--stat) instead of the patch")] = False,
) -> gitops.GitDiff:
    """The work tree against ``ref``, or against the index without one."""
    return await gitops.diff(_sandbox(ctx, sandbox_id), ref, stat=stat)


@router.get(
    "/vms/{sandbox_id}/git/log",
    response_model=list[gitops.GitCommit],
    responses=error_responses(403, 404, 409, 502),
)
async def git_log(
    sandbox_id: SandboxId,
    ctx: AdminContext,
    n: Annotated[int, Query(ge=1, le=1000, description="how many commits")] = 20,
    ref: Ref = None,
) -> list[gitops.GitCommit]:
    """The last ``n`` commits reachable from ``ref`` (default HEAD), newest first."""
    return await gitops.log(_sandbox(ctx, sandbox_id), n, ref)


@router.post(
    "/vms/{sandbox_id}/git/commit",
    status_code=201,
    response_model=gitops.GitCommit,
    responses=error_responses(403, 404, 409, 413, 502),
)
async def git_commit(
    sandbox_id: SandboxId, body: CommitRequest, ctx: AdminContext
) -> gitops.GitCommit:
    """Commit the given paths, or every change, with hooks off; the message goes in as is."""
    return await gitops.commit(
        _sandbox(ctx, sandbox_id),
        body.message,
        body.paths,
        author_name=body.author_name,
        author_email=body.author_email,
    )
