"""The simulator: a parameterised OpenAI-compatible server with set latencies, to check clients.

The simulator is an instrument, never a stand-in for a real engine: it always says what it is
(``server`` header, ``owned_by`` in ``/v1/models``, engine name ``sim``). Its latency, batching
limits and failure modes are set by :class:`SimConfig`, and it records server-side timestamps for
every inference request (``GET /sim/requests``) so a load client's measurements can be checked
against the truth.

Behaviour, in one place:

* **Tokens.** The prompt has one token per whitespace-separated word (a list of token ids counts
  its length). A chat prompt counts the words of every message's text content plus
  ``CHAT_TOKENS_PER_MESSAGE`` per message plus ``CHAT_TOKENS_PER_REPLY`` (role markers and the
  assistant prefix a chat template would add). Output token ``i`` is the word ``" tok{i}"``, so
  text is deterministic. A request produces ``min(SimConfig.output_tokens, max_tokens)`` tokens;
  ``finish_reason`` is ``"length"`` when that is the request's ``max_tokens``, else ``"stop"``
  (the simulated model "emitted EOS"). ``ignore_eos`` is accepted and ignored.
* **Usage.** A non-streaming response always carries ``usage``. A stream ends with a usage-only
  chunk (empty ``choices``) when ``stream_options.include_usage`` is set; when
  ``continuous_usage_stats`` is set too, every chunk also carries the cumulative ``usage`` so far
  (the chat role chunk with ``completion_tokens`` 0), in vLLM's shape, with
  ``"completion_tokens_details":null``.
* **Scheduling.** Like vLLM's scheduler: at most ``max_num_seqs`` requests run; with
  ``kv_token_budget`` the running requests' ``prompt + max_tokens`` (``output_tokens`` when the
  request gives no ``max_tokens``) may not exceed the budget (a request larger than the whole
  budget runs alone). Others wait in FIFO order, head of line first. Nothing is ever preempted.
* **Timing.** Prefill starts at admission: the first chunk is sent ``ttft_s`` after the request
  was admitted (the schedule counts from admission, not from receipt), so a request's TTFT seen
  from its receipt is its receive time (rest of its bytes, parsing, waiting behind an earlier
  response on the same connection) plus its queue wait plus ``ttft_s``. Then
  one chunk every ``itl_s``, each carrying ``tokens_per_chunk`` tokens. Deadlines are absolute (no
  drift); chunks that fall due together go out in one write. Timers use Linux ``timerfd`` for
  sub-millisecond precision (:class:`pytest_gpuinfer.clock.DeadlineTimers`; the event loop's
  timers elsewhere). A streaming
  response's head is sent on receipt, like vLLM's; a non-streaming response is sent whole when its
  last token is due. With ``ttft_s == itl_s == 0`` head and body go out in a single write.
* **Records.** Times are ``time.perf_counter()`` seconds (CLOCK_MONOTONIC on Linux, shared by all
  processes). ``received`` is when the first byte of the request was read from the connection
  (taken on entry to ``data_received``), so the truth includes the simulator's own receive time;
  ``admitted`` is when it got an engine slot (prefill start; ``received <= admitted``).
  ``first_token`` is when the first text chunk was written (for a non-streaming
  response, when the body was written); ``chunk_times`` has the write time of every text chunk of
  a stream (empty for a non-streaming response); ``max_lag`` is the largest delay of a write behind
  its schedule. A client that disconnects early leaves status 499.
* **Failures.** ``error_rate``: that fraction of valid inference requests get HTTP 500 (seeded
  RNG). ``crash_after``: after N inference responses the process exits with
  ``CRASH_EXIT_CODE`` (``os._exit``); in-process, the listener and every connection close.
  ``hang``: inference requests are read and never answered (``/health`` still answers).
  ``malformed_stream``: a corrupt SSE data line follows the middle chunk of every stream.

Modules, lowest first (each imports only those above it): ``config`` (SimConfig, constants),
``http_framing`` (parsed requests, response heads, chunked encoding, error bodies),
``generation`` (request validation, prompt counting, one request's scheduled response),
``connection`` (the HTTP/1.1 protocol), ``server`` (SimServer: routes, admission queue,
metrics, failures), ``launch`` (thread, process and command-line entry points;
``python -m pytest_gpuinfer.sim``).
"""

from pytest_gpuinfer.sim.config import (
    CHAT_TOKENS_PER_MESSAGE,
    CHAT_TOKENS_PER_REPLY,
    CLIENT_CLOSED_STATUS,
    CRASH_EXIT_CODE,
    ENGINE_NAME,
    INFERENCE_PATHS,
    LISTENING_LINE,
    OWNED_BY,
    SERVER_HEADER,
    SimConfig,
)
from pytest_gpuinfer.sim.launch import (
    config_from_args,
    main,
    parse_args,
    run_in_process,
    run_in_thread,
)
from pytest_gpuinfer.sim.server import SimServer

__all__ = [
    "CHAT_TOKENS_PER_MESSAGE",
    "CHAT_TOKENS_PER_REPLY",
    "CLIENT_CLOSED_STATUS",
    "CRASH_EXIT_CODE",
    "ENGINE_NAME",
    "INFERENCE_PATHS",
    "LISTENING_LINE",
    "OWNED_BY",
    "SERVER_HEADER",
    "SimConfig",
    "SimServer",
    "config_from_args",
    "main",
    "parse_args",
    "run_in_process",
    "run_in_thread",
]
