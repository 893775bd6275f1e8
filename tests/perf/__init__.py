"""The perf suite (shipped in the wheel as pytest_gpuinfer.suites.perf)."""
