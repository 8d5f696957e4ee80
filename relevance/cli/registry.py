"""`relevance registry …`: the MLflow model registry's versions and aliases (list, promote, rollback)."""

from __future__ import annotations

from typing import Optional

import typer

from relevance.common.console import clear_errors
from relevance.platform.registry import RegistryError

registry_app = typer.Typer(no_args_is_help=True, help="The MLflow model registry: versions and aliases.")

TrackingOption = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                              help="MLflow tracking URI (default: the local SQLite registry under runs/mlflow).")
NameOption = typer.Option("relevance-student", "--name", help="Registered model name.")


def _registry(tracking_uri: Optional[str]):
    from relevance.config import RegistryConfig
    from relevance.platform.registry import Registry

    return Registry(RegistryConfig(tracking_uri=tracking_uri))


@registry_app.command("list")
@clear_errors(RegistryError)
def registry_list(name: Optional[str] = typer.Option(None, "--name", help="Only this model (default: all)."),
                  tracking_uri: Optional[str] = TrackingOption):
    """Registered versions with their aliases and lineage."""
    registry = _registry(tracking_uri)
    names = [name] if name else sorted(m.name for m in registry.client.search_registered_models())
    for model in names:
        for version in registry.versions(model):
            typer.echo(version.line())


@registry_app.command("promote")
@clear_errors(RegistryError)
def registry_promote(name: str = NameOption, version: Optional[int] = typer.Option(
                         None, help="Version to make champion (default: the challenger)."),
                     tracking_uri: Optional[str] = TrackingOption):
    """Make the challenger (or --version) the champion; the old champion is remembered for rollback."""
    typer.echo(f"{name}: champion → v{_registry(tracking_uri).promote(name, version)}")


@registry_app.command("rollback")
@clear_errors(RegistryError)
def registry_rollback(name: str = NameOption, tracking_uri: Optional[str] = TrackingOption):
    """Point champion back at the version it had before the last promotion."""
    typer.echo(f"{name}: champion → v{_registry(tracking_uri).rollback(name)} (rolled back)")
