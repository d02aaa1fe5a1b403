"""The README's example calls, parsed from its text so that the tests and the README cannot drift apart.

The examples sit between `<!-- BEGIN examples -->` and `<!-- END examples -->` as a console transcript: a
`$ curl ... localhost:8000/PATH ... -d '<JSON body>'` line (backslash continuations allowed), then the JSON
answer the server gave, over as many lines as it needs. The own-model quickstart (`<!-- BEGIN own-model -->`)
is a `bertserve store import`, a `bertserve serve` and such a call; the tiny-store quick try
(`<!-- BEGIN tiny-store -->`) a `python scripts/make_tiny_store.py`, a `bertserve serve` and such a call."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"
CALL = re.compile(r"^\$ curl .*?localhost:\d+(?P<path>/[\w/-]+).*?-d '(?P<body>.*)'\s*$")


@dataclass(frozen=True)
class Example:
    path: str
    body: dict
    answer: dict


def transcript(text: str, name: str = "examples") -> list[tuple[str, list[str]]]:
    """(command, its output lines) for each `$ ` line between `<!-- BEGIN name -->` and `<!-- END name -->`;
    ValueError when the section is missing or output comes before any command."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    if begin not in text or end not in text:
        raise ValueError(f"no {begin} ... {end} section")
    section = text.split(begin, 1)[1].split(end, 1)[0]
    lines = [line for line in section.replace("\\\n", " ").splitlines() if not line.startswith("```")]
    calls: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            calls.append((line, []))
        elif line.strip() and calls:
            calls[-1][1].append(line.strip())
        elif line.strip():
            raise ValueError(f"output before any call: {line!r}")
    return calls


def readme_examples(text: str) -> list[Example]:
    """Every example call in the marked section, in order; ValueError when one cannot be read."""
    return [parse_call(call, output) for call, output in transcript(text)]


@dataclass(frozen=True)
class OwnModel:
    """The README's own-model quickstart: `bertserve` arguments of its import and serve commands, then the
    call that uses the model."""

    import_args: list[str]
    serve_args: list[str]
    call: Example


def _steps(text: str, name: str, programs: list[str]) -> list[tuple[str, list[str]]]:
    """The `name` section's transcript, which must run `programs` in that order."""
    calls = transcript(text, name)
    if [call.split()[1] for call, _ in calls] != programs:
        raise ValueError(f"expected {', '.join(programs)} in {name}: {[call for call, _ in calls]}")
    return calls


def own_model_steps(text: str) -> OwnModel:
    (imported, _), (serve, _), (call, output) = _steps(text, "own-model", ["bertserve", "bertserve", "curl"])
    import_args, serve_args = shlex.split(imported)[2:], shlex.split(serve)[2:]
    if import_args[:2] != ["store", "import"] or serve_args[:1] != ["serve"]:
        raise ValueError(f"not `bertserve store import` then `bertserve serve`: {imported!r}, {serve!r}")
    return OwnModel(import_args, serve_args, parse_call(call, output))


@dataclass(frozen=True)
class TinyStore:
    """The README's tiny-store quick try: the script's arguments and what it printed, the `bertserve`
    arguments of its serve command, then the call."""

    script_args: list[str]
    printed: list[str]
    serve_args: list[str]
    call: Example


def tiny_store_steps(text: str) -> TinyStore:
    steps = _steps(text, "tiny-store", ["python", "bertserve", "curl"])
    (script, printed), (serve, _), (call, output) = steps
    return TinyStore(shlex.split(script)[2:], printed, shlex.split(serve)[2:], parse_call(call, output))


def parse_call(call: str, output: list[str]) -> Example:
    match = CALL.match(call)
    if match is None:
        raise ValueError(f"not a `curl localhost:PORT/PATH -d '<json>'` call: {call!r}")
    try:
        return Example(match["path"], json.loads(match["body"]), json.loads("".join(output)))
    except json.JSONDecodeError as error:
        raise ValueError(f"{call!r}: body or printed answer is not JSON ({error})") from None


def top_labels(answer: dict) -> list[str]:
    """The best label of each classified input."""
    return [labels[0]["label"] for labels in answer["predictions"]]


def fill_mask_shape(answer: dict) -> list[list[int]]:
    """Candidates per mask per input: what a fill-mask answer's nesting promises."""
    return [[len(candidates) for candidates in masks] for masks in answer["predictions"]]


def import_as_printed(import_args: list[str], folder: Path, cwd: Path) -> None:
    """Run a printed `bertserve store import ./FOLDER ...` (its arguments after `bertserve`) on `folder`."""
    args = [str(folder) if arg.startswith("./") else arg for arg in import_args]
    done = subprocess.run(
        [sys.executable, "-m", "bertserve.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
