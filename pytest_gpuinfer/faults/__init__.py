"""Faults between the suites and the server: a fault-injecting proxy process and its scenarios."""

from pytest_gpuinfer.faults.control import FaultProxy, FaultProxyError
from pytest_gpuinfer.faults.scenario import FAULT_PARAMETERS, Fault, FaultSpecError

__all__ = ["FAULT_PARAMETERS", "Fault", "FaultProxy", "FaultProxyError", "FaultSpecError"]
