"""Generation and admission: validating an inference request, counting its prompt, and one
request's life in the simulated engine (waiting, running, streaming out on schedule).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from pytest_gpuinfer.clock import DeadlineTimers
from pytest_gpuinfer.sim.config import (
    CHAT_TOKENS_PER_MESSAGE,
    CHAT_TOKENS_PER_REPLY,
    CLIENT_CLOSED_STATUS,
    DUE_SLACK_S,
    SimConfig,
)
from pytest_gpuinfer.sim.http_framing import (
    LAST_HTTP_CHUNK,
    STREAM_END,
    BadRequest,
    IncomingRequest,
    http_chunk,
    response_head,
)


class RequestRecord:
    """Server-side timeline of one inference request (the rows of ``GET /sim/requests``)."""

    __slots__ = (
        "admitted",
        "chunk_times",
        "end",
        "endpoint",
        "first_token",
        "max_lag",
        "prompt_tokens",
        "received",
        "request_id",
        "status",
        "stream",
        "tokens",
    )

    def __init__(self, request_id: str, endpoint: str, received: float) -> None:
        """Start a record for a request whose first byte was read at ``received``."""
        self.request_id = request_id
        self.endpoint = endpoint
        self.stream = False
        self.received = received
        self.admitted: float | None = None
        self.first_token: float | None = None
        self.end: float | None = None
        self.prompt_tokens: int | None = None
        self.tokens = 0
        self.status: int | None = None
        self.max_lag = 0.0
        self.chunk_times: list[float] = []

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the record, fields in timeline order."""
        fields = {name: getattr(self, name) for name in _RECORD_FIELDS}
        fields["chunk_times"] = list(self.chunk_times)
        return fields


_RECORD_FIELDS = (
    "request_id",
    "endpoint",
    "stream",
    "status",
    "received",
    "admitted",
    "first_token",
    "end",
    "prompt_tokens",
    "tokens",
    "max_lag",
)


class GenerationParams:
    """What a validated completions or chat request asks the simulated model to do."""

    __slots__ = (
        "chat",
        "continuous_usage",
        "finish_reason",
        "include_usage",
        "max_tokens",
        "output_tokens",
        "prompt_tokens",
        "stream",
    )

    def __init__(self, chat: bool, payload: Any, config: SimConfig) -> None:
        """Validate ``payload`` like vLLM would; raises BadRequest."""
        if not isinstance(payload, dict):
            raise BadRequest("The request body must be a JSON object.")
        model = payload.get("model")
        if model is not None and model != config.model:
            raise BadRequest(
                f"The model `{model}` does not exist.", status=404, error_type="NotFoundError"
            )
        self.chat = chat
        self.prompt_tokens = count_chat_prompt(payload) if chat else count_prompt(payload)
        max_tokens = payload.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = payload.get("max_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}.")
        n = payload.get("n", 1)
        if n != 1:
            raise BadRequest(f"The simulator only serves n=1, got n={n}.")
        stream = payload.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("`stream` must be a boolean.")
        self.stream = stream
        options = payload.get("stream_options")
        if options is not None and not stream:
            raise BadRequest("Stream options can only be defined when `stream=True`.")
        if options is not None and not isinstance(options, dict):
            raise BadRequest("`stream_options` must be an object.")
        self.include_usage = bool(options and options.get("include_usage"))
        self.continuous_usage = bool(
            self.include_usage and options and options.get("continuous_usage_stats")
        )
        self.max_tokens: int | None = max_tokens
        if max_tokens is not None and max_tokens <= config.output_tokens:
            self.output_tokens = max_tokens
            self.finish_reason = b"length"
        else:
            self.output_tokens = config.output_tokens
            self.finish_reason = b"stop"
        completion = max_tokens if max_tokens is not None else self.output_tokens
        if self.prompt_tokens > config.max_model_len:  # vLLM 0.32's wording
            raise BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, your prompt contains {self.prompt_tokens} input tokens, which exceeds "
                "this limit even without any output tokens. "
                "Please reduce the length of the input prompt."
            )
        if self.prompt_tokens + completion > config.max_model_len:  # older vLLM's wording
            raise BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, you requested {self.prompt_tokens + completion} tokens "
                f"({self.prompt_tokens} in the messages, {completion} in the completion). "
                "Please reduce the length of the messages or completion."
            )

    @property
    def kv_tokens(self) -> int:
        """Tokens of KV cache the request reserves while it runs: prompt plus its token limit."""
        limit = self.max_tokens if self.max_tokens is not None else self.output_tokens
        return self.prompt_tokens + limit


