"""A Ray Data pipeline over vLLM, run inside the batch worker process (never inside pytest).

The pipeline is ``ray.data.from_items(rows).map_batches(VllmBatchActor, compute=ActorPool...)``:
each replica is a Ray actor that owns one ``vllm.LLM`` (measured faster here than
``ray.data.llm``'s processor: 46 s against 72 s for 200 prompts x 16 tokens, FIELD_NOTES). Input
comes from ``from_items`` because a read task such as ``ray.data.range`` asks for a whole CPU and
deadlocks a 2-CPU instance. The actor asks for one CPU (or ``num_gpus`` on a GPU machine);
nothing else in the pipeline asks for a CPU of its own.

:class:`RayRunner` joins an existing cluster (``address``) or starts a local instance
(``ray.init(num_cpus=2)`` by default, in a temporary directory of its own so that the driver can
find and remove everything it started). Through Ray Client (``ray://host:port``) the pipeline is
driven from a task on the cluster: Ray Data's streaming executor needs a core worker, which a
Ray Client driver does not have (Ray 2.60: ``'Worker' object has no attribute 'core_worker'``).
When a job passes its deadline, :meth:`RayRunner.diagnose` reads what the cluster is still
waiting for from the GCS (the autoscaler's resource demands), so the error names the resource
instead of hanging.

``ray.data.llm`` (``build_processor`` with ``vLLMEngineProcessorConfig``) is offered as engine
mode ``ray-llm``: its vLLM stage gets CPU-only placement bundles and its helper stages 0.1 CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import time
from typing import Any

from pytest_gpuinfer.batch.wire import JobDeadline, out_row

CLIENT_SERVER_FAILED = "Starting Ray client server failed"
"""What Ray's client proxier answers when the server process it started for a client died."""

HELPER_STAGE_CPUS = 0.1
"""CPUs asked by every stage but the engine's (a whole CPU each deadlocks a 2-CPU instance)."""


class VllmBatchActor:
    """A Ray Data actor owning one ``vllm.LLM``: generates a batch of prompts per call."""

    def __init__(
        self, model: str, max_model_len: int, max_tokens: int, ignore_eos: bool, engine_kwargs: Any
    ) -> None:
        started = time.monotonic()
        vllm = importlib.import_module("vllm")
        ray = importlib.import_module("ray")
        self.llm = vllm.LLM(
            model=model, max_model_len=max_model_len, seed=0, **dict(engine_kwargs or {})
        )
        self.params = vllm.SamplingParams(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos
        )
        self.init_s = time.monotonic() - started
        node = ray.get_runtime_context().get_node_id() or "?"
        self.where = f"node {node[:8]} pid {os.getpid()}"
        self.calls = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """Generate every prompt of ``batch``; counts per row, the engine time spread over rows."""
        started = time.monotonic()
        outputs = self.llm.generate(list(batch["prompt"]), self.params, use_tqdm=False)
        per_row = (time.monotonic() - started) / max(1, len(outputs))
        init_s = self.init_s if self.calls == 0 else 0.0
        self.calls += 1
        return {
            "id": [int(i) for i in batch["id"]],
            "prompt_tokens": [len(o.prompt_token_ids or ()) for o in outputs],
            "output_tokens": [len(o.outputs[0].token_ids) for o in outputs],
            "finish_reason": [str(o.outputs[0].finish_reason) for o in outputs],
            "engine_s": [per_row] * len(outputs),
            "init_s": [init_s] + [0.0] * (len(outputs) - 1),
            "where": [self.where] * len(outputs),
        }


_STAGE_LINE = re.compile(r"^Operator \d+ (?P<name>[^:\n]+): [^\n]*? in (?P<secs>[\d.]+)s\s*$", re.M)
"""``Operator 1 MapBatches(VllmBatchActor): 7 tasks executed, 7 blocks produced in 41.2s``."""


def stage_times(stats_text: str) -> dict[str, float]:
    """Seconds per operator from ``Dataset.stats()`` text (empty when Ray reports none)."""
    stages: dict[str, float] = {}
    for match in _STAGE_LINE.finditer(stats_text):
        stages[match["name"].strip()] = float(match["secs"])
    return stages


def describe_demands(status: Any) -> str:
    """Resource requests the cluster cannot place yet, from an autoscaler ClusterStatus."""
    demands = status.resource_demands
    parts: list[str] = []
    for demand in list(demands.ray_task_actor_demand) + list(demands.placement_group_demand):
        for request in demand.bundles_by_count:
            parts.append(f"{request.count} x {dict(request.bundle)}")
    return "; ".join(parts)


