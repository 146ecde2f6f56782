"""Running the control plane: the admin token bootstrap and uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from types import FrameType

from swarmstack.auth import TokenKind
from swarmstack.config import Settings
from swarmstack.tickets.models import Plan
from swarmstack.tickets.store import TicketStore


def ensure_admin_token(settings: Settings, store: TicketStore) -> Path:
    """Make sure an admin token exists in ``<data_dir>/admin.token`` (mode 0600).

    The file is how local clients (the CLI) find a token without being told one; the database
    keeps only its hash, so the file is the one place it can be read back.
    """
    path = settings.admin_token_file
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    token = store.tokens.create(TokenKind.ADMIN, "local-admin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def serve(settings: Settings, *, log_level: str = "warning") -> None:
    """Migrate, bootstrap the admin token, and serve the API until interrupted."""
    import uvicorn

    from swarmstack.api import create_app

    store = TicketStore.from_settings(settings)
    store.migrate()
    ensure_admin_token(settings, store)
    app = create_app(settings, store=store)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.state.swarm.drain_soon()  # long-polls and event streams end at once
            super().handle_exit(sig, frame)

    # Where agent pools this server takes up after a restart reach it.
    local = "127.0.0.1" if settings.host in ("", "0.0.0.0") else settings.host
    local = "[::1]" if local == "::" else f"[{local}]" if ":" in local else local
    if settings.port:
        app.state.swarm.own_url = f"http://{local}:{settings.port}"
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    Server(config).run()


def seed_plan(settings: Settings, plan_file: Path) -> Plan | None:
    """Import ``plan_file`` into an empty store (the demo's start); None if plans exist."""
    from swarmstack.tickets.plan import load_plan

    spec = load_plan(plan_file)
    store = TicketStore.from_settings(settings)
    try:
        store.migrate()
        if store.list_plans():
            return None
        return store.create_plan(spec)
    finally:
        store.close()
