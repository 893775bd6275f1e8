"""The compat suite (shipped in the wheel as pytest_gpuinfer.suites.compat)."""