class Pipeline:
    """The Ray Data pipeline of one engine spec: builds a job's dataset and collects its rows."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.data = importlib.import_module("ray.data")
        self.spec = spec
        self.mode = str(spec["mode"])
        context = self.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False

    def dataset(self, job: dict[str, Any]) -> Any:
        """The pipeline for ``job``: input rows, then the engine stage."""
        items = [{"id": int(r["id"]), "prompt": r["prompt"]} for r in job["rows"]]
        ds = self.data.from_items(items)
        if self.mode == "ray-llm":
            return self._llm_processor(job)(ds)
        return ds.map_batches(
            VllmBatchActor,
            fn_constructor_kwargs={
                "model": self.spec["model"],
                "max_model_len": int(self.spec["max_model_len"]),
                "max_tokens": int(job["max_tokens"]),
                "ignore_eos": bool(job["ignore_eos"]),
                "engine_kwargs": dict(self.spec.get("engine_kwargs") or {}),
            },
            batch_size=int(job["batch_size"]),
            compute=self.data.ActorPoolStrategy(size=int(job["replicas"])),
            num_cpus=float(job.get("num_cpus", 1.0)),
            num_gpus=float(job.get("num_gpus", 0.0)),
        )

    def _llm_processor(self, job: dict[str, Any]) -> Any:
        """``ray.data.llm``'s vLLM processor, CPU-only unless the job asks for GPUs."""
        llm = importlib.import_module("ray.data.llm")
        num_gpus = float(job.get("num_gpus", 0.0))
        bundle = {"GPU": num_gpus, "CPU": 1} if num_gpus else {"CPU": float(job.get("num_cpus", 1))}
        config = llm.vLLMEngineProcessorConfig(
            model_source=self.spec["model"],
            engine_kwargs={
                "max_model_len": int(self.spec["max_model_len"]),
                **dict(self.spec.get("engine_kwargs") or {}),
            },
            batch_size=int(job["batch_size"]),
            concurrency=int(job["replicas"]),
            placement_group_config={"bundles": [bundle]},
            # Plain prompts: no chat template; token counts come from the engine stage itself.
            chat_template_stage=False,
            tokenize_stage={"enabled": True, "num_cpus": HELPER_STAGE_CPUS},
            detokenize_stage=False,
            # Ray metrics export needs ray[serve]; ray[data] alone cannot load it.
            log_engine_metrics=False,
        )
        max_tokens, ignore_eos = int(job["max_tokens"]), bool(job["ignore_eos"])

        def preprocess(row: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": row["id"],
                "prompt": row["prompt"],
                "sampling_params": {
                    "temperature": 0.0,
                    "max_tokens": max_tokens,
                    "ignore_eos": ignore_eos,
                },
            }

        def postprocess(row: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": int(row["id"]),
                "prompt_tokens": int(row.get("num_input_tokens") or 0),
                "output_tokens": int(row.get("num_generated_tokens") or 0),
                "finish_reason": None,
                "engine_s": float(row.get("time_taken_llm") or 0.0),
                "init_s": 0.0,
                "where": "ray.data.llm",
            }

        return llm.build_processor(
            config,
            preprocess=preprocess,
            postprocess=postprocess,
            preprocess_map_kwargs={"num_cpus": HELPER_STAGE_CPUS},
            postprocess_map_kwargs={"num_cpus": HELPER_STAGE_CPUS},
        )

    def collect(self, job: dict[str, Any], seconds_left: float) -> dict[str, Any]:
        """Run the pipeline over ``job``'s rows, stamping each block as it reaches the driver."""
        deadline = time.monotonic() + seconds_left
        ds = self.dataset(job)
        started = time.monotonic()
        rows: list[dict[str, Any]] = []
        engine_s = init_s = 0.0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            now = time.monotonic() - started
            for i in range(len(batch["id"])):
                rows.append(
                    out_row(
                        int(batch["id"][i]),
                        int(batch["prompt_tokens"][i]),
                        int(batch["output_tokens"][i]),
                        None
                        if batch["finish_reason"][i] is None
                        else str(batch["finish_reason"][i]),
                        now,
                        str(batch["where"][i]),
                    )
                )
                engine_s += float(batch["engine_s"][i])
                init_s += float(batch["init_s"][i])
            if time.monotonic() > deadline:
                raise JobDeadline(f"{len(rows)} of {len(job['rows'])} rows done at the deadline")
        try:
            stages = stage_times(ds.stats())
        except Exception:  # stats are a report, never a reason to fail the job
            stages = {}
        return {"rows": rows, "engine_s": engine_s, "engine_init_s": init_s, "stages": stages}


