# bertserve container image: non-root, one port, HEALTHCHECK on /health. CPU torch by default; TORCH_BUILD=cuda
# makes the CUDA variant.
#
#   docker build -t bertserve:0.1.0 .                      # store mounted at run time on /models
#   docker build --build-arg BOOTSTRAP=1 -t bertserve:0.1.0-models .   # default store baked into /models
#   docker build --build-arg TORCH_BUILD=cuda -t bertserve:0.1.0-cuda .  # CUDA torch (k8s/overlays/gpu)
#   docker run -p 8000:8000 -v "$PWD/model_store:/models:ro" --read-only --tmpfs /tmp bertserve:0.1.0
#   docker run --gpus 1 -e BERTSERVE_DEVICE=cuda -p 8000:8000 -v "$PWD/model_store:/models:ro" \
#     --read-only --tmpfs /tmp bertserve:0.1.0-cuda
#
# Build arguments:
#   BASE_IMAGE      any Debian-like image with python3.11 + venv (python:3.11-slim by default; scripts/image-test.sh
#                   passes a Debian bookworm base it builds locally with debootstrap).
#   BOOTSTRAP       0: /models is empty, mount a store there (Kubernetes: read-only PVC, see k8s/overlays/prod).
#                   1: run `bertserve bootstrap` at build time (it takes docs/models-and-training.md#bootstrap-time;
#                   needs PyPI) and bake the default models (sentiment, mlm, minilm) into /models.
#   TORCH_BUILD     cpu (default): torch==<pyproject's pin>+cpu, PyTorch's CPU-only build: the image stays
#                   small (~1.4 GB) and the build fails if a CUDA torch or any nvidia-* wheel gets in.
#                   cuda: torch==<pin>+cu130 with its nvidia-* wheels (several GB). The host needs only the
#                   NVIDIA driver (>= 580) and container toolkit: the CUDA libraries come in the wheels, so
#                   the base image stays the same. Both are installed by scripts/install-torch.sh.
#   TORCH_CUDA      the CUDA build's index tag (cu130).
#   TORCH_PIP_ARGS  more pip arguments for the torch install: scripts/image-test.sh passes
#                   "--find-links /wheels" with a build volume holding a local copy of the CPU wheel.
#   PIP_INDEX_URL, PIP_CERT   optional, for builds behind a package mirror or a TLS-intercepting proxy
#                   (build stages only; nothing of them reaches the runtime image).
# The image has onnxruntime (the `onnx` extra): BERTSERVE_BACKEND=onnx / onnx-int8 work in it, and `auto`
# may pick onnx (docs/performance.md). Exported graphs are cached under $HOME=/tmp.
ARG BASE_IMAGE=python:3.11-slim
ARG BOOTSTRAP=0

# ---------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG TORCH_BUILD=cpu
ARG TORCH_CUDA=cu130
ARG TORCH_PIP_ARGS=""
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --upgrade pip
WORKDIR /src
# torch first, alone, in the build TORCH_BUILD names (the script checks what it installed).
COPY pyproject.toml ./
COPY scripts/install-torch.sh ./scripts/
RUN BERTSERVE_TORCH_BUILD=$TORCH_BUILD BERTSERVE_TORCH_CUDA=$TORCH_CUDA scripts/install-torch.sh pip ${TORCH_PIP_ARGS}
COPY README.md LICENSE ./
COPY bertserve ./bertserve
RUN pip install '.[onnx]' \
 && if [ "$TORCH_BUILD" = cpu ] && pip list 2>/dev/null | grep -i '^nvidia-'; then \
      echo 'nvidia wheels were pulled into the CPU image' >&2; exit 1; \
    fi \
 && python -c "import torch, onnxruntime, bertserve.cli; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'onnxruntime', onnxruntime.__version__)" \
 && bertserve --help > /dev/null

# ---------------------------------------------------------------------------------------------------------
# The model store: an empty /models (BOOTSTRAP=0: mount one there) or the default models trained here
# (BOOTSTRAP=1). One stage with a condition rather than two stages picked by FROM models-${BOOTSTRAP}: the
# latter is not resolved reliably by every builder (buildah 1.28 skips the stage it cannot see is used).
FROM builder AS models
ARG BOOTSTRAP
ARG PIP_INDEX_URL
ARG PIP_CERT
RUN mkdir -p /models \
 && if [ "$BOOTSTRAP" = "1" ]; then \
      pip install '.[train]' \
      && bertserve bootstrap --store /models \
      && bertserve store verify --store /models; \
    fi \
 && ls -lA /models

# ---------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --gid 10001 bertserve \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin bertserve
COPY --from=builder /opt/venv /opt/venv
# Root-owned and not writable by the service user: the store is read-only at run time (aliases are moved by
# `bertserve store` run elsewhere, e.g. the admin pod on the PVC).
COPY --from=models /models /models

# Threads: BERTSERVE_TORCH_THREADS=0 means auto: the CPUs the process may run on, capped by the cgroup CPU
# quota (`docker run --cpus 2`, a Kubernetes CPU limit), divided among the workers (bertserve/config.py).
# Tokenizers' own thread pool is off: batches are already parallel inside torch, and forked workers must
# not share a rayon pool.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    BERTSERVE_STORE=/models \
    BERTSERVE_HOST=0.0.0.0 \
    BERTSERVE_PORT=8000 \
    BERTSERVE_TORCH_THREADS=0

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# The start period covers model loading and warm-up (docs/performance.md#start-up), with room for bigger models.
# Docker only reports the status; in Kubernetes, /health is the readiness probe and /live the liveness probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BERTSERVE_PORT', '8000') + '/health', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["bertserve"]
CMD ["serve"]
