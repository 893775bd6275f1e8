"""Reports people read and machines consume: one JSON document per run (versioned schema),
an HTML page with plots, a Markdown summary, terminal rows and progress lines.

Suites hand results to the run's :class:`~pytest_gpuinfer.report.collector.ReportCollector`
through ``pytest_gpuinfer.plugin.report_plugin.record(item, kind, payload)``; each kind of
result is one object in :data:`pytest_gpuinfer.report.kinds.KINDS` (its payload, verdicts, JUnit
properties, summary row and HTML figures). This layer sits above metrics/load/memory/perf
and below plugin/.
"""

from pytest_gpuinfer.report.collector import SCHEMA_VERSION, ReportCollector
from pytest_gpuinfer.report.kinds import KINDS

__all__ = ["KINDS", "SCHEMA_VERSION", "ReportCollector"]
