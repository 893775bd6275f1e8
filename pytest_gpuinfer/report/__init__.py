"""Reports people read and machines consume: one JSON document per run (versioned schema),
an HTML page with plots, a Markdown summary, terminal rows and progress lines.

Suites hand results to the run's :class:`~pytest_gpuinfer.report.collector.ReportCollector`
through ``pytest_gpuinfer.plugin.report_plugin.record(item, kind, payload)``; the payload
converters in :mod:`pytest_gpuinfer.report.payloads` turn load, burst, memory and perf objects
into plain JSON. This layer sits above metrics/load/memory/perf and below plugin/.
"""

from pytest_gpuinfer.report.collector import KINDS, SCHEMA_VERSION, ReportCollector

__all__ = ["KINDS", "SCHEMA_VERSION", "ReportCollector"]
