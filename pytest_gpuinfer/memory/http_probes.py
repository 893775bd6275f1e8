"""Boundary probes for OpenAI-compatible servers: batch size, prompt length, max_tokens.

Each probe sends real requests and classifies the result as an :class:`Outcome`: a 4xx is a
clean refusal, a 5xx a server error, no answer within the deadline a timeout, ``/health`` lost
(or the launched process gone) a crash, and a rise in the engine's preemption counter
(``vllm:num_preemptions_total``) to the storm threshold a preemption storm. The threshold is
one preemption by default: a probe of identical requests that makes the engine evict a running
sequence asked for more KV cache than it has, which is the memory boundary of a batch. The
number of preemptions is not a steadier signal: on a loaded machine requests reach the engine
spread out, so the same batch preempts 20 times in one run and 60 in the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from pytest_gpuinfer.memory.boundary import Outcome, ProbeResult, worst
from pytest_gpuinfer.metrics.engine_gauges import scrape_gauges


def _error_text(response: httpx.Response) -> str:
    """The error message in an OpenAI-style error body, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return " ".join(error["message"].split())[:200]
        if isinstance(body.get("message"), str):
            return " ".join(body["message"].split())[:200]
    return " ".join(response.text.split())[:200]


class OpenAIBoundaryProbes:
    """Probes and a canary against one server's ``/v1/completions``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 60.0,
        alive: Callable[[], bool] = lambda: True,
        storm_threshold: int = 1,
        extra_body: dict[str, Any] | None = None,
        preemptions: Callable[[], float | None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``alive``: does a launched process still run; ``extra_body``: added to each request.

        ``storm_threshold``: preemptions in one probe that class it a preemption storm (1).
        """
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.alive = alive
        self.storm_threshold = storm_threshold
        self.extra_body = dict(extra_body or {})
        self.requests_sent = 0
        self._read_preemptions = preemptions or self._scrape_preemptions
        self._transport = transport

    # -- single requests -----------------------------------------------------------------------

    def _complete(
        self, client: httpx.Client, prompt: str, max_tokens: int, timeout_s: float
    ) -> tuple[Outcome, str]:
        """One completion; its outcome class and a short detail."""
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            **self.extra_body,
        }
        self.requests_sent += 1
        try:
            response = client.post("/v1/completions", json=body, timeout=timeout_s)
        except httpx.TimeoutException:
            return Outcome.TIMEOUT, f"no answer within {timeout_s:.0f} s"
        except httpx.TransportError as exc:
            return Outcome.CRASH, f"{type(exc).__name__}: {exc}"
        if response.status_code == 200:
            return Outcome.OK, ""
        kind = Outcome.SERVER_ERROR if response.status_code >= 500 else Outcome.CLIENT_ERROR
        return kind, f"HTTP {response.status_code}: {_error_text(response)}"

    def healthy(self, timeout_s: float = 5.0) -> bool:
        """True when the process runs and ``/health`` answers 200."""
        if not self.alive():
            return False
        try:
            with self._client(1) as client:
                response = client.get("/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def canary(self, timeout_s: float | None = None, attempts: int = 3) -> bool:
        """A one-token request must succeed (a few tries while the server drains the last probe)."""
        wait = timeout_s if timeout_s is not None else self.timeout_s
        with self._client(1) as client:
            for _ in range(attempts):
                if not self.alive():
                    return False
                outcome, _ = self._complete(client, "Hello", 1, wait)
                if outcome is Outcome.OK:
                    return True
                time.sleep(1.0)
        return False

    def _client(self, connections: int) -> httpx.Client:
        """A client with room for ``connections`` parallel requests."""
        return httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            timeout=httpx.Timeout(self.timeout_s, connect=5.0),
            transport=self._transport,
        )

    def _scrape_preemptions(self) -> float | None:
        """The engine's cumulative preemption counter from /metrics, or None when not exposed."""
        try:
            return scrape_gauges(self.base_url, timeout=5.0, model=None).preemptions
        except (OSError, ValueError):
            return None

    # -- probes --------------------------------------------------------------------------------

    def run(self, value: int, concurrency: int, prompt: str, max_tokens: int) -> ProbeResult:
        """Send ``concurrency`` identical requests at once and classify the worst outcome."""
        began = time.monotonic()
        before = self._read_preemptions()
        deadline = self.timeout_s
        with self._client(concurrency) as client, ThreadPoolExecutor(concurrency) as pool:
            futures = [
                pool.submit(self._complete, client, prompt, max_tokens, deadline)
                for _ in range(concurrency)
            ]
            results = [f.result() for f in futures]
        outcomes = [o for o, _ in results]
        details = [d for o, d in results if d]
        after = self._read_preemptions()
        preempted = None if before is None or after is None else after - before
        suspect = Outcome.CRASH in outcomes or Outcome.OK not in outcomes
        if suspect and not self.healthy():
            outcomes.append(Outcome.CRASH)
            details.insert(0, "/health lost")
        else:  # a dropped connection while the server stays healthy is a server error
            outcomes = [Outcome.SERVER_ERROR if o is Outcome.CRASH else o for o in outcomes]
        if preempted is not None and preempted >= max(1, self.storm_threshold):
            outcomes.append(Outcome.PREEMPTION_STORM)
        outcome = worst(outcomes)
        failed = sum(1 for o in outcomes[:concurrency] if o.failed)
        parts = [f"{failed}/{concurrency} requests failed"] if failed else []
        if preempted is not None:
            parts.append(f"{preempted:.0f} preemption{'' if preempted == 1 else 's'}")
        if details:
            parts.append(details[0])
        return ProbeResult(value, outcome, "; ".join(parts), time.monotonic() - began)

    def batch_probe(self, prompt: str, max_tokens: int) -> Callable[[int], ProbeResult]:
        """Probe for batch size: ``n`` concurrent requests of the same prompt and length."""
        return lambda n: self.run(n, n, prompt, max_tokens)

    def prompt_length_probe(
        self, prompt_of_length: Callable[[int], str]
    ) -> Callable[[int], ProbeResult]:
        """Probe for prompt length: a prompt of exactly ``n`` tokens, one output token."""
        return lambda n: self.run(n, 1, prompt_of_length(n), 1)

    def max_tokens_probe(self, prompt: str) -> Callable[[int], ProbeResult]:
        """Probe for max_tokens: one request for ``n`` tokens (put ignore_eos in extra_body)."""
        return lambda n: self.run(n, 1, prompt, n)
