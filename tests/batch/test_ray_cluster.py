"""The same pipeline on a Ray cluster: one head and two worker nodes started here, then stopped.

Against a real cluster, give its address instead: ``pytest -m batch --ray-address
ray://head:10001`` (Ray Client) or ``--ray-address head:6379`` (from a node of the cluster);
the pipeline tests then run there. Here the cluster is local: a head with no CPUs, so every
replica runs on a worker node, and two worker nodes of one CPU each. The pipeline reaches it
both ways: through the Ray Client (``ray://``, as a driver off the cluster does) and through the
GCS address (as a driver on one of its nodes does).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pytest_gpuinfer.batch.cluster import LocalRayCluster
from pytest_gpuinfer.batch.engines import BatchJob
from pytest_gpuinfer.batch.results import BatchError, BatchTimeout
from pytest_gpuinfer.plugin.batch_fixtures import require_modules

PROMPT_TOKENS = 16
OUTPUT_TOKENS = 16


CLIENT_IN_CI = (
    "outside CI only: Ray 2.60's client proxier failed to start the per-client server (its "
    "process exited at once, empty logs) in 4 of 13 runs of these tests here, twice in a row "
    "in one clean-clone CI run; the GCS-address test covers the cluster in CI"
)


def start_on(cluster: LocalRayCluster, address: str | None, batch_engines: Any) -> Any:
    """The Ray engine on ``cluster`` at ``address``; a failed start shows the cluster's logs."""
    try:
        return batch_engines.start("ray", ray_address=address, memory_roots=(cluster.pid,))
    except BatchError as exc:
        cluster.stop()  # keeps Ray's error logs in the cluster's log before removing them
        pytest.fail(f"{exc}\n{cluster.log_tail(60)}", pytrace=False)


@pytest.mark.parametrize("connect", ["ray-client", "gcs"])
def test_pipeline_on_local_multinode_cluster(
    connect, batch_engines, batch_rows, batch_settings, batch_report
):
    """Head plus two workers: every row accounted for, replicas on worker nodes, all stopped."""
    require_modules("ray", "vllm")
    if connect == "ray-client" and batch_settings.ci:
        pytest.skip(CLIENT_IN_CI)
    count = batch_settings.size(100, 200)
    replicas = batch_settings.size(1, 2)
    cluster = LocalRayCluster(workers=2, worker_cpus=1, log_dir=batch_settings.log_dir)
    try:
        cluster.start()
        assert cluster.nodes == 3
        address = cluster.client_address if connect == "ray-client" else cluster.address
        assert address and address.startswith("ray://") == (connect == "ray-client"), address
        engine = start_on(cluster, address, batch_engines)
        result = engine.run(
            BatchJob(
                batch_rows(count, PROMPT_TOKENS),
                max_tokens=OUTPUT_TOKENS,
                batch_size=25,
                replicas=replicas,
                time_limit_s=420,
            )
        )
        assert result.check.ok, result.check.describe()
        assert result.output_tokens == count * OUTPUT_TOKENS
        places = {row.where for row in result.rows}
        assert len(places) == replicas, places
        if replicas > 1:
            nodes = {where.split(" pid ")[0] for where in places}
            assert len(nodes) == replicas, f"replicas shared a node: {places}"
        result.leftovers = engine.close()
        assert result.leftovers.clean, result.leftovers.describe()
        batch_report(
            f"ray-cluster-{connect}", result, text=result.describe() + f"\nreplicas on: {places}"
        )
    finally:
        left = cluster.stop()
    assert left.clean, left.describe()


def test_impossible_request_through_ray_client_names_it(batch_engines, batch_rows, batch_settings):
    """Through Ray Client a replica asking for 64 GPUs fails in its limit, naming the resource."""
    require_modules("ray", "vllm")
    if batch_settings.ci:
        pytest.skip(CLIENT_IN_CI)
    limit = 15.0
    cluster = LocalRayCluster(workers=1, worker_cpus=1, log_dir=batch_settings.log_dir)
    try:
        cluster.start()
        engine = start_on(cluster, cluster.client_address, batch_engines)
        began = time.monotonic()
        with pytest.raises(BatchTimeout) as failure:
            engine.run(
                BatchJob(
                    batch_rows(4, PROMPT_TOKENS),
                    max_tokens=4,
                    batch_size=4,
                    time_limit_s=limit,
                    num_gpus=64,
                )
            )
        elapsed = time.monotonic() - began
        assert elapsed < limit + 20, f"the failure took {elapsed:.0f} s for a {limit:.0f} s limit"
        waiting_for = failure.value.waiting_for or ""
        assert "GPU" in waiting_for and "64" in waiting_for, str(failure.value)
        leftovers = engine.close()
        assert leftovers.clean, leftovers.describe()
    finally:
        left = cluster.stop()
    assert left.clean, left.describe()


def test_pipeline_on_given_cluster(batch_engines, batch_rows, batch_settings, batch_report):
    """With ``--ray-address``: the pipeline on that cluster, every row accounted for."""
    if not batch_settings.ray_address:
        pytest.skip("no --ray-address given (the local multi-node test covers the cluster path)")
    engine = batch_engines.start("ray")
    result = engine.run(
        BatchJob(batch_rows(100, PROMPT_TOKENS), max_tokens=OUTPUT_TOKENS, time_limit_s=600)
    )
    assert result.check.ok, result.check.describe()
    batch_report("given-cluster", result)
