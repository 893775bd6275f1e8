"""Memory: VRAM (NVML by UUID) and RSS (psutil) sampling, leak verdicts, OOM boundary search."""
