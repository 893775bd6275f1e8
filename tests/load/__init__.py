"""The load suite (shipped in the wheel as pytest_gpuinfer.suites.load)."""
