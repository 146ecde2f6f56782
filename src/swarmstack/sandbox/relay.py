"""The host end of the control-plane channel: a Unix socket relayed to the control plane.

A sandbox without a network reaches the control plane through one door: its guest agent
listens on the sandbox's own ``127.0.0.1:<port>`` and splices each connection to ``control.sock``
in a directory bind-mounted read-only into the sandbox. This relay listens on that socket and
connects each caller to the control plane's TCP address. It carries bytes only; every request
still needs its bearer token.

:func:`relay_unix` is the same splice for any Unix socket: the Firecracker backend listens where
a VM's vsock connections to the host arrive and passes each on to this relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from swarmstack.errors import UsageError

SOCKET_NAME = "control.sock"

Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class ControlRelay:
    def __init__(self, directory: Path, api_url: str) -> None:
        parts = urlsplit(api_url)
        if parts.scheme != "http" or not parts.hostname:
            raise UsageError(f"the control relay needs an http:// API address, not {api_url!r}")
        self.directory = directory
        self.host = parts.hostname
        self.port = parts.port or 80
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def socket_path(self) -> Path:
        return self.directory / SOCKET_NAME

    async def start(self) -> ControlRelay:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        os.chmod(self.socket_path, 0o666)  # sandboxes run as their own uids
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)  # ended by close(), not left pending
        try:
            await splice(reader, writer, lambda: asyncio.open_connection(self.host, self.port))
        finally:
            self._connections.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


async def relay_unix(path: Path, upstream: Opener) -> asyncio.AbstractServer:
    """Listen on the Unix socket ``path`` and splice each caller to a connection ``upstream``
    opens (a caller is hung up on when it cannot)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await splice(reader, writer, upstream)

    return await asyncio.start_unix_server(serve, path=str(path))


async def splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: Opener
) -> None:
    """Copy both ways between a caller and a new connection, each way until it ends."""
    try:
        up_reader, up_writer = await upstream()
    except OSError:
        writer.close()
        return
    try:
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
    finally:
        up_writer.close()
        writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        return
