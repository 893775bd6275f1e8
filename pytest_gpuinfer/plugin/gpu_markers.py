"""The ``requires_gpu(count=1, min_memory_gb=None)`` marker: decide whether a test can run here."""

from __future__ import annotations

import pytest

from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory


def unmet(marker: pytest.Mark, gpus: tuple[GPUInfo, ...], inventory: GPUInventory) -> str | None:
    """The skip reason when ``gpus`` do not satisfy the marker, else None."""
    count = marker.kwargs.get("count", marker.args[0] if marker.args else 1)
    min_memory_gb = marker.kwargs.get("min_memory_gb")
    if not isinstance(count, int) or count < 1:
        raise pytest.UsageError(f"requires_gpu(count={count!r}): count must be a positive integer")
    if not gpus:
        why = inventory.unavailable_reason or "no GPU found"
        return f"requires {count} GPU(s); none available ({why})"
    if min_memory_gb is not None:
        big_enough = tuple(g for g in gpus if g.memory_total_gb >= float(min_memory_gb))
        if len(big_enough) < count:
            largest = max(g.memory_total_gb for g in gpus)
            return (
                f"requires {count} GPU(s) with >= {min_memory_gb} GiB; "
                f"{len(big_enough)} of {len(gpus)} qualify (largest has {largest:.0f} GiB)"
            )
        return None
    if len(gpus) < count:
        return f"requires {count} GPU(s); {len(gpus)} available"
    return None
