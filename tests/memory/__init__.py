"""The memory suite (shipped in the wheel as pytest_gpuinfer.suites.memory)."""
