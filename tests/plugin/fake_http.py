"""The HTTP answering shared by the plugin tests' fake servers (scripts and in-process ones)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


class FakeHandler(BaseHTTPRequestHandler):
    """A request handler that answers with a body of known length and logs under ``log_name``."""

    log_name = ""
    """Prefix of each request's log line on stdout; empty: requests are not logged."""

    def log_message(self, format: str, *values: object) -> None:
        """Print the request line under ``log_name`` (nothing without one)."""
        if self.log_name:
            print(f"{self.log_name}:", format % values, flush=True)

    def send_body(self, status: int, data: bytes, content_type: str) -> None:
        """Answer ``status`` with ``data`` as the whole body."""
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, body: object) -> None:
        """Answer ``status`` with ``body`` as JSON."""
        self.send_body(status, json.dumps(body).encode(), "application/json")
