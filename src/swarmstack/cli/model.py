"""``swarm model``: the scripted model, a stand-in for the Anthropic API."""

from __future__ import annotations

from pathlib import Path

import typer

from swarmstack.cli.common import console, guarded

app = typer.Typer(help="The scripted model: the Messages API answered from a script.")


@app.command("serve")
@guarded
def serve(
    script: Path = typer.Argument(..., help="The script: YAML or JSON (docs/scripted-model.md)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Where to listen."),
    port: int = typer.Option(8430, "--port", min=0, max=65535, help="The port (0: any free one)."),
) -> None:
    """Serve the Messages API from SCRIPT until interrupted: point the LLM gateway
    (SWARM_LLM_UPSTREAM_URL) or any Anthropic client at it."""
    import uvicorn

    from swarmstack.llm.scripted import ScriptedModel, create_app, load_script

    model = ScriptedModel(load_script(script))
    sessions = len(model.script.sessions)
    console.print(f"scripted model: {sessions} sessions from {script} on http://{host}:{port}")
    uvicorn.run(create_app(model), host=host, port=port, log_level="warning", access_log=False)
