"""Run an ASGI app with uvicorn on a background thread.

For tests, benchmarks and notebooks that need a real server on loopback in
the same process. ``guardrail serve`` runs uvicorn in the foreground instead.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["ServerThread", "free_port", "serve_app"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """A uvicorn server on its own thread; :meth:`stop` shuts it down."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
        self.server = uvicorn.Server(config)
        self.host = host
        self.port = port
        self.thread = threading.Thread(
            target=self.server.run, name=f"uvicorn-{port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServerThread:
        """Start serving; raise ``RuntimeError`` if not up within ``timeout_s``."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(
                    f"server on {self.url} exited during start-up; see its log"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} not up in {timeout_s} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the server to exit (graceful: open requests finish) and wait."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)


def serve_app(app: Any, *, port: int | None = None) -> ServerThread:
    """Start ``app`` on 127.0.0.1 (a free port unless given) and return it."""
    return ServerThread(app, port=port or free_port()).start()
