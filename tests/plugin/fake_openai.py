"""A scriptable OpenAI-compatible stand-in for the compat checks' red tests (not an engine).

It serves /health, /v1/models, /v1/completions, /v1/chat/completions (tools, response_format)
and /v1/embeddings with small well-formed answers, and can be told to misbehave in the ways the
compat checks must catch: tool arguments that break the tool's schema, a 500 for an invalid
JSON schema, a 400 for every completion and chat request however valid, a 200 with an empty
``choices`` list, completions that stop after one token whatever is asked. Completions repeat
one text for every one of ``n`` choices; ``--tokenizer DIR`` counts prompt tokens truly.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import ThreadingHTTPServer
from typing import Any

from fake_http import FakeHandler

VALID_TYPES = {"object", "string", "integer", "number", "boolean", "array", "null"}


def schema_is_valid(schema: Any) -> bool:
    """A rough JSON-schema sanity check: every "type" names a JSON type."""
    if isinstance(schema, dict):
        if "type" in schema and schema["type"] not in VALID_TYPES:
            return False
        return all(schema_is_valid(value) for value in schema.values())
    if isinstance(schema, list):
        return all(schema_is_valid(value) for value in schema)
    return True


def main() -> None:
    """Parse the behaviour flags and serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--tool-args-break-schema", action="store_true")
    parser.add_argument("--invalid-schema-500", action="store_true")
    parser.add_argument("--reject-valid", action="store_true", help="400 for every generation")
    parser.add_argument("--empty-choices", action="store_true")
    parser.add_argument("--tokenizer", help="count prompt tokens with this model's tokenizer.json")
    parser.add_argument("--stop-early", action="store_true", help="end every completion at once")
    args = parser.parse_args()
    counter = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        counter = Tokenizer.from_file(f"{args.tokenizer}/tokenizer.json")

    def usage(prompt: Any = None, completion: int = 1) -> dict[str, int]:
        prompt_tokens = 5
        if counter is not None and isinstance(prompt, str):
            prompt_tokens = len(counter.encode(prompt).ids)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def chat_answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        message: dict[str, Any] = {"role": "assistant", "content": "ok"}
        finish = "stop"
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if tools and choice not in (None, "none", "auto"):
            named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
            name = named or tools[0]["function"]["name"]
            arguments = (
                {"city": "Berlin", "days": 9}
                if args.tool_args_break_schema
                else ({"zone": "UTC"} if name == "get_time" else {"city": "Paris", "days": 1})
            )
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_fake",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                ],
            }
            finish = "tool_calls"
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = response_format.get("json_schema", {}).get("schema")
            if not schema_is_valid(schema):
                status = 500 if args.invalid_schema_500 else 400
                return status, {"error": {"message": "invalid JSON schema", "code": status}}
            message["content"] = json.dumps({"answer": "yes", "score": 1})
        return 200, {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": args.model,
            "choices": []
            if args.empty_choices
            else [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage(),
        }

    class Handler(FakeHandler):
        """Routes of the fake OpenAI server."""

        log_name = "fake openai"

        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_json(200, {})
            elif self.path == "/v1/models":
                entry = {"id": args.model, "object": "model", "max_model_len": 512}
                self.send_json(200, {"object": "list", "data": [entry]})
            else:
                self.send_json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.send_json(400, {"error": {"message": "body is not JSON"}})
                return
            if self.path in ("/v1/completions", "/v1/chat/completions") and args.reject_valid:
                self.send_json(400, {"error": {"message": "rejected", "code": 400}})
            elif self.path == "/v1/chat/completions":
                tools = body.get("tools", [])
                if not isinstance(tools, list) or any(
                    "name" not in (tool.get("function") or {}) for tool in tools
                ):
                    self.send_json(400, {"error": {"message": "malformed tools"}})
                    return
                choice = body.get("tool_choice")
                offered = {tool["function"]["name"] for tool in tools}
                if (
                    isinstance(choice, dict)
                    and choice.get("function", {}).get("name") not in offered
                ):
                    self.send_json(400, {"error": {"message": "tool_choice names no offered tool"}})
                    return
                self.send_json(*chat_answer(body))
            elif self.path == "/v1/completions":
                # Every choice the same text (n is not sampled independently); "stop" after one
                # token with --stop-early, whatever max_tokens and ignore_eos say.
                n = int(body.get("n") or 1)
                made = 1 if args.stop_early else int(body.get("max_tokens") or 16)
                finish = "stop" if args.stop_early else "length"
                choices = (
                    []
                    if args.empty_choices
                    else [
                        {"index": i, "text": " ok" * made, "finish_reason": finish}
                        for i in range(n)
                    ]
                )
                self.send_json(
                    200,
                    {
                        "id": "cmpl-fake",
                        "object": "text_completion",
                        "created": int(time.time()),
                        "model": args.model,
                        "choices": choices,
                        "usage": usage(body.get("prompt"), made * n),
                    },
                )
            else:
                self.send_json(404, {"detail": "Not Found"})

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
