"""A stand-in for the shop's identity provider: a JWKS document served on 127.0.0.1.

The test sets the document (`publish`, to rotate keys), stops and starts the server ("provider
down"; it comes back on the same port) and reads how many fetches it served, and when.
HTTP/1.0, so every fetch is its own connection: a stopped server refuses the next one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flashsale.access.devtokens import DevSigner, jwks
from flashsale.bench.harness import free_port

PATH = "/jwks.json"


class JwksServer:
    def __init__(self, *signers: DevSigner, port: int | None = None) -> None:
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._document: bytes = b""
        self._fetches: list[float] = []  # time.monotonic() of each fetch served
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.publish(*signers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def publish(self, *signers: DevSigner) -> None:
        """Serve these signers' public keys from now on."""
        self.publish_document(jwks(*signers))

    def publish_document(self, document: dict[str, Any]) -> None:
        with self._lock:
            self._document = json.dumps(document).encode()

    @property
    def fetches(self) -> int:
        with self._lock:
            return len(self._fetches)

    def fetches_since(self, moment: float) -> int:
        """Fetches served after `moment` (time.monotonic())."""
        with self._lock:
            return sum(1 for served in self._fetches if served > moment)

    @property
    def last_fetch(self) -> float | None:
        """time.monotonic() of the last fetch served, if any."""
        with self._lock:
            return self._fetches[-1] if self._fetches else None

    def start(self) -> None:
        assert self._server is None, "already running"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                if self.path != PATH:
                    self.send_error(404)
                    return
                with owner._lock:
                    owner._fetches.append(time.monotonic())
                    body = owner._document
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the fetch count is what the tests read."""

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: connections to the port are refused until `start`."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = self._thread = None


@contextmanager
def serving(*signers: DevSigner, started: bool = True) -> Iterator[JwksServer]:
    """A JWKS server for the block (`started=False`: created down, on a reserved port)."""
    server = JwksServer(*signers)
    if started:
        server.start()
    try:
        yield server
    finally:
        server.stop()
