#!/usr/bin/env bash
# Install the torch build that fits this machine into a virtualenv, before the package itself, and say which.
#
#   scripts/install-torch.sh [--dry-run] PIP [PIP_ARGS...]      e.g. scripts/install-torch.sh .venv/bin/pip
#
# Why: on Linux x86_64 a plain `pip install torch` from PyPI is the CUDA build, which pulls ~3 GB of nvidia-*
# wheels even on a machine without a GPU. So the version pinned in pyproject.toml is installed with the
# build's local label (torch==X+cpu, torch==X+cu130), which only PyTorch's own index for that build has:
#   - no NVIDIA GPU (Linux): the CPU build, from https://download.pytorch.org/whl/cpu;
#   - an NVIDIA GPU (nvidia-smi lists one, or the driver's /proc/driver/nvidia/gpus has one): the CUDA build
#     from https://download.pytorch.org/whl/$BERTSERVE_TORCH_CUDA (default cu130, which needs an NVIDIA
#     driver >= 580; PyPI's own torch wheel for this version is the same CUDA 13.0 build);
#   - not Linux (macOS): PyPI's torch, a CPU build there (bertserve itself assumes Linux, see docs/development.md).
# PyPI stays the index for torch's dependencies. A wheelhouse or mirror set in pip's configuration
# (find-links, index-url) that holds the labelled wheel is used when PyTorch's index cannot be reached.
#
# Environment:
#   BERTSERVE_TORCH_BUILD   auto (default) | cpu | cuda: force a build, e.g. cuda for an image built on a
#                           machine without a GPU.
#   BERTSERVE_TORCH_CUDA    the CUDA index tag of the cuda build (default cu130).
# --dry-run prints the choice and the pip command without running it (tests/deploy/test_install_torch.py).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

dry_run=0
if [[ ${1:-} == --dry-run ]]; then dry_run=1 && shift; fi
if (($# < 1)); then
  echo "usage: $0 [--dry-run] PIP [PIP_ARGS...]" >&2
  exit 2
fi
pip=$1 && shift

version=$(sed -n 's/^ *"torch==\([0-9][0-9.]*\)".*/\1/p' "$REPO/pyproject.toml")
[[ -n $version ]] || { echo "install-torch: no \"torch==X\" pin in pyproject.toml" >&2; exit 1; }
cuda_tag=${BERTSERVE_TORCH_CUDA:-cu130}

nvidia_gpu() {  # prints what it found; fails when there is no NVIDIA GPU
  local listed
  if command -v nvidia-smi > /dev/null && listed=$(nvidia-smi -L 2> /dev/null) && [[ $listed == GPU* ]]; then
    echo "${listed%%$'\n'*}"
  elif compgen -G '/proc/driver/nvidia/gpus/*' > /dev/null; then
    echo "NVIDIA driver with GPUs in /proc/driver/nvidia/gpus"
  else
    return 1
  fi
}

build=${BERTSERVE_TORCH_BUILD:-auto}
case $build in
  auto)
    if [[ $(uname -s) != Linux ]]; then
      build=pypi reason="$(uname -s), not Linux: PyPI's torch is a CPU build here"
    elif found=$(nvidia_gpu); then
      build=cuda reason="NVIDIA GPU found: $found"
    else
      build=cpu reason="no NVIDIA GPU: nvidia-smi lists none, /proc/driver/nvidia/gpus is empty"
    fi
    ;;
  cpu | cuda) reason="BERTSERVE_TORCH_BUILD=$build" ;;
  *)
    echo "install-torch: BERTSERVE_TORCH_BUILD must be auto, cpu or cuda, not '$build'" >&2
    exit 2
    ;;
esac

case $build in
  cpu) label=cpu ;;
  cuda) label=$cuda_tag ;;
  pypi) label= ;;
esac
requirement="torch==$version${label:++$label}"
index=${label:+https://download.pytorch.org/whl/$label}
echo "install-torch: $requirement ($reason)"

python=$(dirname "$(command -v "$pip" || echo "$pip")")/python
# pip would retry an unreachable index for torch and for each of its dependencies, minutes in all: ask once.
if [[ -n $index ]] && ((!dry_run)) && ! "$python" - "$index/torch/" 2> /dev/null << 'PY'; then
import os, ssl, sys, urllib.request

context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
urllib.request.urlopen(sys.argv[1], timeout=15, context=context)
PY
  echo "install-torch: $index cannot be reached: $requirement from pip's configured sources instead"
  index=
fi
command=("$pip" install -q ${index:+--extra-index-url "$index"} "$@" "$requirement")
echo "install-torch: ${command[*]}"
((dry_run)) && exit 0
"${command[@]}"

# What got installed, from the same environment: a CPU build must not carry CUDA, a CUDA build must.
"$python" -W ignore - "$build" << 'PY'  # (torch warns when numpy is not installed yet)
import sys

import torch

build, cuda = sys.argv[1], torch.version.cuda
print(f"install-torch: installed torch {torch.__version__}, CUDA {cuda}")
if (build == "cuda") != (cuda is not None):
    sys.exit(f"install-torch: wanted the {build} build, got torch {torch.__version__} (CUDA {cuda})")
PY
