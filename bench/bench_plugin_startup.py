"""Benchmark: what the installed plugin adds to an unrelated project's pytest start-up.

Makes a one-test project in a temporary folder and times ``pytest -q`` there with the plugin
(as installed, unused) and with ``-p no:gpuinfer``, alternating the two in pairs so drift in the
machine's speed hits both alike. Prints the medians, the median of the per-pair differences and
that difference as a share of the run without the plugin (the aim is under 5 %).

    python bench/bench_plugin_startup.py [--pairs 15] [--python .venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_run(python: str, project: Path, *extra: str) -> float:
    """Wall seconds of one ``pytest -q`` in ``project`` (which must pass)."""
    started = time.perf_counter()
    subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=project,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    """Time pairs of runs with and without the plugin and print the overhead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuinfer-startup-") as folder:
        project = Path(folder)
        (project / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
        (project / "pytest.ini").write_text("[pytest]\n")
        time_run(args.python, project)  # warm the file cache
        with_plugin, without, differences = [], [], []
        for _ in range(args.pairs):
            on = time_run(args.python, project)
            off = time_run(args.python, project, "-p", "no:gpuinfer")
            with_plugin.append(on)
            without.append(off)
            differences.append(on - off)
    base = statistics.median(without)
    added = statistics.median(differences)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.pairs} pairs")
    print(
        f"pytest start-up, plugin installed, unused: median {statistics.median(with_plugin):.3f} s"
    )
    print(f"pytest start-up, -p no:gpuinfer:           median {base:.3f} s")
    print(f"added by the plugin: median {added * 1e3:+.0f} ms per run ({added / base:+.1%})")


if __name__ == "__main__":
    main()
