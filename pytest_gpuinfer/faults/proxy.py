"""The fault proxy, run as its own process: a TCP proxy in front of one server that injects faults.

``python -m pytest_gpuinfer.faults --upstream 127.0.0.1:8000`` listens on a free loopback port,
prints one line naming its proxy and control ports, and forwards every connection to the
upstream server. Faults (see :mod:`.scenario`) are rolled per HTTP exchange: a connection's
first request, and each later request on a kept-alive connection (data from the client after the
server has answered), draws its faults anew. A control port takes one JSON line per command:
``{"cmd": "set", "faults": [...]}`` (restarts the scenario clock and the counts), ``{"cmd":
"stats"}`` (connections, exchanges, faults applied by name) and ``{"cmd": "ping"}``.

Why its own proxy: toxiproxy's server (the tool whose toxics these follow) is in neither Debian
nor PyPI here and the Go module proxy is not reachable; kernel netem is not available; mitmproxy
works on HTTP messages, cannot hold or slow a streamed body, and ends a killed stream with a
clean close rather than a reset (docs/faults.md has the measurements).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.faults.scenario import Fault, FaultSpecError

LISTENING_LINE = "gpuinfer-faults: proxy 127.0.0.1:{proxy} control 127.0.0.1:{control}"

_READ_SIZE = 64 * 1024
_BANDWIDTH_SLICE = 1024


@dataclass
class _Exchange:
    """One request/response on a connection, with the faults it drew."""

    faults: dict[str, Fault]
    down_bytes: int = 0
    stalled: bool = False

    def has(self, name: str) -> Fault | None:
        """The fault of that name when this exchange drew it."""
        return self.faults.get(name)


@dataclass
class _Stats:
    """What the proxy saw and did since the scenario was last set."""

    connections: int = 0
    exchanges: int = 0
    applied: Counter[str] = field(default_factory=Counter)
    upstream_refused: int = 0

    def to_dict(self, open_connections: int) -> dict[str, Any]:
        """Plain-JSON form for the control port."""
        return {
            "connections": self.connections,
            "open_connections": open_connections,
            "exchanges": self.exchanges,
            "applied": dict(self.applied),
            "upstream_refused": self.upstream_refused,
        }


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset (RST) instead of an orderly close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxyServer:
    """The proxy's state: the scenario, its clock, the random draws and the counts."""

    def __init__(self, upstream: tuple[str, int], seed: int = 0) -> None:
        self.upstream = upstream
        self.faults: tuple[Fault, ...] = ()
        self.set_at = time.monotonic()
        self.rng = random.Random(seed)
        self.stats = _Stats()
        self.open: set[asyncio.Task[None]] = set()

    def set_faults(self, faults: tuple[Fault, ...], seed: int | None = None) -> None:
        """Start a new scenario now: its clock and counts start from zero."""
        self.faults = faults
        self.set_at = time.monotonic()
        self.stats = _Stats()
        if seed is not None:
            self.rng = random.Random(seed)

    def draw(self) -> _Exchange:
        """The faults a new exchange gets: those in their window that win their coin toss."""
        elapsed = time.monotonic() - self.set_at
        drawn = {
            fault.name: fault
            for fault in self.faults
            if fault.active_at(elapsed) and self.rng.random() < fault.p
        }
        self.stats.exchanges += 1
        return _Exchange(drawn)

    async def handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        """Serve one client connection until either side closes (or a fault ends it)."""
        task = asyncio.current_task()
        assert task is not None
        self.open.add(task)
        self.stats.connections += 1
        try:
            try:
                up_reader, upstream = await asyncio.open_connection(*self.upstream)
            except OSError:
                self.stats.upstream_refused += 1
                _reset(client)
                return
            try:
                await _Connection(self, client_reader, client, up_reader, upstream).run()
            finally:
                upstream.transport.abort()
        finally:
            client.transport.abort()
            self.open.discard(task)


