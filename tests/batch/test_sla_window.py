"""SLA window: will N rows fit in the window at the measured sustained rows/s? A PROJECTION.

Several independent runs give the sustained rows/s and its spread; the perf suite's projection
takes a pessimistic bound (95 % lower confidence bound) and says whether N rows fit. The test
fails when they do not, naming the pessimistic time and the window.
"""

from __future__ import annotations

from pytest_gpuinfer.batch.analysis import sla_projection
from pytest_gpuinfer.batch.engines import BatchJob

ROWS_IN_WINDOW = 1_000_000
WINDOW_S = 24 * 3600.0


def test_sla_window_projection(
    offline_batch_engine, batch_rows, batch_settings, batch_report, gpuinfer_verdicts
):
    """Three measured runs, projected onto a million rows in a day: they fit, at the
    pessimistic bound, and the result is labelled a projection."""
    rows = batch_rows(batch_settings.size(128, 512), 16)
    runs = [
        offline_batch_engine.run(BatchJob(rows, max_tokens=16, batch_size=64, time_limit_s=120))
        for _ in range(3)
    ]
    assert all(run.check.ok for run in runs), [run.check.describe() for run in runs]
    projection = sla_projection(runs, rows=ROWS_IN_WINDOW, window_s=WINDOW_S)
    text = projection.text()
    batch_report("sla-window", projection, text=text, kind="projection")
    assert text.startswith("PROJECTION"), text
    gpuinfer_verdicts.check([projection.verdict("the suite's SLA: a million rows a day")], text)
