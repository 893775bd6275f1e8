"""The batch suite's own logic without an engine: row checks, figures, Ray's reports, options."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import pytest

from pytest_gpuinfer.batch import ray_pipeline
from pytest_gpuinfer.batch.analysis import BatchCell, batch_cells, classify, sla_projection
from pytest_gpuinfer.batch.engines import BatchJob, BatchRejected, EngineDied, EngineSpec
from pytest_gpuinfer.batch.ray_pipeline import CLIENT_SERVER_FAILED, describe_demands, stage_times
from pytest_gpuinfer.batch.results import (
    BatchError,
    BatchResult,
    BatchTimeout,
    InputRow,
    OutputRow,
    check_rows,
)
from pytest_gpuinfer.memory.boundary import Outcome

SENT = [InputRow(i, f"prompt {i}", 17) for i in range(5)]


def _row(i: int, *, prompt: int = 17, output: int = 8, at: float = 1.0) -> OutputRow:
    return OutputRow(i, prompt, output, "length", at)


def test_every_row_once_with_the_asked_lengths_passes() -> None:
    check = check_rows(SENT, [_row(i) for i in range(5)], max_tokens=8)
    assert check.ok
    assert "every row once" in check.describe()


def test_lost_duplicated_unexpected_and_wrong_lengths_are_named() -> None:
    returned = [_row(0), _row(1), _row(1), _row(2, prompt=16), _row(3, output=7), _row(9)]
    check = check_rows(SENT, returned, max_tokens=8)
    assert not check.ok
    assert check.lost == (4,)
    assert check.duplicated == (1,)
    assert check.unexpected == (9,)
    assert check.wrong_prompt_tokens == ((2, 17, 16),)
    assert check.wrong_output_tokens == ((3, 8, 7),)
    text = check.describe()
    assert "lost 4" in text and "duplicated 1" in text and "unexpected ids 9" in text


def test_output_length_is_not_checked_when_eos_may_stop_rows() -> None:
    assert check_rows(SENT, [_row(i, output=i + 1) for i in range(5)], max_tokens=None).ok


def _result(rows: list[OutputRow], wall: float = 2.0) -> BatchResult:
    return BatchResult(
        engine="vllm-offline",
        params={"rows": len(SENT)},
        rows=rows,
        check=check_rows(SENT, rows, max_tokens=8),
        wall_s=wall,
        engine_s=1.5,
        first_result_s=min(r.done_s for r in rows),
    )


def test_figures_and_the_online_summary_agree() -> None:
    result = _result([_row(i, at=0.5 + i * 0.375) for i in range(5)])
    assert result.rows_per_s == pytest.approx(2.5)
    assert result.output_tokens_per_s == pytest.approx(20.0)
    assert result.engine_share == pytest.approx(0.75)
    summary = result.summary()
    assert summary.completed == 5 and summary.failed == 0
    assert summary.request_throughput == pytest.approx(2.5)
    assert summary.output_token_throughput == pytest.approx(20.0)
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert document["kind"] == "batch" and document["check"]["ok"]


def test_lost_rows_count_as_failed_requests_in_the_summary() -> None:
    result = _result([_row(i, at=1.0) for i in range(3)])
    summary = result.summary()
    assert summary.completed == 3 and summary.failed == 2
    assert summary.errors == {"lost": 2}


def test_stage_times_read_ray_datas_stats() -> None:
    text = (
        "Operator 0 FromItems: 1 tasks executed, 100 blocks produced in 0.29s\n"
        "* Remote wall time: 314.89us min, 193.03ms max, 2.7ms mean, 270.26ms total\n\n"
        "Operator 1 MapBatches(VllmBatchActor): 7 tasks executed, 7 blocks produced in 41.5s\n"
    )
    assert stage_times(text) == {"FromItems": 0.29, "MapBatches(VllmBatchActor)": 41.5}
    assert stage_times("") == {}


def test_resource_demands_are_named() -> None:
    request = SimpleNamespace(bundle={"GPU": 64.0, "CPU": 1.0}, count=1)
    status = SimpleNamespace(
        resource_demands=SimpleNamespace(
            ray_task_actor_demand=[SimpleNamespace(bundles_by_count=[request])],
            placement_group_demand=[],
        )
    )
    assert describe_demands(status) == "1 x {'GPU': 64.0, 'CPU': 1.0}"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (BatchRejected("prompt too long"), Outcome.CLIENT_ERROR),
        (BatchTimeout("limit"), Outcome.TIMEOUT),
        (EngineDied("exited"), Outcome.CRASH),
        (BatchError("CUDA out of memory"), Outcome.CRASH),
        (BatchError("something else"), Outcome.SERVER_ERROR),
    ],
)
def test_failed_probes_are_classified(error: BatchError, outcome: Outcome) -> None:
    assert classify(error) is outcome


def test_matrix_cells_carry_batch_size_and_replicas() -> None:
    cells = batch_cells((8, 64), (1, 2), (16,), prompt_tokens=16)
    assert len(cells) == 4
    assert cells[0] == BatchCell(concurrency=1, prompt_tokens=16, output_tokens=16, batch_size=8)
    assert cells[-1].label == "bs=64 r=2 out=16"


def test_projection_is_labelled_and_uses_the_measured_rows_per_second() -> None:
    runs = [_result([_row(i, at=0.5 + i * 0.375) for i in range(5)], wall=w) for w in (2, 2, 2)]
    projection = sla_projection(runs, rows=1000, window_s=3600)
    assert projection.text().startswith("PROJECTION")
    assert projection.measured_rps == (2.5, 2.5, 2.5)
    assert projection.fits and math.isclose(projection.expected_s, 400.0)


def test_job_and_spec_validate_and_describe_themselves() -> None:
    with pytest.raises(ValueError, match="unknown batch engine mode"):
        EngineSpec(mode="spark")
    job = BatchJob(SENT, max_tokens=8, batch_size=2, replicas=3)
    assert job.params()["prompt_tokens"] == 17
    assert job.wire()["rows"][0] == {"id": 0, "prompt": "prompt 0"}


def test_ray_address_option_reaches_the_settings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from pytest_gpuinfer.plugin.state import RUN_STATE

        def test_address(pytestconfig):
            assert pytestconfig.stash[RUN_STATE].settings.ray_address == "ray://head:10001"
        """
    )
    result = pytester.runpytest("--ray-address", "ray://head:10001", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


class FlakyRayClient:
    """A stand-in for the ``ray`` module whose client proxier fails ``failures`` times."""

    def __init__(self, failures: int, message: str) -> None:
        self.failures = failures
        self.message = message
        self.inits: list[str] = []
        self.shutdowns = 0

    def init(self, address: str, **_: object) -> None:
        self.inits.append(address)
        if len(self.inits) <= self.failures:
            raise ConnectionAbortedError(f"Initialization failure from server: {self.message}")

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.mark.parametrize(
    ("address", "failures", "message", "inits", "fails"),
    [
        ("ray://head:10001", 2, CLIENT_SERVER_FAILED, 3, False),  # third attempt connects
        ("ray://head:10001", 3, CLIENT_SERVER_FAILED, 3, True),  # gives up after three
        ("ray://head:10001", 1, "authentication failed", 1, True),  # other errors: no retry
        ("head:6379", 1, CLIENT_SERVER_FAILED, 1, True),  # not Ray Client: no retry
    ],
)
def test_ray_client_retries_only_when_its_server_failed_to_start(
    monkeypatch: pytest.MonkeyPatch,
    address: str,
    failures: int,
    message: str,
    inits: int,
    fails: bool,
) -> None:
    fake = FlakyRayClient(failures, message)
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_pipeline.time, "sleep", lambda _s: None)
    spec = {"mode": "ray", "ray_address": address}
    if fails:
        with pytest.raises(ConnectionAbortedError, match=message):
            ray_pipeline.RayRunner(spec)
    else:
        runner = ray_pipeline.RayRunner(spec)
        assert runner.through_client
    assert len(fake.inits) == inits
    assert fake.shutdowns == inits - 1
