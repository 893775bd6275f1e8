"""Soak runs: steady load for a long time, verdicts on memory and latency drift."""
