"""The batch suite (shipped in the wheel as pytest_gpuinfer.suites.batch)."""
