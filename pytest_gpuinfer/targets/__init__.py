"""Server lifecycle: launch or attach, wait until ready, stop the whole process group."""

from .base import InferenceServer, TargetError
from .manager import TargetManager

__all__ = ["InferenceServer", "TargetError", "TargetManager"]
