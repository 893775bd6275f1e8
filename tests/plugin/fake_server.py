"""A scriptable stand-in server for the plugin's lifecycle tests (not an inference engine).

It answers /health, /v1/models, /version and /v1/completions, and can be told to be slow to
start, never become ready, exit early, spawn child processes (like vLLM's EngineCore and
Worker), die after N requests, require an API key, or hang on every POST (an unresponsive engine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from fake_http import FakeHandler


def main() -> None:
    """Parse the behaviour flags and serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--exit-code", type=int, default=None, help="exit with this code at once")
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--die-after-requests", type=int, default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--pidfile", default=None)
    parser.add_argument(
        "--hang-posts", action="store_true", help="accept POSTs and never answer them"
    )
    parser.add_argument(
        "--escaped-children", type=int, default=0, help="children in a session of their own"
    )
    args = parser.parse_args()

    print(f"fake server starting on port {args.port}", flush=True)
    if args.exit_code is not None:
        print("fake server: simulated startup failure (CUDA out of memory)", flush=True)
        sys.exit(args.exit_code)
    children = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        for _ in range(args.children)
    ] + [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True
        )
        for _ in range(args.escaped_children)
    ]
    if args.pidfile:
        with open(args.pidfile, "w") as handle:
            json.dump([os.getpid(), *[child.pid for child in children]], handle)
    started = time.monotonic()
    served = {"count": 0}

    class Handler(FakeHandler):
        """Routes of the fake server."""

        log_name = "fake server request"

        def _authorised(self) -> bool:
            if args.api_key is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {args.api_key}":
                return True
            self.send_json(401, {"error": {"message": "bad key", "code": 401}})
            return False

        def do_GET(self) -> None:
            ready = not args.never_ready and time.monotonic() - started >= args.ready_after
            if self.path == "/health":
                self.send_json(200 if ready else 503, {})
            elif self.path == "/v1/models" and self._authorised():
                self.send_json(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": args.model, "object": "model", "max_model_len": 512}],
                    },
                )
            elif self.path == "/version":
                self.send_json(200, {"version": "fake-1.0"})
            elif self.path == "/env":
                self.send_json(
                    200, {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
                )
            elif self.path != "/v1/models":
                self.send_json(404, {"error": {"message": "no route"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            if not self._authorised():
                return
            if args.hang_posts:
                print("fake server: holding a POST without answering", flush=True)
                time.sleep(3600)
                return
            served["count"] += 1
            self.send_json(
                200,
                {
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": " hello", "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
                },
            )
            if args.die_after_requests is not None and served["count"] >= args.die_after_requests:
                print("fake server: dying after request", served["count"], flush=True)
                threading.Timer(0.05, lambda: os._exit(7)).start()

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
