"""Is a server that accepts connections answering at all? One minimal streamed completion decides.

A server can pass its readiness check (``/health``, ``/v1/models``) and still never answer a
completion: an engine stuck behind its API process, a proxy that holds requests. Every check then
waits out its own timeout. The first request that times out asks :class:`ResponsivenessWatch` to
confirm: it sends the smallest completion there is and waits at most one first-token timeout for
any answer. When none comes, the verdict (:class:`Unresponsive`: the probe sent, the time waited,
what was seen) is kept for the server, and every later request through a :func:`watched_client`
raises :class:`ServerUnresponsive` at once instead of waiting out its own timeout.

Any HTTP answer (an error status included) counts as responsive: this is about hangs, not about
correctness. A refused connection is not a hang either (the server is gone; other checks say so).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx

from pytest_gpuinfer.targets.base import TargetError

if TYPE_CHECKING:
    from pytest_gpuinfer.targets.base import InferenceServer

PROBE_PATH = "/v1/completions"

DEFAULT_WAIT_S = 60.0
"""How long the confirming probe waits when the run set no first-token timeout."""


class ServerUnresponsive(TargetError):
    """The server was judged unresponsive; the message is the verdict with its evidence."""

    def __init__(self, verdict: Unresponsive) -> None:
        super().__init__(verdict.story())
        self.verdict = verdict


def probe_body(model: str) -> dict[str, object]:
    """The smallest streamed completion: one token, any text, no sampling state."""
    return {"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0, "stream": True}


@dataclass(frozen=True)
class Unresponsive:
    """Evidence that a server accepted a request and sent nothing back within the wait."""

    base_url: str
    probe: str
    """The request sent, as ``POST /v1/completions {json body}``."""
    waited_s: float
    seen: str
    """What came back before the wait ran out (nothing, or headers and no body)."""
    trigger: str = ""
    """The request whose timeout led to the probe."""

    def summary(self) -> str:
        """One line for the tests after the deciding one."""
        return (
            f"the server at {self.base_url} is unresponsive: no answer to a minimal completion "
            f"in {self.waited_s:.1f} s; seen: {self.seen}"
        )

    def story(self) -> str:
        """One paragraph naming the cause and the evidence, for failure messages."""
        after = f" after {self.trigger} timed out" if self.trigger else ""
        return (
            f"the server at {self.base_url} is unresponsive: it accepts connections but did not "
            f"answer a minimal completion{after}. Probe: {self.probe}; waited "
            f"{self.waited_s:.1f} s; seen: {self.seen}"
        )


def confirm_unresponsive(
    base_url: str, model: str, *, headers: dict[str, str], wait_s: float
) -> Unresponsive | None:
    """Send one minimal streamed completion; None if anything answers within ``wait_s``."""
    body = probe_body(model)
    probe = f"POST {PROBE_PATH} {json.dumps(body)}"
    started = time.monotonic()
    deadline = started + wait_s
    seen = "no response (not even a status line)"
    timeout = httpx.Timeout(wait_s, connect=min(wait_s, 10.0))
    try:
        with (
            httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client,
            client.stream("POST", PROBE_PATH, json=body) as response,
        ):
            if response.status_code != 200:
                return None
            seen = f"status {response.status_code} and headers, then no body"
            for chunk in response.iter_raw():
                if chunk:
                    return None
                if time.monotonic() > deadline:
                    break
            else:
                return None  # the body ended (empty): an answer, if an odd one
    except httpx.ConnectTimeout:
        seen = "the TCP connection was not accepted"
    except httpx.TimeoutException:
        pass
    except httpx.HTTPError:
        return None  # refused, reset or malformed: an answer of sorts, not a hang
    return Unresponsive(base_url, probe, time.monotonic() - started, seen)


@dataclass
class ResponsivenessWatch:
    """One server's responsiveness: confirmed on the first timeout, then remembered."""

    base_url: str
    model: str
    headers: dict[str, str] = field(repr=False)
    wait_s: float = DEFAULT_WAIT_S
    verdict: Unresponsive | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def raise_if_judged(self) -> None:
        """Raise ServerUnresponsive when the server was already judged unresponsive."""
        if self.verdict is not None:
            raise ServerUnresponsive(self.verdict)

    def after_timeout(self, trigger: str) -> Unresponsive | None:
        """A request timed out: probe the server once (unless judged already); the verdict."""
        with self._lock:  # concurrent timeouts wait for one probe
            if self.verdict is None:
                found = confirm_unresponsive(
                    self.base_url, self.model, headers=self.headers, wait_s=self.wait_s
                )
                if found is not None:
                    self.verdict = Unresponsive(
                        found.base_url, found.probe, found.waited_s, found.seen, trigger
                    )
            return self.verdict


_WATCHES: dict[str, ResponsivenessWatch] = {}
_WATCHES_LOCK = threading.Lock()


def watch_for(server: InferenceServer) -> ResponsivenessWatch:
    """The watch of ``server`` (one per base URL in this process)."""
    with _WATCHES_LOCK:
        watch = _WATCHES.get(server.base_url)
        if watch is None or watch.model != server.model:
            watch = _WATCHES[server.base_url] = ResponsivenessWatch(
                server.base_url, server.model, server.auth_headers()
            )
        return watch


def start_watch(server: InferenceServer, wait_s: float) -> ResponsivenessWatch:
    """A fresh watch for a server just started or attached (forgetting any earlier verdict)."""
    with _WATCHES_LOCK:
        watch = _WATCHES[server.base_url] = ResponsivenessWatch(
            server.base_url, server.model, server.auth_headers(), wait_s
        )
        return watch


class _WatchedStream(httpx.SyncByteStream):
    """A response body whose read timeouts go to the watch, like those before the headers."""

    def __init__(self, inner: httpx.SyncByteStream, watch: ResponsivenessWatch, what: str):
        self._inner = inner
        self._watch = watch
        self._what = what

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except httpx.TimeoutException:
            _judge(self._watch, self._what)
            raise

    def close(self) -> None:
        """Close the underlying body."""
        self._inner.close()


def _judge(watch: ResponsivenessWatch, what: str) -> None:
    """After a timeout on ``what``: raise ServerUnresponsive if the probe confirms a hang."""
    verdict = watch.after_timeout(what)
    if verdict is not None:
        raise ServerUnresponsive(verdict)


class WatchedTransport(httpx.BaseTransport):
    """An httpx transport that fails at once on a server judged unresponsive, and judges it
    when one of its requests times out."""

    def __init__(self, watch: ResponsivenessWatch, inner: httpx.BaseTransport | None = None):
        self._watch = watch
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` unless the server is judged; route timeouts to the watch."""
        self._watch.raise_if_judged()
        what = f"{request.method} {request.url.path}"
        try:
            response = self._inner.handle_request(request)
        except httpx.TimeoutException:
            _judge(self._watch, what)
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_WatchedStream(response.stream, self._watch, what),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        """Close the underlying transport."""
        self._inner.close()
