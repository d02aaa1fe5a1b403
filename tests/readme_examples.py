"""The README's example calls, parsed from its text so that the tests and the README cannot drift apart.

The examples sit between `<!-- BEGIN examples -->` and `<!-- END examples -->` as a console transcript: a
`$ curl ... localhost:8000/PATH ... -d '<JSON body>'` line (backslash continuations allowed), then the JSON
answer the server gave, over as many lines as it needs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"
BEGIN, END = "<!-- BEGIN examples -->", "<!-- END examples -->"
CALL = re.compile(r"^\$ curl .*?localhost:\d+(?P<path>/[\w/-]+).*?-d '(?P<body>.*)'\s*$")


@dataclass(frozen=True)
class Example:
    path: str
    body: dict
    answer: dict


def readme_examples(text: str) -> list[Example]:
    """Every example call in the marked section, in order; ValueError when one cannot be read."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"no {BEGIN} ... {END} section")
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = [line for line in section.replace("\\\n", " ").splitlines() if not line.startswith("```")]
    calls: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            calls.append((line, []))
        elif line.strip() and calls:
            calls[-1][1].append(line.strip())
        elif line.strip():
            raise ValueError(f"output before any call: {line!r}")
    return [_example(call, output) for call, output in calls]


def _example(call: str, output: list[str]) -> Example:
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
