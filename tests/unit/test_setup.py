"""What `make serve` installs: whatever the `auto` backend may pick, so that the backend a server chooses does
not depend on whether `make test` ran first in the same .venv."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).parents[2]


def recipe(target: str) -> str:
    """The recipe lines of a Makefile target (tab-indented lines after `target:`)."""
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"no target {target}"
    return match.group(1)


def test_make_serve_installs_every_backend_auto_can_pick():
    extras = re.findall(r"pip install -q -e '\.\[([\w,]+)\]'", recipe("$(BIN)/.serve-installed"))
    assert extras, "the serve environment installs the package with its extras"
    installed = set(extras[-1].split(","))
    assert {"train", "onnx"} <= installed, installed
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(name.startswith("onnxruntime") for name in optional["onnx"])
