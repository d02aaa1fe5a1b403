# bertserve container image: CPU-only torch, non-root, one port, HEALTHCHECK on /health.
#
#   docker build -t bertserve:0.1.0 .                      # store mounted at run time on /models
#   docker build --build-arg BOOTSTRAP=1 -t bertserve:0.1.0-models .   # default store baked into /models
#   docker run -p 8000:8000 -v "$PWD/model_store:/models:ro" --read-only --tmpfs /tmp bertserve:0.1.0
#
# Build arguments:
#   BASE_IMAGE      any Debian-like image with python3.11 + venv (python:3.11-slim by default; scripts/image-test.sh
#                   passes a Debian bookworm base it builds locally with debootstrap).
#   BOOTSTRAP       0: /models is empty, mount a store there (Kubernetes: read-only PVC, see k8s/overlays/prod).
#                   1: run `bertserve bootstrap` at build time (~15 min on 2 cores, needs PyPI) and bake the
#                   default models (sentiment + mlm) into /models.
#   TORCH_VERSION   2.13.0+cpu: the "+cpu" local version exists only as PyTorch's CPU-only build, so no
#                   index can hand over the multi-GB CUDA build that a plain `pip install torch` gets from PyPI.
#   TORCH_PIP_ARGS  where that wheel comes from: PyTorch's CPU index (which also serves torch's dependencies)
#                   by default; scripts/image-test.sh passes "--find-links /wheels" with a build volume holding
#                   a local copy of the wheel (dependencies then come from PyPI).
#   PIP_INDEX_URL, PIP_CERT   optional, for builds behind a package mirror or a TLS-intercepting proxy
#                   (build stages only; nothing of them reaches the runtime image).
ARG BASE_IMAGE=python:3.11-slim
ARG BOOTSTRAP=0

# ---------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0+cpu
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && pip install --upgrade pip
# torch first, pinned, CPU only; then refuse an image that somehow got a CUDA build or nvidia-* wheels.
RUN pip install ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}" \
 && python -c "import sys, torch; sys.exit(f'CUDA torch {torch.__version__}' if torch.version.cuda else 0)"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bertserve ./bertserve
RUN pip install . \
 && if pip list 2>/dev/null | grep -i '^nvidia-'; then echo 'nvidia wheels were pulled in' >&2; exit 1; fi \
 && python -c "import torch, bertserve.cli; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
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
# Model loading + warm-up takes ~10-20 s with the default MiniLM models; the start period covers it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BERTSERVE_PORT', '8000') + '/health', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["bertserve"]
CMD ["serve"]
