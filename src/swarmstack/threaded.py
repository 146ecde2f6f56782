"""An ASGI app served by uvicorn in a thread of this process: for the scripted model and for
tests that need a real HTTP server next to them."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any


class ThreadedServer:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        # A request still in flight at stop (a scripted answer that waits) is cut after 2 s.
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._app = app
        swarm = getattr(getattr(app, "state", None), "swarm", None)
        if swarm is not None:  # a control plane: where its own agent pools reach it
            swarm.own_url = self.url
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the server down, waiting up to ``timeout_s`` for its app's shutdown."""
        # A control plane ends its long-polls and event streams at once rather than after
        # the graceful-shutdown timeout.
        swarm = getattr(getattr(self._app, "state", None), "swarm", None)
        if swarm is not None:
            swarm.drain_soon()
        self._server.should_exit = True
        self._thread.join(timeout=timeout_s)
        self._sock.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
