"""Server lifecycle: launch or attach, wait until ready, stop the whole process group."""

from pytest_gpuinfer.targets.base import InferenceServer, TargetError
from pytest_gpuinfer.targets.manager import TargetManager

__all__ = ["InferenceServer", "TargetError", "TargetManager"]
