"""What a person sees: progress messages on stderr, and one-line errors with exit code 2 instead of tracebacks.

Every command line of the platform (``relevance …``, ``relevance canary …``) wraps its commands with
:func:`clear_errors`, so the same kinds of input error read the same way everywhere.
"""

from __future__ import annotations

import functools

from rich.console import Console

console = Console(stderr=True)


def log(message: str) -> None:
    console.print(f"[cyan]relevance[/] {message}")


def input_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the input is wrong" (as opposed to a bug): reported as one line."""
    from pydantic import ValidationError

    # relevance.data.schema.DataContractError is a ValueError.
    return (FileNotFoundError, ValueError, ValidationError)


def clear_errors(*extra: type[BaseException]):
    """Decorate a typer command: an input error (or one of ``extra``) becomes ``error: <message>`` on stderr and
    exit code 2; anything else is a bug and keeps its traceback."""

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            import typer

            try:
                return command(*args, **kwargs)
            except (*input_errors(), *extra) as error:
                typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
                raise typer.Exit(2) from None

        return wrapper

    return decorate
