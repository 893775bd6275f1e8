"""Perf-suite logic shared with the batch suite: matrix, sweep, batches, projection, baselines."""
