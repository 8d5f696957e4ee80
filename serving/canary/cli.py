"""`relevance canary …`: start, promote and roll back a canary on KServe, analyse it, or run the loop locally.

start / promote / rollback print the exact kubectl command; ``--dry-run`` shows the InferenceService it would
produce (``kubectl patch --local`` on the rendered overlay) and validates it; ``--apply`` runs the command and
then moves the MLflow aliases. Without ``--apply`` nothing changes anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from relevance.common.console import clear_errors
from relevance.platform.registry import RegistryError

canary_app = typer.Typer(no_args_is_help=True, help="Canary rollout of a student on KServe, and its analysis.")

ConfigOption = typer.Option(None, "--config", "-c", help="Run config YAML (its canary/serving/registry sections).",
                            exists=True, dir_okay=False)
ProfileOption = typer.Option(None, "--profile", "-p", help="Base profile: quick, default or gpu.")
TrackingOption = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                              help="MLflow tracking URI (default: the config's registry.tracking_uri).")
ApplyOption = typer.Option(False, "--apply", help="Run the kubectl command, then move the registry aliases.")
DryRunOption = typer.Option(False, "--dry-run", help="Show the patched InferenceService (kubectl patch --local on "
                            "canary.overlay) and validate it; changes nothing.")
CrdOption = typer.Option(None, "--crd", exists=True, dir_okay=False,
                         help="KServe CRD YAML to validate against (default: schema from the KServe SDK).")


def _setup(config: Optional[Path], profile: Optional[str], tracking_uri: Optional[str] = None):
    from relevance.config import load_config

    run_config = load_config(config, profile)
    if tracking_uri:
        run_config.registry.tracking_uri = tracking_uri
    return run_config


def _carry_out(run_config, plan, apply: bool, dry_run: bool, crd: Optional[Path]) -> None:
    import yaml

    from relevance.serving.canary.rollout import apply as apply_plan
    from relevance.serving.canary.rollout import dry_run as patch_dry_run

    if apply and dry_run:
        raise ValueError("--apply and --dry-run exclude each other")
    typer.echo(plan.command_line)
    typer.echo(f"# registry{'' if apply else ' (with --apply)'}: {plan.registry_change}")
    if dry_run:
        patched, problems = patch_dry_run(run_config, plan, str(crd) if crd else None)
        typer.echo(f"# {run_config.canary.overlay} after the patch (kubectl patch --local):")
        typer.echo(yaml.safe_dump(patched, sort_keys=False))
        if problems:
            for problem in problems:
                typer.secho(f"invalid: {problem}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        typer.echo("# valid: kubernetes-validate --strict, KServe schema, canary checks")
    if apply:
        typer.echo(apply_plan(run_config, plan).strip())
        typer.echo(f"done: {plan.action}")


def _plan_and_carry_out(planner, config, profile, tracking_uri, apply, dry_run, crd, *args) -> None:
    from relevance.platform.registry import Registry

    run_config = _setup(config, profile, tracking_uri)
    _carry_out(run_config, planner(run_config, Registry(run_config.registry), *args), apply, dry_run, crd)


@canary_app.command("start")
@clear_errors(RegistryError)
def start(model_version: int = typer.Option(..., "--model-version", min=1, help="Registered student version."),
          percent: int = typer.Option(..., "--percent", min=1, max=99, help="Traffic share for the challenger."),
          config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
          tracking_uri: Optional[str] = TrackingOption, apply: bool = ApplyOption, dry_run: bool = DryRunOption,
          crd: Optional[Path] = CrdOption):
    """Send --percent of the predictor's traffic to registered student --model-version."""
    from relevance.serving.canary.rollout import plan_start

    _plan_and_carry_out(plan_start, config, profile, tracking_uri, apply, dry_run, crd, model_version, percent)