def count_prompt(payload: dict[str, Any]) -> int:
    """Prompt tokens of a completions request: words of a text prompt, or token ids given."""
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list) and all(
        isinstance(token, int) and not isinstance(token, bool) for token in prompt
    ):
        return len(prompt)
    if prompt is None:
        raise BadRequest("Field required: `prompt`.")
    raise BadRequest(
        "`prompt` must be a string or a list of token ids (the simulator serves one prompt)."
    )


def count_chat_prompt(payload: dict[str, Any]) -> int:
    """Prompt tokens of a chat request: words of every text content plus template overhead."""
    messages = payload.get("messages")
    if messages is None:
        raise BadRequest("Field required: `messages`.")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list.")
    tokens = CHAT_TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("Every message must be an object with a string `role`.")
        tokens += CHAT_TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            tokens += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequest("Message content parts must be objects.")
                text = part.get("text")
                if isinstance(text, str):
                    tokens += len(text.split())
        elif content is not None:
            raise BadRequest("Message `content` must be a string, a list of parts or null.")
    return tokens


class Engine(Protocol):
    """What a generation needs from the server that runs it."""

    config: SimConfig
    started: float
    """perf_counter() when the server was made (TTFT growth counts from it)."""
    model_json: bytes
    token_texts: list[bytes]
    timers: DeadlineTimers
    closed: bool

    def event_tails(
        self,
        chat: bool,
        output_tokens: int,
        finish_reason: bytes,
        first: int,
        last: int,
        usage_prompt: int = -1,
    ) -> tuple[bytes, ...]:
        """Rendered SSE event tails for chunks ``first`` to ``last - 1``."""
        ...

    def on_generation_finished(self, generation: Generation) -> None:
        """Book-keeping after a generation sent its last byte."""
        ...

    def on_generation_abandoned(self, generation: Generation) -> None:
        """A client left: free the generation's slot."""
        ...


class ResponseChannel(Protocol):
    """What a generation needs from the connection it answers on."""

    def write(self, data: bytes) -> None:
        """Hand bytes to the socket."""
        ...

    def end_response(self, keep_alive: bool) -> None:
        """The response finished: close, or go on with pipelined requests."""
        ...

    def write_buffer_size(self) -> int:
        """Bytes still waiting to be sent."""
        ...


