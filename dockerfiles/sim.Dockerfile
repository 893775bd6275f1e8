# The plugin's simulator (NOT a real engine) behind vLLM's command line, for fast lifecycle tests
# of the docker target. BASE is the root filesystem that build-images.sh imports.
ARG BASE=gpuinfer/base:local
FROM ${BASE}
COPY sim-entrypoint.py /opt/gpuinfer/sim-entrypoint.py
LABEL io.gpuinfer.image="simulator" io.gpuinfer.simulator="true"
EXPOSE 8000
ENTRYPOINT ["python", "/opt/gpuinfer/sim-entrypoint.py"]
