"""What every `relevance` command shares: the config options, and the run config and chain they give."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

ConfigOption = typer.Option(None, "--config", "-c", help="Run config YAML (see configs/).", exists=True,
                            dir_okay=False)
ProfileOption = typer.Option(None, "--profile", "-p", help="Base profile: quick, default or gpu.")
WorkdirOption = typer.Option(None, "--workdir", "-w", help="Override the config's workdir.")


def run_config(config: Optional[Path], profile: Optional[str], workdir: Optional[str]):
    """The run config from a file and/or a profile, its workdir overridden when given."""
    from relevance.config import load_config

    loaded = load_config(config, profile)
    if workdir:
        loaded.workdir = workdir
    return loaded


def open_chain(config: Optional[Path], profile: Optional[str], workdir: Optional[str]):
    """The run's chain (relevance.chain.Chain): where each step's output lives, made when missing."""
    from relevance.chain import Chain

    return Chain(run_config(config, profile, workdir))


def iso_time(value: str, option: str):
    """An option's ISO 8601 time with a UTC offset (``…Z`` or ``…+01:00``), or a ValueError naming the option."""
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option}: expected an ISO 8601 time such as 2026-12-03T10:00:00Z, got {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{option}: expected a time with a UTC offset (…Z or …+01:00), got {value!r}")
    return parsed
