"""Finding the external tools the deploy tests drive (kubectl, promtool, prometheus, checkov, ...).

A tool that is genuinely missing skips its test with the command that installs it; under CI (CI set in the
environment), where scripts/install-ci-tools.sh has just run, a missing tool fails the test instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CI_TOOLS = Path(os.environ.get("BERTSERVE_CI_TOOLS", REPO / ".cache" / "ci-tools"))
INSTALL = "scripts/install-ci-tools.sh"


def missing(what: str) -> None:
    message = f"{what} is not installed: run {INSTALL}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI runs it before the tests, so this is a CI setup error)")
    pytest.skip(message)


def binary(name: str) -> str:
    """An executable on PATH (promtool, prometheus), else in the CI tools virtualenv (kubectl)."""
    found = shutil.which(name) or shutil.which(name, path=CI_TOOLS / "bin")
    if not found:
        missing(name)
    return found


def ci_tool(name: str) -> str:
    """An executable of the CI tools virtualenv (checkov, its python with kubernetes-validate)."""
    path = CI_TOOLS / "bin" / name
    if not path.exists():
        missing(f"{path}")
    return str(path)


def ci_python_with(module: str) -> str:
    python = ci_tool("python")
    import subprocess

    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    if probe.returncode != 0:
        missing(f"python module {module} in {CI_TOOLS}")
    return python
