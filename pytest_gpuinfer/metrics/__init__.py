"""Metrics: request records, distributions and summaries, SLOs, regressions, engine gauges."""
