"""A local multi-node Ray cluster (one head, N worker nodes) on this machine, for tests.

The batch suite runs its pipeline against it exactly as against a real cluster given by
``--ray-address``. The nodes are started by ``ray.cluster_utils.Cluster`` inside a helper process
of our own (``python -m pytest_gpuinfer.batch.cluster``), in a temporary directory of its own, so
that stopping it (and sweeping what is left) touches no one else's Ray: ``ray stop`` would kill
every Ray process of the user on the machine. The head has no CPUs, so work lands on the worker
nodes only.

    with LocalRayCluster(workers=2, worker_cpus=1, log_dir=tmp) as cluster:
        spec = EngineSpec(mode="ray", model=model, ray_address=cluster.address)

The head also runs a Ray Client server, so the cluster can be reached the way a remote cluster
usually is: ``cluster.client_address`` (``ray://127.0.0.1:PORT``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from pytest_gpuinfer.batch.cleanup import ProcessWatch
from pytest_gpuinfer.batch.results import BatchError, Leftovers


class LocalRayCluster:
    """Starts the helper process, reads the cluster's address, stops and sweeps it."""

    def __init__(
        self,
        *,
        workers: int = 2,
        worker_cpus: float = 1.0,
        log_dir: str | Path,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.workers = workers
        self.worker_cpus = worker_cpus
        self.log_path = Path(log_dir) / f"ray-cluster-{os.getpid()}-{id(self):x}.log"
        self.start_timeout_s = start_timeout_s
        self.address: str | None = None
        """The GCS address (``host:port``), as a driver on a node of the cluster uses it."""
        self.client_address: str | None = None
        """The Ray Client address (``ray://host:port``), as a driver off the cluster uses it."""
        self.nodes: int = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.leftovers: Leftovers | None = None
        self._temp_dir: str | None = None
        self._watch: ProcessWatch | None = None

    def start(self) -> LocalRayCluster:
        """Start the head and the worker nodes; wait (bounded) until all have joined."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._temp_dir = tempfile.mkdtemp(prefix="girc", dir="/tmp")
        # Ray writes the cluster's address for `ray.init("auto")` under RAY_TMPDIR (else
        # /tmp/ray): keep it in our directory, out of everyone else's way.
        os.makedirs(os.path.join(self._temp_dir, "ray"), exist_ok=True)
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=self._temp_dir)
        command = [
            sys.executable,
            "-m",
            "pytest_gpuinfer.batch.cluster",
            "--workers",
            str(self.workers),
            "--worker-cpus",
            str(self.worker_cpus),
            "--temp-dir",
            self._temp_dir,
        ]
        self._watch = ProcessWatch([], marker=self._temp_dir)  # lists /dev/shm before the start
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self._watch.add_root(self.process.pid)
        self._watch.start()
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.start_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(0.0, min(left, 1.0)))
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
            elif left <= 0 or self.process.poll() is not None:
                break
        if not line.endswith(b"\n"):
            self.stop()
            raise BatchError(
                f"the local Ray cluster did not start within {self.start_timeout_s:.0f} s\n"
                + self.log_tail()
            )
        answer = json.loads(line)
        self.address = str(answer["address"])
        self.client_address = str(answer["client_address"])
        self.nodes = int(answer["nodes"])
        return self

    def stop(self) -> Leftovers:
        """Shut the nodes down, kill what is left, remove their shm files; what remained."""
        if self.leftovers is not None:
            return self.leftovers
        proc = self.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30.0)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=5.0)
        self.leftovers = self._watch.sweep() if self._watch is not None else Leftovers()
        if self._temp_dir:
            self._keep_error_logs()
            shutil.rmtree(self._temp_dir, ignore_errors=True)
        return self.leftovers

    def _keep_error_logs(self, lines: int = 30) -> None:
        """Append the tails of Ray's non-empty ``*.err`` logs to our log before they go."""
        assert self._temp_dir is not None
        with contextlib.suppress(OSError), open(self.log_path, "a") as log:
            for path in sorted(Path(self._temp_dir).glob("**/session_*/logs/*.err")):
                if path.parent.parent.is_symlink() or path.stat().st_size == 0:
                    continue
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                log.write(f"--- Ray log {path.name} (last {len(tail)} lines) ---\n")
                log.write("\n".join(tail) + "\n")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the helper's log."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no cluster log)"
        return f"--- {self.log_path} ---\n" + "\n".join(text[-lines:])

    @property
    def pid(self) -> int:
        """The helper's pid (its tree holds every node's processes)."""
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> int:
    """Helper process: start the nodes, print the address, hold until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-cpus", type=float, default=1.0)
    parser.add_argument("--temp-dir", required=True)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    common = {"include_dashboard": False, "temp_dir": args.temp_dir}
    with socket.socket() as probe:  # a port the kernel has free now, for the Ray Client server
        probe.bind(("127.0.0.1", 0))
        client_port = int(probe.getsockname()[1])
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "ray_client_server_port": client_port, **common},
    )
    try:
        for _ in range(args.workers):
            cluster.add_node(num_cpus=args.worker_cpus, **common)
        cluster.wait_for_nodes()
        answer = {
            "address": cluster.address,
            "client_address": f"ray://127.0.0.1:{client_port}",
            "nodes": 1 + args.workers,
        }
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
        sys.stdin.read()
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
