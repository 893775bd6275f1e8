"""Workloads: what a load run sends, as objects registered by name.

* :class:`Synthetic` - exact-length prompts and outputs (the default);
* :class:`Prompts` - given prompt texts;
* :class:`Dataset` - rows of a ShareGPT, JSONL, OpenAI chat or Hugging Face (on disk) dataset,
  each with its own input and output length;
* :class:`Conversations` - multi-turn sessions with history and think time;
* :class:`Trace` - a Mooncake or Azure trace's lengths, prompts sharing prefixes by ``hash_ids``
  (replay its times with :class:`~pytest_gpuinfer.load.schedule.TraceTimes`);
* :class:`SharedPrefix` - requests sharing N system prompts (or not, for the control run);
* :class:`Embeddings` - batches of inputs for ``/v1/embeddings``.

Each is a small dataclass; :meth:`prepare` turns it into request specs once the target (its
tokenizer, its endpoint) is known. :func:`workload_from_text` builds one from the text form the
command line and the locustfile take, e.g. ``"dataset:path=chats.json,format=sharegpt"``.
"""

from __future__ import annotations

from typing import Any

from pytest_gpuinfer.load.workloads.base import (
    WORKLOADS,
    PreparedWorkload,
    Session,
    Turn,
    Workload,
    WorkloadContext,
)
from pytest_gpuinfer.load.workloads.conversations import Conversations
from pytest_gpuinfer.load.workloads.dataset import (
    DATASET_FORMATS,
    Dataset,
    DatasetError,
    DatasetRow,
    load_rows,
)
from pytest_gpuinfer.load.workloads.synthetic import Embeddings, Prompts, SharedPrefix, Synthetic
from pytest_gpuinfer.load.workloads.traces import (
    TRACE_FORMATS,
    Trace,
    TraceError,
    TraceFile,
    TraceRequest,
    load_trace,
)

__all__ = [
    "DATASET_FORMATS",
    "TRACE_FORMATS",
    "WORKLOADS",
    "Conversations",
    "Dataset",
    "DatasetError",
    "DatasetRow",
    "Embeddings",
    "PreparedWorkload",
    "Prompts",
    "Session",
    "SharedPrefix",
    "Synthetic",
    "Trace",
    "TraceError",
    "TraceFile",
    "TraceRequest",
    "Turn",
    "Workload",
    "WorkloadContext",
    "load_rows",
    "load_trace",
    "workload_from_text",
]


def workload_from_text(text: str) -> Any:
    """A registered workload from ``"name:key=value,..."``, e.g. ``"synthetic:output_tokens=8"``."""
    return WORKLOADS.from_text(text)
