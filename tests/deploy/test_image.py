"""The Dockerfile, checked without building (scripts/image-test.sh builds and
runs the image; it needs root and ~15 min, so it is not part of `make test`)."""

from __future__ import annotations

import re

from tests.deploy.tools import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions(stage: str) -> list[str]:
    """The instructions of one stage (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    start = next(
        i for i, line in enumerate(lines) if line.startswith("FROM") and line.endswith(f"AS {stage}")
    )
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM")), len(lines))
    return lines[start:end]


def test_torch_is_installed_first_in_the_build_torch_build_names():
    builder = instructions("builder")
    assert "ARG TORCH_BUILD=cpu" in builder and "ARG TORCH_CUDA=cu130" in builder  # the CPU image by default
    [install] = [line for line in builder if "scripts/install-torch.sh" in line and line.startswith("RUN")]
    # The script reads the pin from pyproject.toml (tests/deploy/test_install_torch.py shows what
    # TORCH_BUILD=cpu|cuda install), so both are copied in before it runs, and nothing else yet.
    assert install == (
        "RUN BERTSERVE_TORCH_BUILD=$TORCH_BUILD BERTSERVE_TORCH_CUDA=$TORCH_CUDA "
        "scripts/install-torch.sh pip ${TORCH_PIP_ARGS}"
    )
    copies_before = [line for line in builder[: builder.index(install)] if line.startswith("COPY")]
    assert copies_before == ["COPY pyproject.toml ./", "COPY scripts/install-torch.sh ./scripts/"]
    package = next(line for line in builder if line.startswith("RUN pip install '.[onnx]'"))
    assert builder.index(install) < builder.index(package)
    # The CPU image refuses nvidia-* wheels; the package install brings onnxruntime and imports it.
    assert 'if [ "$TORCH_BUILD" = cpu ] && pip list' in package and "grep -i '^nvidia-'" in package
    assert "import torch, onnxruntime, bertserve.cli" in package


def test_runtime_stage_is_non_root_with_one_port_and_a_healthcheck():
    assert "ARG BASE_IMAGE=python:3.11-slim" in DOCKERFILE.splitlines()
    runtime = instructions("runtime")
    assert runtime[0] == "FROM ${BASE_IMAGE} AS runtime"
    assert "USER 10001:10001" in runtime
    assert [line for line in runtime if line.startswith("EXPOSE")] == ["EXPOSE 8000"]
    [health] = [line for line in runtime if line.startswith("HEALTHCHECK")]
    assert "/health" in health and "urllib.request" in health
    assert 'ENTRYPOINT ["bertserve"]' in runtime and 'CMD ["serve"]' in runtime
    env = " ".join(line for line in runtime if line.startswith("ENV"))
    for setting in (
        "BERTSERVE_STORE=/models",
        "BERTSERVE_HOST=0.0.0.0",
        "BERTSERVE_PORT=8000",
        "TMPDIR=/tmp",
    ):
        assert setting in env
    # Only the venv and the store come in: no source tree, no build tools.
    copies = [line for line in runtime if line.startswith("COPY")]
    assert copies == [
        "COPY --from=builder /opt/venv /opt/venv",
        "COPY --from=models /models /models",
    ]


def test_model_store_is_baked_or_mounted():
    assert "ARG BOOTSTRAP=0" in DOCKERFILE.split("FROM")[0]  # global, so every stage can take it
    models = " ".join(instructions("models"))
    assert models.startswith("FROM builder AS models") and "ARG BOOTSTRAP" in models
    assert 'if [ "$BOOTSTRAP" = "1" ]; then' in models
    assert (
        "bertserve bootstrap --store /models" in models and "bertserve store verify --store /models" in models
    )


def test_dockerignore_keeps_the_context_small():
    patterns = (REPO / ".dockerignore").read_text().split()
    assert patterns[patterns.index("*") :][:1] == ["*"]  # allow-list: everything else is excluded
    included = {p[1:] for p in patterns if p.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "LICENSE", "bertserve/", "scripts/install-torch.sh"}
    copied = {
        source
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, flags=re.M)
        for source in line.split()[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "LICENSE", "bertserve", "scripts/install-torch.sh"}
