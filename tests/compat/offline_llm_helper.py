"""Run vLLM's offline engine (vllm.LLM) in its own process and write greedy token ids as JSON.

Used by test_offline_engine.py in a subprocess, so the engine's worker processes and memory never
live inside pytest. Usage: ``python offline_llm_helper.py REQUEST.json RESULT.json``. The request
holds ``model``, ``prompts``, ``max_tokens``, ``max_model_len`` and optional ``engine_kwargs``
(extra ``vllm.LLM`` arguments); the result holds ``token_ids`` (one list per prompt), ``texts``,
``dtype``, ``max_model_len`` and timings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    """Load the model with vllm.LLM, generate at temperature 0, write the result file."""
    request: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text())
    started = time.monotonic()
    from vllm import LLM, SamplingParams

    kwargs: dict[str, Any] = {
        "model": request["model"],
        "max_model_len": int(request["max_model_len"]),
        "seed": 0,
    }
    kwargs.update(request.get("engine_kwargs") or {})
    llm = LLM(**kwargs)
    loaded = time.monotonic()
    params = SamplingParams(temperature=0.0, max_tokens=int(request["max_tokens"]))
    outputs = llm.generate(list(request["prompts"]), params, use_tqdm=False)
    generated = time.monotonic()
    model_config = llm.llm_engine.model_config
    result = {
        "token_ids": [list(out.outputs[0].token_ids) for out in outputs],
        "texts": [out.outputs[0].text for out in outputs],
        "prompt_token_ids": [list(out.prompt_token_ids or []) for out in outputs],
        "dtype": str(model_config.dtype).removeprefix("torch."),
        "max_model_len": int(model_config.max_model_len),
        "load_s": loaded - started,
        "generate_s": generated - loaded,
    }
    Path(sys.argv[2]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