class Generation:
    """One inference request's life in the simulated engine: waiting, running, streaming out."""

    __slots__ = (
        "chunk_count",
        "chunk_prefix",
        "chunked",
        "connection",
        "created",
        "done",
        "echo_request_id",
        "first_due",
        "keep_alive",
        "next_chunk",
        "params",
        "pending_head",
        "record",
        "response_id",
        "running",
        "server",
        "waiting",
    )

    def __init__(
        self,
        server: Engine,
        connection: ResponseChannel,
        record: RequestRecord,
        params: GenerationParams,
        request: IncomingRequest,
        response_id: str,
    ) -> None:
        """Prepare the response of an accepted request; nothing is sent yet."""
        self.server = server
        self.connection = connection
        self.record = record
        self.params = params
        self.response_id = response_id
        self.created = int(time.time())
        self.keep_alive = request.keep_alive
        self.chunked = not request.http_10
        self.echo_request_id = request.request_id
        self.pending_head: bytes | None = None
        per_chunk = server.config.tokens_per_chunk
        self.chunk_count = -(-params.output_tokens // per_chunk)
        self.next_chunk = 0
        self.first_due = 0.0
        self.running = False
        self.waiting = False
        self.done = False
        self.chunk_prefix = b""

    def _event_head(self, object_name: bytes) -> bytes:
        """Start of every SSE event of this response, up to the ``choices`` value."""
        return b'data: {"id":"%s","object":"%s","created":%d,"model":%s,"choices":' % (
            self.response_id.encode(),
            object_name,
            self.created,
            self.server.model_json,
        )

    def start(self, now: float) -> None:
        """Admission: prefill begins now, and the first token is due ``ttft_s`` later."""
        self.running = True
        self.record.admitted = now
        config = self.server.config
        self.first_due = now + config.ttft_s + config.ttft_growth * (now - self.server.started)
        if self.params.stream:
            object_name = b"chat.completion.chunk" if self.params.chat else b"text_completion"
            self.chunk_prefix = self._event_head(object_name)
        due = self.first_due if self.params.stream else self._due(self.chunk_count - 1)
        if due <= now + DUE_SLACK_S:
            self.on_due()
        else:
            self.server.timers.call_at(due, self.on_due)

    def _due(self, chunk_index: int) -> float:
        """When chunk ``chunk_index`` is scheduled to leave the server."""
        return self.first_due + chunk_index * self.server.config.itl_s

    def on_due(self) -> None:
        """Send whatever has fallen due; schedule the rest."""
        if self.done or self.server.closed:
            return
        now = time.perf_counter()
        if self.params.stream:
            self._send_stream_chunks(now)
        else:
            due = self._due(self.chunk_count - 1)
            if due > now + DUE_SLACK_S:
                self.server.timers.call_at(due, self.on_due)
                return
            self._send_whole_body(now, due)

    def _send_stream_chunks(self, now: float) -> None:
        """Write every chunk due by ``now`` in one write, then schedule the next one."""
        first = self.next_chunk
        if self._due(first) > now + DUE_SLACK_S:
            self.server.timers.call_at(self._due(first), self.on_due)
            return
        count = self.chunk_count
        itl = self.server.config.itl_s
        if itl == 0:
            last = count
        else:  # every chunk already due goes out now
            last = min(count, first + 1 + int((now + DUE_SLACK_S - self._due(first)) / itl))
        body = self._stream_events(first, last)
        finished = last == count
        if self.chunked:
            data = http_chunk(body) + LAST_HTTP_CHUNK if finished else http_chunk(body)
        else:
            data = body
        if self.pending_head is not None:
            data = self.pending_head + data
            self.pending_head = None
        record = self.record
        lag = now - self._due(first)
        if lag > record.max_lag:
            record.max_lag = lag
        if first == 0:
            record.first_token = now
        record.chunk_times.extend([now] * (last - first))
        self.connection.write(data)
        self.next_chunk = last
        if finished:
            record.tokens = self.params.output_tokens
            self._finish(200, now)
        else:
            self.server.timers.call_at(self._due(last), self.on_due)

    def _stream_events(self, first: int, last: int) -> bytes:
        """SSE events for chunks ``first`` to ``last - 1``, with role, usage and end as needed."""
        params = self.params
        prefix = self.chunk_prefix
        usage_prompt = params.prompt_tokens if params.continuous_usage else -1
        tails = self.server.event_tails(
            params.chat, params.output_tokens, params.finish_reason, first, last, usage_prompt
        )
        body = prefix + prefix.join(tails)
        if last == self.chunk_count:
            if params.include_usage:
                body += prefix + b"[]," + self._usage_json() + b"}\n\n"
            body += STREAM_END
        return body

    def _usage_json(self) -> bytes:
        """``"usage":{...}`` of this response."""
        prompt = self.params.prompt_tokens
        completion = self.params.output_tokens
        return b'"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            prompt,
            prompt + completion,
            completion,
        )

    def _send_whole_body(self, now: float, due: float) -> None:
        """Write a non-streaming response in one piece."""
        params = self.params
        text = b"".join(self.server.token_texts[: params.output_tokens])
        head = b'{"id":"%s","object":"%s","created":%d,"model":%s,"choices":' % (
            self.response_id.encode(),
            b"chat.completion" if params.chat else b"text_completion",
            self.created,
            self.server.model_json,
        )
        if params.chat:
            choice = (
                b'[{"index":0,"message":{"role":"assistant","content":"%s","tool_calls":[]},'
                % (text)
            )
        else:
            choice = b'[{"index":0,"text":"%s",' % text
        choice += b'"logprobs":null,"finish_reason":"%s","stop_reason":null}],' % (
            params.finish_reason
        )
        body = head + choice + self._usage_json() + b"}"
        http_head = response_head(
            200, b"application/json", len(body), self.keep_alive, self.echo_request_id
        )
        record = self.record
        record.max_lag = max(0.0, now - due)
        record.first_token = now
        record.tokens = params.output_tokens
        self.connection.write(http_head + body)
        self._finish(200, now)

    def _finish(self, status: int, now: float) -> None:
        """Close the books on a completed response and free its engine slot."""
        self.done = True
        self.record.end = now
        self.record.status = status
        self.server.on_generation_finished(self)
        self.connection.end_response(self.keep_alive)

    def abandon(self, now: float) -> None:
        """The client went away: stop producing and free the slot."""
        if self.done:
            return
        self.done = True
        self.record.end = now
        self.record.status = CLIENT_CLOSED_STATUS
        self.server.on_generation_abandoned(self)
