"""The simulator's HTTP connection protocol: parse with httptools, answer requests in order."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import deque
from typing import Protocol, cast

import httptools

from pytest_gpuinfer.sim.config import CLIENT_CLOSED_STATUS
from pytest_gpuinfer.sim.generation import Generation, RequestRecord
from pytest_gpuinfer.sim.http_framing import IncomingRequest, error_body, response_head


class RequestRouter(Protocol):
    """What a connection needs from its server: the set of open connections and a router."""

    connections: set[HttpConnection]

    def dispatch(self, connection: HttpConnection, request: IncomingRequest) -> None:
        """Answer (or start answering) one parsed request on ``connection``."""
        ...


class HttpConnection(asyncio.Protocol):
    """One client connection: parses HTTP/1.1 with httptools and answers requests in order."""

    __slots__ = (
        "_body",
        "_busy",
        "_closed",
        "_data_time",
        "_generation",
        "_parser",
        "_pending",
        "_received",
        "_request_id",
        "_server",
        "_transport",
        "_url",
    )

    def __init__(self, server: RequestRouter) -> None:
        """A connection of ``server``; the transport arrives in connection_made."""
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._request_id: str | None = None
        self._data_time = 0.0
        self._received = 0.0
        self._pending: deque[IncomingRequest] = deque()
        self._busy = False
        self._closed = False
        self._generation: Generation | RequestRecord | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection so a crash or close can end it."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Abandon whatever this connection was waiting for."""
        self._closed = True
        self._server.connections.discard(self)
        self._pending.clear()
        current = self._generation
        self._generation = None
        now = time.perf_counter()
        if isinstance(current, Generation):
            current.abandon(now)
        elif isinstance(current, RequestRecord) and current.status is None:
            current.end = now
            current.status = CLIENT_CLOSED_STATUS

    def data_received(self, data: bytes) -> None:
        """Parse (stamping when each request's first byte arrived), then answer complete ones."""
        self._data_time = time.perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject_malformed(b"Upgrades are not supported.")
            return
        except httptools.HttpParserError as error:
            self._reject_malformed(str(error).encode("utf-8", "replace"))
            return
        if self._pending and not self._busy:
            self._answer_pending()

    # httptools callbacks

    def on_message_begin(self) -> None:
        """A new request starts: its first byte came with the data being parsed."""
        self._received = self._data_time
        self._url = b""
        self._body = []
        self._request_id = None

    def on_url(self, url: bytes) -> None:
        """Collect the request target (it may arrive in pieces)."""
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep ``x-request-id``; answer ``Expect: 100-continue``."""
        if len(name) == 12 and name.lower() == b"x-request-id":
            self._request_id = value.decode("latin-1")
        elif len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        """Collect the request body."""
        self._body.append(body)

    def on_message_complete(self) -> None:
        """Queue the finished request; it is answered after parsing returns."""
        parser = self._parser
        self._pending.append(
            IncomingRequest(
                parser.get_method(),
                self._url.split(b"?", 1)[0],
                b"".join(self._body),
                self._request_id,
                parser.should_keep_alive(),
                parser.get_http_version() == "1.0",
                self._received,
            )
        )

    # answering

    def _answer_pending(self) -> None:
        """Answer queued requests in order until one needs time (a generation) to finish."""
        server = self._server
        while self._pending and not self._busy and not self._closed:
            request = self._pending.popleft()
            try:
                server.dispatch(self, request)
            except Exception:
                traceback.print_exc()
                self._busy = False
                body = error_body("internal simulator error", 500, "InternalServerError")
                self.send_response(500, b"application/json", body, False, request.request_id)

    def write(self, data: bytes) -> None:
        """Hand bytes to the socket unless the connection is gone or going."""
        transport = self._transport
        if transport is not None and not self._closed and not transport.is_closing():
            transport.write(data)

    def send_response(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        keep_alive: bool,
        request_id: str | None,
    ) -> None:
        """Write a complete response with a known length."""
        head = response_head(status, content_type, len(body), keep_alive, request_id)
        self.write(head + body)
        if not keep_alive:
            self.close()

    def hold(self, generation: Generation | RequestRecord) -> None:
        """Answer nothing else on this connection until ``generation`` ends (or forever)."""
        self._busy = True
        self._generation = generation

    def end_response(self, keep_alive: bool) -> None:
        """The held response finished: close, or go on with pipelined requests."""
        self._busy = False
        self._generation = None
        if not keep_alive:
            self.close()
        elif self._pending:
            self._answer_pending()

    def _reject_malformed(self, reason: bytes) -> None:
        """Answer unparseable bytes with 400 and hang up, like an HTTP server would."""
        body = error_body(reason.decode("utf-8", "replace"), 400, "BadRequestError")
        self.send_response(400, b"application/json", body, False, None)

    def close(self) -> None:
        """Close after the buffered bytes are sent."""
        if self._transport is not None and not self._closed:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, losing buffered bytes (a crash)."""
        if self._transport is not None:
            self._transport.abort()

    def write_buffer_size(self) -> int:
        """Bytes still waiting in the transport."""
        if self._transport is None or self._closed:
            return 0
        return self._transport.get_write_buffer_size()
