"""The docker suite (shipped in the wheel as pytest_gpuinfer.suites.docker)."""
