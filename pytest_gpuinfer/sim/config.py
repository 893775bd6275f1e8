"""How the simulated engine behaves (:class:`SimConfig`) and the constants it announces."""

from __future__ import annotations

from dataclasses import dataclass

ENGINE_NAME = "sim"
OWNED_BY = "pytest-gpuinfer-simulator"
SERVER_HEADER = "gpuinfer-sim (simulator, not a real engine)"
LISTENING_LINE = "gpuinfer-sim listening on {url} (simulator, not a real engine)"
CHAT_TOKENS_PER_MESSAGE = 3
"""Prompt tokens a chat message adds on top of its words (role and separators of a template)."""
CHAT_TOKENS_PER_REPLY = 3
"""Prompt tokens a chat request adds once (the assistant prefix of a template)."""
CRASH_EXIT_CODE = 3
"""Exit status of a simulator process that crashed on purpose (``crash_after``)."""
CLIENT_CLOSED_STATUS = 499
"""Status recorded for a request whose client disconnected before the response finished."""
INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
DUE_SLACK_S = 20e-6
"""Chunks due within this much of now are sent in the current write instead of a new timer."""


@dataclass(frozen=True)
class SimConfig:
    """How the simulated engine behaves: latency, batching limits and injected failures."""

    ttft_s: float = 0.05
    itl_s: float = 0.01
    tokens_per_chunk: int = 1
    output_tokens: int = 64
    max_num_seqs: int = 256
    kv_token_budget: int | None = None
    error_rate: float = 0.0
    crash_after: int | None = None
    hang: bool = False
    malformed_stream: bool = False
    slow_after: int | None = None
    """After this many inference requests the simulator runs ``slow_factor`` times slower (a
    server that degrades mid-run, for checking the consistency verdicts)."""
    slow_factor: float = 4.0
    leak_kb_per_request: float = 0.0
    """Memory the simulator keeps for good per inference request (a leak on purpose, for
    checking the leak verdicts; the bytes are written, so they count in its RSS)."""
    max_model_len: int = 1024
    model: str = "sim-model"
    seed: int = 0
    preempt_every: int | None = None
    """Every this-many admitted requests the preemption counter in /metrics goes up by one (no
    request is evicted; the simulator never runs out of KV room): a server that reports
    preemptions, for checking the preemptions verdict."""
    ttft_growth: float = 0.0
    """Seconds of TTFT added per second the simulator has run: a server that slows down over a
    long run (for drift verdicts)."""

    def __post_init__(self) -> None:
        """Reject settings that describe no possible engine."""
        if self.ttft_s < 0 or self.itl_s < 0 or self.ttft_growth < 0:
            raise ValueError("ttft_s, itl_s and ttft_growth must be >= 0")
        if self.tokens_per_chunk < 1 or self.output_tokens < 1:
            raise ValueError("tokens_per_chunk and output_tokens must be >= 1")
        if self.max_num_seqs < 1 or self.max_model_len < 1:
            raise ValueError("max_num_seqs and max_model_len must be >= 1")
        if self.kv_token_budget is not None and self.kv_token_budget < 1:
            raise ValueError("kv_token_budget must be >= 1 or None")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        if self.crash_after is not None and self.crash_after < 0:
            raise ValueError("crash_after must be >= 0 or None")
        if self.slow_after is not None and self.slow_after < 0:
            raise ValueError("slow_after must be >= 0 or None")
        if self.slow_factor <= 0:
            raise ValueError("slow_factor must be > 0")
        if self.preempt_every is not None and self.preempt_every < 1:
            raise ValueError("preempt_every must be >= 1 or None")
        if self.leak_kb_per_request < 0:
            raise ValueError("leak_kb_per_request must be >= 0")
