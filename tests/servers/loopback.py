"""The loopback HTTP server and JSON handler shared by the OpenAI-compatible dev server and the fault server."""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server for bursts of concurrent clients."""

    # socketserver listens with a backlog of 5: a burst of new connections beyond it has its SYNs
    # dropped and retried a second later.
    request_queue_size = 256
    daemon_threads = True


class JSONHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 with JSON bodies; `send_json` answers one request."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle's algorithm on, the body waits for
    # the client's delayed ACK (~40 ms per response).
    disable_nagle_algorithm = True

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away before its answer was sent")
