"""English prose that every Python installation ships: the standard library's docstrings and help topics.

A fresh, offline machine has no text corpus to download, but CPython carries megabytes of edited English
prose. Mixed with the review texts it gives the masked-LM both general and domain language."""

from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path

_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=~*]{4,}|[A-Za-z_.]+\(.*\)\s*$)")


def _prose(text: str, min_chars: int) -> list[str]:
    """Paragraphs of running text: doctest lines, rulers and signature lines are dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if not _CODE_LINE.match(line)]
        paragraph = " ".join(" ".join(lines).split())
        letters = sum(ch.isalpha() or ch == " " for ch in paragraph)
        if len(paragraph) >= min_chars and letters >= 0.85 * len(paragraph):
            out.append(paragraph)
    return out


def stdlib_passages(max_chars: int = 2_000_000, min_chars: int = 120) -> list[str]:
    """Docstring and pydoc-topic paragraphs, in a stable order, up to `max_chars` in total."""
    passages: list[str] = []
    try:
        from pydoc_data.topics import topics

        for key in sorted(topics):
            passages.extend(_prose(topics[key], min_chars))
    except ImportError:  # some distributions strip pydoc_data
        pass
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if any(part in {"test", "tests", "idle_test", "site-packages", "lib2to3"} for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    passages.extend(_prose(doc, min_chars))
    kept, total = [], 0
    for passage in dict.fromkeys(passages):  # de-duplicated, order kept
        if total + len(passage) > max_chars:
            break
        kept.append(passage)
        total += len(passage)
    return kept