class _Connection:
    """One proxied connection: a pump each way and the exchange whose faults apply."""

    def __init__(
        self,
        proxy: FaultProxyServer,
        client_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_reader = client_reader
        self.client = client
        self.up_reader = up_reader
        self.upstream = upstream
        self.exchange = _Exchange({})
        self.answered = True
        """The server has sent data since the client last did: the next request is new."""
        self.black_holed = False
        self.queue: asyncio.Queue[tuple[float, bytes, _Exchange] | None] = asyncio.Queue()
        self.last_release = 0.0

    async def run(self) -> None:
        """Pump both ways until one side closes or a fault ends the connection."""
        tasks = [
            asyncio.ensure_future(self.pump_up()),
            asyncio.ensure_future(self.read_down()),
            asyncio.ensure_future(self.write_down()),
        ]
        try:
            # The client closing ends all; the server closing ends once its bytes are written.
            done, _ = await asyncio.wait([tasks[0], tasks[2]], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        except (ConnectionError, OSError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def pump_up(self) -> None:
        """Client to server: start a new exchange on each new request; swallow black-holed ones."""
        while data := await self.client_reader.read(_READ_SIZE):
            if self.answered:
                self.answered = False
                self.exchange = self.proxy.draw()
                if self.exchange.has("black_hole"):
                    self.proxy.stats.applied["black_hole"] += 1
                    self.black_holed = True
            if self.black_holed:
                continue  # nothing reaches the server, nothing comes back
            self.upstream.write(data)
            await self.upstream.drain()

    async def read_down(self) -> None:
        """Server to proxy: stamp each chunk with its arrival and its exchange."""
        try:
            while data := await self.up_reader.read(_READ_SIZE):
                self.answered = True
                await self.queue.put((time.monotonic(), data, self.exchange))
        finally:  # the server closed or reset: the client's side ends once the rest is written
            self.queue.put_nowait(None)

    async def write_down(self) -> None:
        """Proxy to client: hold, slow, stall or cut each chunk as its exchange's faults say."""
        while (item := await self.queue.get()) is not None:
            received, data, exchange = item
            latency = exchange.has("latency")
            if latency is not None:
                await self._hold(received, latency, exchange)
            if not await self._send(data, exchange):
                return

    async def _hold(self, received: float, fault: Fault, exchange: _Exchange) -> None:
        """Hold a chunk ``ms`` (+- jitter) after it arrived, never reordering chunks."""
        delay_s = (fault.param("ms") or 0.0) / 1000
        jitter_s = (fault.param("jitter_ms") or 0.0) / 1000
        if jitter_s:
            delay_s = max(0.0, delay_s + self.proxy.rng.uniform(-jitter_s, jitter_s))
        release = max(received + delay_s, self.last_release)
        self.last_release = release
        if exchange.down_bytes == 0:
            self.proxy.stats.applied["latency"] += 1
        wait_s = release - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    async def _send(self, data: bytes, exchange: _Exchange) -> bool:
        """Write one chunk under the exchange's faults; False when a reset ended the connection."""
        reset = exchange.has("reset_mid_stream")
        stall = exchange.has("stall")
        while data:
            cut = len(data)
            for fault in (reset, stall):
                if fault is not None and not (fault is stall and exchange.stalled):
                    after = int(fault.param("after_bytes") or 0)
                    if exchange.down_bytes <= after < exchange.down_bytes + cut:
                        cut = after - exchange.down_bytes
            if cut:
                await self._write(data[:cut], exchange)
                data = data[cut:]
                continue
            if reset is not None and exchange.down_bytes == int(reset.param("after_bytes") or 0):
                self.proxy.stats.applied["reset_mid_stream"] += 1
                _reset(self.client)
                return False
            assert stall is not None
            exchange.stalled = True
            self.proxy.stats.applied["stall"] += 1
            seconds = stall.param("seconds")
            if seconds is None:
                await asyncio.Event().wait()  # for good: until the client gives up
            else:
                await asyncio.sleep(seconds)
        return True

    async def _write(self, data: bytes, exchange: _Exchange) -> None:
        """Write to the client, at most ``kb_per_s`` when the exchange drew a bandwidth limit."""
        bandwidth = exchange.has("bandwidth")
        if bandwidth is None:
            self.client.write(data)
            exchange.down_bytes += len(data)
            await self.client.drain()
            return
        if exchange.down_bytes == 0:
            self.proxy.stats.applied["bandwidth"] += 1
        rate = max(1.0, (bandwidth.param("kb_per_s") or 0.0) * 1000)
        for start in range(0, len(data), _BANDWIDTH_SLICE):
            piece = data[start : start + _BANDWIDTH_SLICE]
            self.client.write(piece)
            exchange.down_bytes += len(piece)
            await self.client.drain()
            await asyncio.sleep(len(piece) / rate)


async def _control(
    proxy: FaultProxyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer JSON-line commands: set, stats, ping."""
    try:
        while line := await reader.readline():
            try:
                command = json.loads(line)
                kind = command.get("cmd")
                if kind == "set":
                    faults = tuple(Fault.from_dict(item) for item in command.get("faults", ()))
                    proxy.set_faults(faults, command.get("seed"))
                    answer: dict[str, Any] = {"ok": True}
                elif kind == "stats":
                    answer = proxy.stats.to_dict(len(proxy.open))
                elif kind == "ping":
                    answer = {"ok": True}
                else:
                    answer = {"error": f"unknown command {kind!r}"}
            except (ValueError, TypeError, AttributeError, FaultSpecError) as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def serve(upstream: tuple[str, int], port: int, control_port: int, seed: int) -> None:
    """Run the proxy and its control port until SIGTERM or SIGINT."""
    proxy = FaultProxyServer(upstream, seed)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", port)
    control = await asyncio.start_server(
        lambda r, w: _control(proxy, r, w), "127.0.0.1", control_port
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(
        LISTENING_LINE.format(
            proxy=server.sockets[0].getsockname()[1], control=control.sockets[0].getsockname()[1]
        ),
        flush=True,
    )
    await stop.wait()
    server.close()
    control.close()
    for task in list(proxy.open):
        task.cancel()
    await asyncio.gather(*proxy.open, return_exceptions=True)


def _host_port(text: str) -> tuple[str, int]:
    """``host:port`` as a tuple."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pytest_gpuinfer.faults``."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_gpuinfer.faults", description="Fault-injecting TCP proxy."
    )
    parser.add_argument("--upstream", type=_host_port, required=True, metavar="HOST:PORT")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.upstream, args.port, args.control_port, args.seed))
    except OSError as exc:
        print(f"gpuinfer-faults: {exc}", file=sys.stderr)
        return 1
    return 0
