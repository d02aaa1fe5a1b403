"""Placeholder: replaced by the store implementation."""

import typer

store_app = typer.Typer(no_args_is_help=True)
