"""The README and docs/ match the code: links resolve, every variable and flag they name exists, every
setting (with its default), CLI option, metric and error code is documented, the sizing table is what the
code picks, each measured quantity is stated on one page only, no page speaks of "this VM" or "here", and the
README's examples parse (so the docs cannot drift)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from prometheus_client import Counter, Gauge, Histogram

from bertserve import metrics
from bertserve.cli import app
from bertserve.config import Settings, shown_default
from bertserve.errors import STATUS_CODES
from bertserve.runtime.device import pick_sizing
from tests.readme_examples import README, fill_mask_shape, own_model_steps, readme_examples, top_labels

REPO = Path(__file__).parents[2]
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text() for page in PAGES)
API = (REPO / "docs" / "api.md").read_text()
CONFIGURATION = (REPO / "docs" / "configuration.md").read_text()
PERFORMANCE = REPO / "docs" / "performance.md"
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


def test_the_configuration_table_has_every_setting_with_its_serve_flag_and_default():
    rows = {
        variable: (flag, default)
        for variable, flag, default in re.findall(
            r"^\| `(BERTSERVE_\w+)` \| (`--[\w-]+`|\(env only\)) \| ([^|]+) \|", CONFIGURATION, re.MULTILINE
        )
    }
    serve = options(CLI.commands["serve"])
    for name, field in Settings.model_fields.items():
        variable, flag = f"BERTSERVE_{name.upper()}", "--" + name.replace("_", "-")
        assert variable in rows, f"docs/configuration.md lacks {variable}"
        expected = f"`{flag}`" if flag in serve else "(env only)"
        assert rows[variable][0] == expected, (
            f"{variable}: the table says {rows[variable][0]}, not {expected}"
        )
        written = re.match(r"`([^`]*)`|(\S+)", rows[variable][1].strip())
        default = written[1] if written[1] is not None else written[2]
        assert default == shown_default(field.default), f"{variable}: documented default {default}"


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


# ------------------------------------------------------------------------------------- sizing, error codes


def sizing_rows() -> list[list[str]]:
    """The rows of performance.md's table of what the sizing gives with the default store."""
    text = prose(PERFORMANCE.read_text())
    header = "| CPUs | GPUs | slots per device | inference processes in all |"
    assert header in text, "docs/performance.md lost its sizing examples table"
    table = text.split(header, 1)[1].split("\n\n", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_the_sizing_table_is_what_the_code_picks():
    """Every row: the defaults pick_sizing gives; each slot is one inference process hosting every task."""
    rows = sizing_rows()
    assert len(rows) >= 4
    for cpus, gpus, per_endpoint, total, threads, http, batch in rows:
        sizing = pick_sizing(int(cpus), int(gpus))
        workers = sizing.workers * max(1, int(gpus))
        expected = [
            str(sizing.workers),
            str(workers),
            str(sizing.torch_threads),
            str(sizing.api_servers or workers),
            f"{sizing.max_batch_size} / {sizing.max_batch_tokens}",
        ]
        assert [per_endpoint, total, threads, http, batch] == expected, f"{cpus} CPUs, {gpus} GPUs"


def error_codes() -> set[str]:
    """Every error `code` the service can send: the literals of its ClientError / error_body / error_response
    calls, and the status-code defaults."""
    found = set(STATUS_CODES.values())
    for path in (REPO / "bertserve").rglob("*.py"):
        source = path.read_text()
        found |= set(
            re.findall(r'ClientError\(\s*\d{3},[^()]*?(?:\([^()]*\)[^()]*?)*,\s*"([a-z_]+)",?\s*\)', source)
        )
        found |= set(re.findall(r'error_body\(\s*"([a-z_]+)"', source))
        found |= set(
            re.findall(r'error_response\(\s*\d{3},[^()]*?(?:\([^()]*\)[^()]*?)*,\s*"([a-z_]+)"', source)
        )
    return found


def test_every_error_code_is_in_the_api_table():
    codes = error_codes()
    assert {"unknown_model", "no_mask_token", "worker_lost", "internal_error", "invalid_request"} <= codes
    missing = sorted(
        code for code in codes if not re.search(rf"^\| \d{{3}} \| `{code}` \|", API, re.MULTILINE)
    )
    assert not missing, f"docs/api.md's error table lacks {missing}"


# ------------------------------------------------------------------------------- one source per number

# The README, every page, and the comments of the files people read next to them.
SOURCES = [*PAGES, REPO / "Dockerfile", REPO / "Makefile", *sorted((REPO / "k8s").rglob("*.yaml"))]
NUMBER = r"~?\d+(?:\.\d+)?(?:\s*-\s*\d+(?:\.\d+)?)?"
WITHIN = r"[^.;|]{0,100}?"  # the same sentence or table cell


@dataclass(frozen=True)
class Quantity:
    """A measured quantity, where it is stated (`home`: page#anchor), and how a statement of it reads."""

    name: str
    home: str
    statement: re.Pattern
    not_it: re.Pattern = re.compile(r"$^")  # matches that are about something else


QUANTITIES = [
    Quantity(
        "bootstrap time",
        "docs/models-and-training.md#bootstrap-time",
        re.compile(
            rf"bootstrap{WITHIN}{NUMBER}\s*(?:min|minutes?|h|hours?)\b|{NUMBER}\s*(?:min|minutes)\b{WITHIN}bootstrap",
            re.IGNORECASE,
        ),
    ),
    Quantity(
        "start-up time",
        "docs/performance.md#start-up",
        re.compile(
            rf"(?:start-up|startup|starts? (?:in|within)|to /health 200|load\w* (?:and|\+) warm\w*){WITHIN}"
            rf"{NUMBER}\s*(?:s|seconds)\b|{NUMBER}\s*(?:s|seconds)\b{WITHIN}(?:start-up|startup)",
            re.IGNORECASE,
        ),
    ),
    Quantity(
        "memory",
        "docs/performance.md#memory",
        re.compile(
            rf"(?:RSS|memory|resident){WITHIN}{NUMBER}\s*(?:GB|MB|GiB|MiB)\b|{NUMBER}\s*(?:GB|MB|GiB|MiB)\b"
            rf"{WITHIN}(?:RSS|of memory|resident)",
            re.IGNORECASE,
        ),
        re.compile(r"growth|bound|disk|storage", re.IGNORECASE),
    ),
    Quantity(
        "process counts",
        "docs/performance.md#how-to-size",
        re.compile(
            r"\b(?:\d+|two|three|four|five|six|seven|eight|nine|ten|twelve|thirteen|sixteen|twenty-five)\s+"
            r"(?:HTTP (?:server )?processes|inference (?:workers|processes)|workers per endpoint)\b",
            re.IGNORECASE,
        ),
    ),
    Quantity(
        "masked-LM top-5",
        "docs/models-and-training.md#the-default-models",
        re.compile(rf"top[- ]5{WITHIN}{NUMBER}\b", re.IGNORECASE),
    ),
    Quantity(
        "test durations",
        "docs/development.md#how-long-the-tests-take",
        re.compile(
            rf"(?:\btests?\b|pytest|image-test|install-ci-tools){WITHIN}{NUMBER}\s*(?:s|seconds|min|minutes)\b"
            rf"|(?:passed|failed) in {NUMBER}\s*s",
            re.IGNORECASE,
        ),
    ),
]


def blocks(text: str, markdown: bool) -> Iterator[tuple[str, str]]:
    """(anchor of the section, text) for each paragraph, table row and code line; sentences may wrap."""
    anchor, paragraph, fenced = "", [], False
    for line in [*text.splitlines(), ""]:
        if markdown and line.startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"#{1,6} (.+)$", line) if markdown and not fenced else None
        single = fenced or line.lstrip().startswith("|") or line.lstrip().startswith("$ ")
        if heading or single or not line.strip():
            if paragraph:
                yield anchor, " ".join(paragraph)
            paragraph = []
        if heading:
            anchor = slug(heading[1])
        elif single:
            yield anchor, line
        elif line.strip():
            paragraph.append(line.strip().lstrip("#").strip())
    return


