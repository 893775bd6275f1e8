"""The faults suite (shipped in the wheel as pytest_gpuinfer.suites.faults)."""
