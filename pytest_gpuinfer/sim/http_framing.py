"""HTTP/1.1 framing of the simulator: parsed requests, response heads, chunks, error bodies."""

from __future__ import annotations

import json

from pytest_gpuinfer.sim.config import SERVER_HEADER


class BadRequest(Exception):
    """A request the simulated server refuses, with the HTTP status and OpenAI error type."""

    def __init__(self, message: str, status: int = 400, error_type: str = "BadRequestError"):
        """Keep the status and error type next to the message."""
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class IncomingRequest:
    """One fully parsed HTTP request waiting for its connection to answer it."""

    __slots__ = ("body", "http_10", "keep_alive", "method", "path", "received", "request_id")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        body: bytes,
        request_id: str | None,
        keep_alive: bool,
        http_10: bool,
        received: float,
    ) -> None:
        """Capture the parts of a request the server needs and when its first byte arrived."""
        self.received = received
        self.method = method
        self.path = path
        self.body = body
        self.request_id = request_id
        self.keep_alive = keep_alive
        self.http_10 = http_10


_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
}
_SERVER_LINE = b"server: " + SERVER_HEADER.encode() + b"\r\n"
STREAM_END = b"data: [DONE]\n\n"
CONTINUOUS_USAGE = (
    b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d,'
    b'"completion_tokens_details":null}}\n\n'
)
"""End of a chunk with cumulative usage (vLLM's ``continuous_usage_stats``): prompt, total, done."""
LAST_HTTP_CHUNK = b"0\r\n\r\n"


def response_head(
    status: int,
    content_type: bytes,
    content_length: int | None,
    keep_alive: bool,
    request_id: str | None,
    chunked: bool = False,
) -> bytes:
    """Status line and headers: a body of known length, chunked, or ended by closing."""
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
        _SERVER_LINE,
        b"content-type: " + content_type + b"\r\n",
    ]
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n")
    elif content_length is not None:
        parts.append(b"content-length: %d\r\n" % content_length)
    if request_id is not None:
        parts.append(b"x-request-id: " + request_id.encode("latin-1") + b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def http_chunk(payload: bytes) -> bytes:
    """Frame ``payload`` as one chunk of a chunked transfer encoding."""
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def error_body(message: str, status: int, error_type: str) -> bytes:
    """OpenAI/vLLM-style JSON error body."""
    error = {"message": message, "type": error_type, "param": None, "code": status}
    return json.dumps({"error": error}).encode()
