"""`bertserve COMMAND --help` says what every option does and its default: serve's options as Settings
declares them (description, default, variable), every other command's as typer shows them, and the
bootstrap's help every model it builds. The help is read as printed: rich drops a bracket it takes for
markup, so checking the option objects alone would pass a help the reader never sees."""

from __future__ import annotations

import re

import typer
import typer.main
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from bertserve.cli import app
from bertserve.config import Settings, env_only, shown_default
from bertserve.training.default_store import BUILDS

TYPER_OWN = {"--help", "--install-completion", "--show-completion"}


def printed_help(target: typer.Typer, *command: str) -> str:
    """What `--help` prints, one option per line (a terminal wide enough that rich wraps nothing)."""
    result = CliRunner().invoke(target, [*command, "--help"], env={"COLUMNS": "2000"})
    assert result.exit_code == 0, result.output
    return result.output


def option_lines(text: str) -> dict[str, str]:
    """--flag -> the rest of its line in a printed help."""
    return {m[1]: m[2] for m in re.finditer(r"^│\s+(--[\w-]+)(.*)$", text, re.MULTILINE)}


def serve_help_mismatches(fields: dict[str, FieldInfo], text: str) -> list[str]:
    """Settings fields whose serve option is missing, or whose printed help lacks the description, the
    variable or the default; env-only settings must have no option."""
    printed = option_lines(text)
    wrong = []
    for name, field in fields.items():
        flag = "--" + name.replace("_", "-")
        if env_only(field):
            if flag in printed:
                wrong.append(f"{flag}: a secret on the command line")
            continue
        line = " ".join(printed.get(flag, "").split())
        expected = f"[BERTSERVE_{name.upper()}, default {shown_default(field.default)}]"
        if flag not in printed:
            wrong.append(f"{flag}: no such option")
        elif " ".join(field.description.split()) not in line or expected not in line:
            wrong.append(f"{flag}: {line!r} lacks the description or {expected!r}")
    return wrong


def test_every_setting_is_a_serve_option_whose_help_names_its_default_and_meaning():
    assert not serve_help_mismatches(Settings.model_fields, printed_help(app, "serve"))
    keys = (Settings.model_fields["api_key"], Settings.model_fields["api_keys"])
    assert all(env_only(field) for field in keys), "keys stay off the command line"


def test_the_serve_help_check_finds_a_wrong_default_a_wrong_description_and_a_missing_option():
    text = printed_help(app, "serve")
    fields = dict(Settings.model_fields)
    fields["port"] = FieldInfo(default=8080, description=fields["port"].description)
    fields["max_queue"] = FieldInfo(default=1024, description="Most requests in flight.")
    fields["turbo"] = FieldInfo(default=False, description="Go faster.")
    assert [line.split(":")[0] for line in serve_help_mismatches(fields, text)] == [
        "--port",
        "--max-queue",
        "--turbo",
    ]


def help_without_defaults(target: typer.Typer) -> list[str]:
    """Options (of every command) with no help, or whose printed help shows neither a default nor that
    the option is required."""
    missing = []

    def walk(command, words: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*words, name])
            return
        for flag, line in option_lines(printed_help(target, *words)).items():
            if flag not in TYPER_OWN and not re.search(r"default|\[required\]", line):
                missing.append(f"{' '.join(words)} {flag}")

    walk(typer.main.get_command(target), [])
    return missing


def test_every_option_of_every_command_shows_its_default():
    assert not help_without_defaults(app)


def test_the_default_check_finds_an_option_that_shows_none():
    fake = typer.Typer()

    @fake.command()
    def run(
        size: int = typer.Option(3, help="Shown by typer."),
        name: str = typer.Option(..., help="Required."),
        ordinal: str = typer.Option(None, help="Ordered labels."),
    ) -> None:
        """A command whose --ordinal says nothing of what leaving it out does."""

    @fake.command()
    def other() -> None:
        """A second command, so that `run` is a subcommand as in bertserve."""

    assert help_without_defaults(fake) == ["run --ordinal"]


def test_bootstrap_help_names_every_model_it_builds():
    text = " ".join(printed_help(app, "bootstrap").split())
    assert "minilm" in BUILDS
    missing = [name for name in BUILDS if not re.search(rf"\b{name} v1\b", text)]
    assert not missing, f"bootstrap --help leaves out {missing}"


def test_every_script_and_benchmark_answers_help_and_does_nothing_else(tmp_path):
    """`--help` prints the usage and exits 0, writing nothing: a script that took it for a path once built a
    store named `--help`, and another regenerated a tracked file."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    scripts = [[str(path)] for path in sorted((repo / "scripts").glob("*.py"))]
    benches = [["-m", f"bench.{path.stem}"] for path in sorted((repo / "bench").glob("*.py"))]
    commands = [c for c in scripts + benches if "def main" in (repo / _source(c)).read_text()]
    assert len(commands) >= 10, "scripts/ and bench/ hold the command-line tools"
    before = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    for command in commands:
        result = subprocess.run(
            [sys.executable, *command, "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        )
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr[-500:])
    assert not list(tmp_path.iterdir()), f"--help wrote {list(tmp_path.iterdir())}"
    after = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True)
    assert after.stdout == before.stdout, "--help changed the checkout"


def _source(command: list[str]) -> str:
    return command[0] if command[0] != "-m" else command[1].replace(".", "/") + ".py"