def read_demands() -> str:
    """The resource requests the connected cluster cannot place now, read from its GCS."""
    ray = importlib.import_module("ray")
    sdk = importlib.import_module("ray.autoscaler.v2.sdk")
    return describe_demands(sdk.get_cluster_status(ray.get_runtime_context().gcs_address))


def collect_on_cluster(spec: dict[str, Any], job: dict[str, Any], seconds_left: float) -> Any:
    """Body of the driver task a Ray Client session runs on the cluster."""
    return Pipeline(spec).collect(job, seconds_left)


class RayRunner:
    """A Ray session (local or an existing cluster) that runs one Ray Data pipeline per job."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.ray = importlib.import_module("ray")
        self.spec = spec
        self.mode = str(spec["mode"])
        self.name = "ray-data-llm" if self.mode == "ray-llm" else "ray-data"
        address = spec.get("ray_address")
        self.through_client = str(address or "").startswith("ray://")
        # The replicas run in processes the cluster's nodes start, with the nodes' environment:
        # vLLM's settings (CPU KV cache size, offline hub) travel in the job's runtime env.
        runtime_env = {"env_vars": dict(spec.get("actor_env") or {})}
        if address:
            self._connect(str(address), runtime_env)
        else:
            self.ray.init(
                num_cpus=float(spec.get("ray_num_cpus") or 2),
                num_gpus=int(spec.get("ray_num_gpus") or 0),
                include_dashboard=False,
                _temp_dir=spec["ray_temp_dir"],
                runtime_env=runtime_env,
            )
        self._pipeline = None if self.through_client else Pipeline(spec)

    def _connect(self, address: str, runtime_env: dict[str, Any], attempts: int = 3) -> None:
        """Join the cluster; through Ray Client, retry when it fails to start our server."""
        for attempt in range(1, attempts + 1):
            try:
                self.ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
                return
            except ConnectionAbortedError as exc:
                # Ray's client proxier starts one server process per client; here (Ray 2.60,
                # 2 busy cores) that process sometimes exited at once, and a new connection
                # gets a new one.
                transient = self.through_client and CLIENT_SERVER_FAILED in str(exc)
                if not transient or attempt == attempts:
                    raise
                print(
                    f"gpuinfer: Ray Client at {address}: the cluster could not start a server "
                    f"for this client (attempt {attempt} of {attempts}); retrying",
                    file=sys.stderr,
                    flush=True,
                )
                with contextlib.suppress(Exception):
                    self.ray.shutdown()
                time.sleep(2.0 * attempt)

    def cluster_resources(self) -> dict[str, float]:
        """The cluster's total resources."""
        return {k: float(v) for k, v in self.ray.cluster_resources().items()}

    def run(self, job: dict[str, Any], deadline: float) -> dict[str, Any]:
        """Run the pipeline over ``job``'s rows: here, or in a driver task through Ray Client."""
        seconds_left = deadline - time.monotonic()
        if self._pipeline is not None:
            return self._pipeline.collect(job, seconds_left)
        task = self.ray.remote(num_cpus=0, max_retries=0)(collect_on_cluster)
        ref = task.remote(self.spec, job, seconds_left)
        try:
            # a little past the deadline: the worker's watchdog fires first and reads what the
            # cluster waits for; this timeout is the fallback if its interrupt cannot land
            result: dict[str, Any] = self.ray.get(ref, timeout=max(1.0, seconds_left + 2.0))
        except self.ray.exceptions.GetTimeoutError as exc:
            raise JobDeadline("the driver task on the cluster had not finished") from exc
        except self.ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, Exception):
                raise exc.cause from exc
            raise
        finally:
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        return result

    def diagnose(self) -> str:
        """What the cluster is still waiting for (resource requests no node can place now)."""
        try:
            if self.through_client:  # clusters often expose only the client port, not the GCS
                task = self.ray.remote(num_cpus=0, max_retries=0)(read_demands)
                demands = str(self.ray.get(task.remote(), timeout=30))
            else:
                demands = read_demands()
        except Exception as exc:  # the diagnosis must never hide the timeout itself
            return f"(could not read the cluster's resource demands: {exc})"
        if not demands:
            return ""
        return (
            f"waiting for resources: {demands}; the cluster has {self.cluster_resources()} in all"
        )

    def close(self) -> None:
        """Shut the Ray session down (a local instance stops its processes)."""
        self.ray.shutdown()
