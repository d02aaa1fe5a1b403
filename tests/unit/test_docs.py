"""The README and docs/ match the code: links resolve, every variable and flag they name exists, every
setting, CLI option and metric is documented, and the README's examples parse (so the docs cannot drift)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main
from prometheus_client import Counter, Gauge, Histogram

from bertserve import metrics
from bertserve.cli import app
from bertserve.config import Settings
from tests.readme_examples import README, fill_mask_shape, readme_examples, top_labels

REPO = Path(__file__).parents[2]
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text() for page in PAGES)
API = (REPO / "docs" / "api.md").read_text()
OPERATIONS = (REPO / "docs" / "operations.md").read_text()

# BERTSERVE_* variables read outside Settings (bootstrap cache, ONNX cache, the test suite's tools and store).
NOT_SETTINGS = {
    "BERTSERVE_CACHE",
    "BERTSERVE_ONNX_CACHE",
    "BERTSERVE_TEST_STORE",
    "BERTSERVE_CI_TOOLS",
    "BERTSERVE_TORCH_BUILD",  # scripts/install-torch.sh
    "BERTSERVE_TORCH_CUDA",
}
VARIABLE = re.compile(r"\bBERTSERVE_[A-Z0-9_]*[A-Z0-9]\b")
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
CLI = typer.main.get_command(app)
NOT_DOCUMENTED_OPTIONS = {"--help", "--install-completion", "--show-completion"}


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (their `[x](y)` and `# comments` are not links or headings)."""
    return FENCED.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", prose(page.read_text()), re.MULTILINE)}


def broken_links(page: Path) -> list[str]:
    """Relative links of a page whose file, or whose heading anchor in a markdown file, does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        missing_anchor = anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)
        if not resolved.exists() or missing_anchor:
            broken.append(target)
    return broken


def unknown_variables(text: str) -> set[str]:
    settings = {f"BERTSERVE_{name.upper()}" for name in Settings.model_fields}
    return set(VARIABLE.findall(text)) - settings - NOT_SETTINGS


def options(command) -> set[str]:
    return {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}


def all_options(command=CLI) -> set[str]:
    found = {opt for opt in options(command) if opt.startswith("--")}
    for sub in getattr(command, "commands", {}).values():
        found |= all_options(sub)
    return found


def unknown_flags(text: str) -> list[str]:
    """Flags written in a `bertserve COMMAND ...` invocation that COMMAND does not take."""
    unknown = []
    for line in text.replace("\\\n", " ").splitlines():
        for start in re.finditer(r"(?<![\w-])bertserve (?=[a-z])", line):
            command, words = CLI, re.split(r"[`|#;&]", line[start.end() :])[0].split()
            while words and words[0] in getattr(command, "commands", {}):
                command = command.commands[words.pop(0)]
            if command is CLI:
                continue  # prose such as "bertserve answers" or "bertserve exec", not an invocation
            flags = [flag for word in words if (flag := FLAG.fullmatch(word.split("=")[0]))]
            unknown += [f"{command.name} {f[0]}" for f in flags if f[0] not in options(command)]
    return unknown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = broken_links(page)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section) [gone](nothere.md) [bad](other.md#no-such) [self](#top)\n# Top\n"
        "```\n[code](ignored.md)\n```\n[web](https://example.com/x)\n"
    )
    assert broken_links(page) == ["nothere.md", "other.md#no-such"]


def test_every_variable_named_in_the_docs_exists():
    unknown = unknown_variables(DOCS)
    assert not unknown, f"docs name variables the code does not read: {unknown}"
    assert unknown_variables("BERTSERVE_STORE and BERTSERVE_MAX_QEUE") == {"BERTSERVE_MAX_QEUE"}


def test_variables_outside_settings_are_read_by_the_code():
    code = "\n".join(
        path.read_text()
        for folder in ("bertserve", "scripts", "tests")
        for path in (REPO / folder).rglob("*")
        if path.suffix in (".py", ".sh") and path.name != "test_docs.py"
    )
    assert {name for name in NOT_SETTINGS if re.search(rf"\b{name}\b", code)} == NOT_SETTINGS


def test_every_flag_in_a_documented_command_exists():
    unknown = unknown_flags(DOCS)
    assert not unknown, f"docs use flags the CLI does not take: {unknown}"
    fake = "`bertserve store promote sentiment 3 --force --fast`\nbertserve serve --workers 2 \\\n  --turbo"
    assert unknown_flags(fake) == ["promote --fast", "serve --turbo"]


def test_every_cli_option_is_documented():
    named = set(FLAG.findall(DOCS))
    missing = sorted(all_options() - NOT_DOCUMENTED_OPTIONS - named)
    assert not missing, f"CLI options no page names: {missing}"


def test_the_configuration_table_has_every_setting_with_its_serve_flag():
    rows = dict(re.findall(r"^\| `(BERTSERVE_\w+)` \| (`--[\w-]+`|\(env only\)) \|", API, re.MULTILINE))
    serve = options(CLI.commands["serve"])
    for name in Settings.model_fields:
        variable, flag = f"BERTSERVE_{name.upper()}", "--" + name.replace("_", "-")
        assert variable in rows, f"docs/api.md configuration table lacks {variable}"
        expected = f"`{flag}`" if flag in serve else "(env only)"
        assert rows[variable] == expected, f"{variable}: the table says {rows[variable]}, not {expected}"


def test_every_metric_is_in_the_metrics_table():
    defined = [m for m in vars(metrics).values() if isinstance(m, Counter | Gauge | Histogram)]
    assert len(defined) >= 10
    names = [m._name + ("_total" if isinstance(m, Counter) else "") for m in defined]
    missing = [name for name in names if f"| `{name}` |" not in OPERATIONS]
    assert not missing, f"docs/operations.md metrics table lacks {missing}"


def test_the_readme_examples_parse():
    examples = readme_examples(README.read_text())
    classify = [e for e in examples if e.path == "/v1/classify"]
    fill_mask = [e for e in examples if e.path == "/v1/fill-mask"]
    assert sum(len(top_labels(e.answer)) for e in classify) >= 2
    for example in classify:
        inputs = example.body["inputs"]
        assert len(top_labels(example.answer)) == (len(inputs) if isinstance(inputs, list) else 1)
    for example in fill_mask:
        top_k, masks = example.body["top_k"], example.body["inputs"].count("[MASK]")
        assert fill_mask_shape(example.answer) == [[top_k] * masks]
    assert fill_mask and {e.answer["model"] for e in classify} == {"sentiment"}


def test_the_example_parser_refuses_what_it_cannot_read():
    call = '$ curl -s localhost:8000/v1/classify \\\n    -d \'{"inputs": "x"}\'\n'
    good = f'<!-- BEGIN examples -->\n```console\n{call}{{"predictions": []}}\n```\n<!-- END examples -->'
    assert readme_examples(good)[0].body == {"inputs": "x"}
    with pytest.raises(ValueError, match="not JSON"):
        readme_examples(good.replace('{"predictions": []}', '{"predictions": [...'))
    with pytest.raises(ValueError, match="no <!-- BEGIN examples -->"):
        readme_examples(call)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BERTSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("BERTSERVE_WORKERS", "2")
    settings = Settings()
    assert (settings.max_batch_size, settings.workers) == (7, 2)
    assert Settings(max_batch_size=3).max_batch_size == 3, (
        "explicit values (CLI flags) win over the environment"
    )
