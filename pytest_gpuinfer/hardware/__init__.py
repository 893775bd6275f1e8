"""What the machine has: GPUs through NVML (inventory, selection, memory readings)."""
