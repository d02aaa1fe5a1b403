"""Placeholder: replaced by the training implementation."""

import typer


def register_training_commands(app: typer.Typer) -> None:
    """Add train, pretrain and bootstrap to the top-level CLI."""