def misplaced_numbers(sources: dict[str, str]) -> list[str]:
    """Statements of a measured quantity outside its home section: `sources` maps a path relative to the
    repository to its text."""
    found = []
    for path, text in sources.items():
        for anchor, block in blocks(text, path.endswith(".md")):
            for quantity in QUANTITIES:
                if f"{path}#{anchor}" == quantity.home:
                    continue
                for match in quantity.statement.finditer(block):
                    if not quantity.not_it.search(match[0]):
                        found.append(f"{path}#{anchor}: {quantity.name} {match[0]!r} (link {quantity.home})")
    return found


def test_each_measured_quantity_is_stated_on_one_page_only():
    """Bootstrap and start-up times, memory, process counts and test durations live in one table each;
    every other page links there, so two pages cannot give two values."""
    sources = {str(path.relative_to(REPO)): path.read_text() for path in SOURCES}
    assert not misplaced_numbers(sources), "\n".join(misplaced_numbers(sources))
    for quantity in QUANTITIES:
        page, anchor = quantity.home.split("#")
        assert anchor in anchors(REPO / page), f"{quantity.home} does not exist"


def test_the_number_check_finds_a_quantity_stated_twice():
    home = "## Bootstrap time\n\n| CPU | time |\n| --- | --- |\n| 2 cores | bootstrap in 13 min |\n"
    pages = {
        "docs/models-and-training.md": home,
        "README.md": "It builds the models (the bootstrap takes about 15 minutes on 2 cores).\n",
        "Dockerfile": "# BOOTSTRAP=1: run the bootstrap at build time (~15 min)\n",
        "docs/performance.md": "The masked LM finds the word in its top 5 (top-5 0.485) on held-out text.\n",
        "docs/deploy.md": "A pod runs\nfour HTTP processes and starts in 4.7-7.3 s.\n\n"
        "```\n48 passed in 89.88s\n```\nIts RSS growth stayed under 64 MB; a worker holds 0.5 GB of RSS.\n",
    }
    found = misplaced_numbers(pages)
    assert [line.split(": ")[1].split(" '")[0] for line in found] == [
        "bootstrap time",
        "bootstrap time",
        "masked-LM top-5",
        "start-up time",
        "process counts",
        "test durations",
        "memory",
    ], found
    assert not misplaced_numbers({"docs/models-and-training.md": home})