@canary_app.command("promote")
@clear_errors(RegistryError)
def promote(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
            tracking_uri: Optional[str] = TrackingOption, apply: bool = ApplyOption, dry_run: bool = DryRunOption,
            crd: Optional[Path] = CrdOption):
    """Give the challenger all the traffic and make it the champion."""
    from relevance.serving.canary.rollout import plan_promote

    _plan_and_carry_out(plan_promote, config, profile, tracking_uri, apply, dry_run, crd)


@canary_app.command("rollback")
@clear_errors(RegistryError)
def rollback(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
             tracking_uri: Optional[str] = TrackingOption, apply: bool = ApplyOption, dry_run: bool = DryRunOption,
             crd: Optional[Path] = CrdOption):
    """Abort a running canary (all traffic back on the champion at once), or undo the last promotion."""
    from relevance.serving.canary.rollout import plan_rollback

    _plan_and_carry_out(plan_rollback, config, profile, tracking_uri, apply, dry_run, crd)


def _echo_decision(result: dict, report: Path) -> None:
    colour = {"promote": typer.colors.GREEN, "hold": typer.colors.YELLOW, "rollback": typer.colors.RED}
    typer.secho(f"decision: {result['decision'].upper()}", fg=colour[result["decision"]], bold=True)
    for reason in result["reasons"]:
        typer.echo(f"  - {reason}")
    typer.echo(f"report: {report} (+ .json)")


@canary_app.command("analyze")
@clear_errors(RegistryError)
def analyze(champion_url: str = typer.Option(..., help="The champion's rerank server (V2), e.g. the prev- tag URL."),
            challenger_url: str = typer.Option(..., help="The challenger's rerank server (V2), the latest- tag URL."),
            config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
            teacher: Optional[Path] = typer.Option(None, help="Teacher directory for the judge (default: "
                                                   "workdir/teacher)."),
            judge: bool = typer.Option(True, help="Let the teacher judge unlabelled replayed queries."),
            out: Optional[Path] = typer.Option(None, help="Report directory (default: workdir/canary).")):
    """Replay labelled and unlabelled queries to both servers, read their SLO metrics, and decide
    promote / hold / rollback (report: canary-analysis.md + .json)."""
    from relevance.chain import Chain
    from relevance.serving.canary.analysis import analyze as run_analysis
    from relevance.serving.canary.analysis import write_report
    from relevance.serving.canary.local import judge_teacher

    run_config = _setup(config, profile)
    dataset = Chain(run_config).dataset(with_impressions=True)
    decision = run_analysis(run_config, champion_url, challenger_url, dataset,
                            judge_teacher(run_config, teacher, judge))
    md, _ = write_report(decision, out or Path(run_config.workdir) / "canary",
                         {"champion_url": champion_url, "challenger_url": challenger_url})
    _echo_decision(decision.to_dict(), md)


def _server_settings(config: Optional[Path], run_config) -> list[str]:
    """The config arguments for the `relevance serve` processes a command starts: the same config it read."""
    return ["--config", str(config)] if config else ["--profile", run_config.profile]


