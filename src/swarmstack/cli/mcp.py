"""``swarm mcp``: Swarm's tools for Claude Desktop (or any MCP client), over stdio."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from swarmstack.cli import common


def mcp_command(
    api: common.ApiUrl = None,
    token: common.Token = None,
    embedded: Annotated[
        Path | None,
        typer.Option(
            "--embedded",
            help="Start a control plane on this data directory (as swarm run does) and serve "
            "its tools; it stops with this command.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve Swarm's tools over stdio to an MCP client (Claude Desktop starts it from its
    configuration file): plan a spec, approve it, run it, follow it, retry what failed. Against
    the control plane at --api with an admin --token (or $SWARM_API_URL and $SWARM_TOKEN), or
    one started here with --embedded DATA_DIR."""
    from swarmstack.client import SwarmClient
    from swarmstack.mcp_server.server import build_server
    from swarmstack.run import start_control_plane

    with common.errors_to_exit(), contextlib.ExitStack() as stack:
        if embedded is not None:
            if api or token:
                common.fail(
                    "--embedded starts a control plane of its own: give no --api or --token"
                )
            data_dir = embedded.expanduser().resolve()
            data_dir.mkdir(parents=True, exist_ok=True)
            server = start_control_plane(data_dir, {})
            stack.callback(server.stop)
            url, secret = server.url, server.admin_token
            sources = data_dir / "sources"
        else:
            with common.client(api, token) as found:
                url, secret = found.base_url, found.token
            if not secret:
                common.fail("an admin token is needed: --token or $SWARM_TOKEN (or --embedded DIR)")
            sources = common.settings().data_dir / "sources"
        assert secret is not None
        tools = build_server(lambda: SwarmClient(url, secret, timeout=120), sources_dir=sources)
        tools.run("stdio")