def test_no_page_speaks_of_this_vm_or_here():
    """A measurement names its hardware; "here" means nothing to a reader on another machine."""
    vague = re.compile(r"\bthis (?:VM|machine)\b|\bdevelopment (?:machine|VM)\b|\bhere\b", re.IGNORECASE)
    found = [
        f"{page.name}: {match[0]!r} in {line.strip()[:80]!r}"
        for page in PAGES
        for line in prose(page.read_text()).splitlines()
        for match in vague.finditer(line)
    ]
    assert not found, "\n".join(found)


def test_the_own_model_quickstart_parses():
    steps = own_model_steps(README.read_text())
    assert steps.import_args[:2] == ["store", "import"] and steps.serve_args[0] == "serve"
    assert any(arg.startswith("--default-") for arg in steps.serve_args), "serve names the default model"
    assert steps.call.path == "/v1/classify" and "bootstrap" not in " ".join(steps.import_args)


MACHINES_HOME = "docs/performance.md#machines"


def defined_machines() -> set[str]:
    """The names of the machines table in performance.md: the one place a measured machine is described."""
    text = prose(PERFORMANCE.read_text()).split("## Machines", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| \*\*([\w-]+)\*\* \|", text, re.MULTILINE))


def unnamed_machines(sources: dict[str, str], names: set[str]) -> list[str]:
    """EPYC machines written other than by a defined name, outside the machines table: two different VMs
    were once both "2-core AMD EPYC VM"."""
    found = []
    for path, text in sources.items():
        for anchor, block in blocks(text, path.endswith(".md")):
            if f"{path}#{anchor}" == MACHINES_HOME:
                continue
            found += [
                f"{path}#{anchor}: {m[0]!r}"
                for m in re.finditer(r"\bEPYC(?:-[A-Za-z0-9]+)?\b", block)
                if m[0] not in names
            ]
    return found


def test_each_machine_goes_by_its_defined_name():
    names = defined_machines()
    assert {"EPYC-512", "EPYC-AVX2", "H200"} <= names
    sources = {
        str(path.relative_to(REPO)): re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", path.read_text())
        for path in PAGES
    }
    assert not unnamed_machines(sources, names), "\n".join(unnamed_machines(sources, names))


def test_the_machine_check_finds_a_described_machine_and_an_undefined_name():
    pages = {"docs/api.md": "Measured on a 2-core AMD EPYC VM.\n\nOn EPYC-512 and EPYC-9 too.\n"}
    assert unnamed_machines(pages, {"EPYC-512"}) == ["docs/api.md#: 'EPYC'", "docs/api.md#: 'EPYC-9'"]