@canary_app.command("local")
@clear_errors(RegistryError)
def local(champion_bundle: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="Serving bundle "
                                                         "of the champion (default: the registry's champion)."),
          challenger_bundle: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="Serving "
                                                           "bundle of the challenger (default: the registry's canary version, else its challenger)."),
          feature_repo: Optional[Path] = typer.Option(None, help="Materialized Feast repo (default: "
                                                      "workdir/feature_repo)."),
          percent: int = typer.Option(10, min=0, max=100, help="Challenger share at the splitter."),
          requests: int = typer.Option(200, min=0, help="Requests replayed through the splitter."),
          config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
          teacher: Optional[Path] = typer.Option(None, help="Teacher for the judge (default: workdir/teacher)."),
          judge: bool = typer.Option(True, help="Let the teacher judge unlabelled replayed queries."),
          challenger_delay_ms: float = typer.Option(0.0, min=0, help="Fault injection (demonstrations): add this "
                                                    "delay to every challenger request, at its revision proxy."),
          challenger_abort_percent: float = typer.Option(0.0, min=0, max=100, help="Fault injection: answer this "
                                                         "share of challenger requests with HTTP 503."),
          serve: bool = typer.Option(False, "--serve", help="Keep the servers, proxies and splitter running "
                                     "(until Ctrl-C / SIGTERM) for `relevance canary watch --splitter-url`, "
                                     "instead of analysing once; their URLs go to OUT/local-canary.json."),
          out: Optional[Path] = typer.Option(None, help="Logs and report (default: workdir/canary-local).")):
    """The canary loop on this machine: champion and challenger servers on loopback behind a weighted splitter,
    traffic replayed through it, then `canary analyze` on both (or, with --serve, kept up for `canary watch`)."""
    from relevance.serving.canary.local import Faults, run_local

    run_config = _setup(config, profile)
    faults = Faults(challenger_delay_ms, challenger_abort_percent)
    result = run_local(run_config, _server_settings(config, run_config), champion_bundle, challenger_bundle,
                       feature_repo, percent, requests, out, teacher, judge, faults, serve, log=typer.echo)
    if serve:
        return
    _echo_decision(result, Path(result["report"]))
    typer.echo(json.dumps(result["context"]["split_requests"]))


@canary_app.command("watch")
@clear_errors(RegistryError)
def watch(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
          tracking_uri: Optional[str] = TrackingOption,
          champion_url: Optional[str] = typer.Option(None, help="The champion's rerank server (default: "
                                                     "canary.champion_url; neither: a transformer started here on "
                                                     "canary.champion_predictor_url, the prev- revision)."),
          challenger_url: Optional[str] = typer.Option(None, help="The challenger's rerank server (default: "
                                                       "canary.challenger_url, or the latest- revision's)."),
          splitter_url: Optional[str] = typer.Option(None, help="Act on the local loop's splitter at this URL "
                                                     "(`relevance canary local --serve`) instead of the cluster."),
          bundle: Optional[Path] = typer.Option(None, exists=True, file_okay=False, help="Serving bundle for the "
                                                "transformers it starts (default: the registry champion's)."),
          feature_repo: Optional[Path] = typer.Option(None, help="Feast repo for those transformers (default: "
                                                      "workdir/feature_repo)."),
          teacher: Optional[Path] = typer.Option(None, help="Teacher for the judge (default: workdir/teacher)."),
          judge: bool = typer.Option(True, help="Let the teacher judge unlabelled replayed queries."),
          every: float = typer.Option(0.0, min=0, help="Seconds between rounds."),
          rounds: int = typer.Option(1, min=1, help="Rounds at most; it stops after a round that ends the canary."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Decide and report; change nothing (exit 0 "
                                       "whatever the decision)."),
          out: Optional[Path] = typer.Option(None, help="Report directory (default: workdir/canary-watch).")):
    """Analyse the running canary and act on the decision by itself: rollback and promote are applied (kubectl
    and the registry aliases, or the local splitter), hold does nothing. Exit codes: 0 nothing to do, held or
    promoted; 3 rolled back; 4 not carried out (a person must look); 2 bad input."""
    from relevance.serving.canary.watch import NO_CANARY, WatchError, watch_canary

    run_config = _setup(config, profile, tracking_uri)
    try:
        result = watch_canary(run_config, _server_settings(config, run_config), champion_url, challenger_url,
                              splitter_url, bundle, feature_repo, teacher, judge, rounds, every, dry_run, out,
                              log=typer.echo)
    except WatchError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(error.exit_code) from None
    if result.status == NO_CANARY:
        typer.echo(result.action)
    else:
        _echo_decision(result.decision.to_dict(), result.report)
        typer.echo(f"action: {result.action}")
    raise typer.Exit(result.exit_code)
