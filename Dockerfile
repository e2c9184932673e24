# syntax=docker/dockerfile:1
# Token Economy Exporter: the sidecar image.
#
#   docker build -t token-economy-exporter:0.1.0 .
#   docker run --rm -p 9477:9477 --read-only --cap-drop ALL --security-opt no-new-privileges \
#     token-economy-exporter:0.1.0 run --vllm-url http://vllm:8000
#
# Runs as a numeric non-root user, needs no shell at run time (exec-form ENTRYPOINT, CMD and
# HEALTHCHECK) and writes nothing, so a read-only root filesystem works: bytecode is compiled at
# build time and never written at run time. NVML (libnvidia-ml.so.1) comes from the NVIDIA
# container runtime, which injects it when the container sets NVIDIA_VISIBLE_DEVICES (the
# Kubernetes manifests do; see deploy/kubernetes/README.md). Without it the exporter runs on its
# declared phase-power model and says so.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN /opt/venv/bin/pip install --no-compile . \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib \
 && /opt/venv/bin/pip uninstall -y pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="token-economy-exporter" \
      org.opencontainers.image.description="Prometheus sidecar that attributes vLLM GPU energy and cost to input tokens, output tokens and idle" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=utility \
    TOKEN_ECONOMY_LISTEN_ADDRESS=0.0.0.0:9477 \
    TOKEN_ECONOMY_LOG_FORMAT=json
# 65532: no account in the base image owns it, and no file in the image needs it to.
USER 65532:65532
EXPOSE 9477
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import os, sys, urllib.request; port = os.environ.get('TOKEN_ECONOMY_LISTEN_ADDRESS', '0.0.0.0:9477').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=3).status == 200 else 1)"]
ENTRYPOINT ["/opt/venv/bin/python", "-m", "exporter"]
CMD ["run"]
