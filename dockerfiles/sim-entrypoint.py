"""The simulator image's entry point: take vLLM's server arguments, run the plugin's SIMULATOR.

The docker target passes every image vLLM's command line (``--model PATH --served-model-name NAME
--host H --port P ...``). The simulator names its model with ``--model``, so the served name (or
the model path's last part) becomes ``--model``; ``--dtype`` (the docker target passes a built-in
model's) is dropped, since a simulator has no weights; every other argument goes to the simulator
as it is, and one it does not know makes it exit with a usage error, as vLLM would.
"""

from __future__ import annotations

import os
import sys


def simulator_argv(vllm_args: list[str]) -> list[str]:
    """The simulator's arguments for vLLM-style ones."""
    model: str | None = None
    served: str | None = None
    rest: list[str] = []
    args = iter(vllm_args)
    for arg in args:
        flag, _, inline = arg.partition("=")
        if flag in ("--model", "--served-model-name", "--dtype"):
            value = inline if inline else next(args, "")
            if flag == "--model":
                model = value
            elif flag == "--served-model-name":
                served = value
        else:
            rest.append(arg)
    name = served or (os.path.basename(model.rstrip("/")) if model else None)
    return (["--model", name] if name else []) + rest


if __name__ == "__main__":
    argv = [sys.executable, "-m", "pytest_gpuinfer.sim", *simulator_argv(sys.argv[1:])]
    print("gpuinfer sim image (a SIMULATOR, not a real engine):", " ".join(argv[3:]), flush=True)
    os.execv(sys.executable, argv)
