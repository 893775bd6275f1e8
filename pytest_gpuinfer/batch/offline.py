"""vLLM's offline engine (``vllm.LLM``) driven step by step, inside the batch worker process.

Runs only in the worker (:mod:`pytest_gpuinfer.batch.worker`), never inside pytest: vLLM starts
its own processes with spawn and holds the model's memory. Rows go in ``batch_size`` at a time
through the engine's ``add_request``/``step`` loop (what ``LLM.generate`` does inside), so each
row is stamped when it finishes, and a job past its deadline aborts its unfinished rows and
leaves the engine usable for the next job.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from pytest_gpuinfer.batch.wire import JobDeadline, RowRejected, out_row


class OfflineRunner:
    """One ``vllm.LLM`` kept loaded across jobs."""

    name = "vllm-offline"

    def __init__(self, spec: dict[str, Any]) -> None:
        vllm = importlib.import_module("vllm")
        kwargs: dict[str, Any] = {
            "model": spec["model"],
            "max_model_len": int(spec["max_model_len"]),
            "seed": 0,
        }
        kwargs.update(spec.get("engine_kwargs") or {})
        self._vllm = vllm
        self.llm = vllm.LLM(**kwargs)
        self.engine = self.llm.llm_engine

    def run(self, job: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Generate every row of ``job``; rows and timings as plain data."""
        if int(job.get("replicas", 1)) != 1:
            raise ValueError("the offline engine runs one replica; use the Ray Data engine")
        params = self._vllm.SamplingParams(
            temperature=0.0, max_tokens=int(job["max_tokens"]), ignore_eos=bool(job["ignore_eos"])
        )
        rows: list[dict[str, Any]] = job["rows"]
        batch_size = max(1, int(job["batch_size"]))
        started = time.monotonic()
        preempted_before = self.preemptions()
        out: list[dict[str, Any]] = []
        engine_s = 0.0
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            added: list[str] = []
            try:
                for row in chunk:
                    self.engine.add_request(str(row["id"]), row["prompt"], params)
                    added.append(str(row["id"]))
            except Exception as exc:
                self.engine.abort_request(added)
                if isinstance(exc, ValueError) or self._is_client_error(exc):
                    # vLLM refused the row (too long, bad parameters): a clean rejection
                    line = str(exc).splitlines()[0] if str(exc) else repr(exc)
                    raise RowRejected(f"{type(exc).__name__}: {line}") from None
                raise
            while self.engine.has_unfinished_requests():
                if time.monotonic() > deadline:
                    unfinished = [i for i in added if int(i) not in {r["id"] for r in out}]
                    self.engine.abort_request(unfinished)
                    self._drain()
                    raise JobDeadline(
                        f"{len(out)} of {len(rows)} rows done at the deadline "
                        f"(batch size {batch_size}); the unfinished rows were aborted"
                    )
                step_started = time.monotonic()
                outputs = self.engine.step()
                engine_s += time.monotonic() - step_started
                now = time.monotonic() - started
                for output in outputs:
                    if output.finished:
                        completion = output.outputs[0]
                        out.append(
                            out_row(
                                int(output.request_id),
                                len(output.prompt_token_ids or ()),
                                len(completion.token_ids),
                                completion.finish_reason,
                                now,
                                "offline",
                            )
                        )
        preempted_after = self.preemptions()
        preemptions = (
            None
            if preempted_before is None or preempted_after is None
            else preempted_after - preempted_before
        )
        return {"rows": out, "engine_s": engine_s, "stages": {}, "preemptions": preemptions}

    def preemptions(self) -> int | None:
        """The engine's preemption counter (None when its stats are off or unreadable)."""
        try:
            metrics = self.llm.get_metrics()
        except Exception:  # stats disabled or an older vLLM: the count is unknown, not zero
            return None
        for metric in metrics:
            if metric.name == "vllm:num_preemptions":
                return int(getattr(metric, "value", 0))
        return None

    def _is_client_error(self, exc: BaseException) -> bool:
        """True for vLLM's own request-validation errors (``VLLMClientError`` and subclasses)."""
        try:
            client_error = importlib.import_module("vllm.exceptions").VLLMClientError
        except (ImportError, AttributeError):  # an older vLLM: ValueError is all there is
            return False
        return isinstance(client_error, type) and isinstance(exc, client_error)

    def _drain(self) -> None:
        """Step until aborted requests have left the engine (bounded)."""
        for _ in range(100):
            if not self.engine.has_unfinished_requests():
                return
            self.engine.step()

    def diagnose(self) -> str:
        """What the engine was doing (for a timeout message)."""
        return f"{self.engine.get_num_unfinished_requests()} requests unfinished in the engine"

    def close(self) -> None:
        """Drop the engine (its processes exit with the worker)."""
        del self.engine
        del self.llm
