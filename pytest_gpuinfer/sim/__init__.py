"""The simulator: an OpenAI-compatible server with set latencies, to check our own measurements."""
