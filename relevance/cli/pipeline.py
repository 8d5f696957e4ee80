"""`relevance pipeline …`: the KFP training pipeline compiled, run on this machine, submitted or scheduled."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from relevance.cli.options import ConfigOption, ProfileOption, run_config
from relevance.common.console import clear_errors

pipeline_app = typer.Typer(no_args_is_help=True, help="The KFP training pipeline: compile, run locally, submit.")


def _pipeline_settings(config: Optional[Path], profile: Optional[str]) -> tuple[str, dict]:
    """A profile plus overrides from a config file: what the pipeline's profile/overrides_json parameters take."""
    from relevance.config import read_overrides

    file_profile, overrides = read_overrides(config)
    return profile or file_profile or "quick", overrides


RefreshOption = typer.Option(False, "--refresh", help="A refresh round: stop unless the judgments changed since the "
                             "champion was trained; put a registered challenger under canary "
                             "(canary.refresh_percent) for the canary watch.")


@pipeline_app.command("compile")
@clear_errors()
def pipeline_compile(out: Path = typer.Option(Path("pipeline.yaml"), "--out", "-o", help="YAML to write."),
                     image: Optional[str] = typer.Option(None, help="Default image of the steps "
                                                         "(else $RELEVANCE_IMAGE, else the published one)."),
                     config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption):
    """Compile the training pipeline to YAML for the Kubeflow UI (Pipelines → Upload pipeline), its pods sized by
    the config's `cluster` section (-p gpu: GPU steps); the config is also the default of its parameters."""
    from relevance.pipelines.training import compile_pipeline

    chosen, overrides = _pipeline_settings(config, profile)
    typer.echo(compile_pipeline(out, image, chosen, overrides))


@pipeline_app.command("run")
@clear_errors()
def pipeline_run(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                 local: bool = typer.Option(..., "--local", help="Run on this machine with kfp.local (required: "
                                            "use `submit` for a cluster)."),
                 pipeline_root: Path = typer.Option(Path("runs/pipeline"), help="Where local artifacts go."),
                 refresh: bool = RefreshOption):
    """Run the training pipeline end to end on this machine (kfp.local, one subprocess per step), and compile
    the same pipeline to pipeline_root/pipeline.yaml for the Kubeflow UI."""
    from relevance.pipelines.run import local_outputs, run_local
    from relevance.pipelines.training import compile_pipeline
    from relevance.platform.registry import Registry, tracking_uri

    chosen, overrides = _pipeline_settings(config, profile)
    try:
        run_dir = run_local(chosen, overrides, pipeline_root, refresh)
    except RuntimeError as error:  # a step failed; kfp.local has streamed its log above
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        runs = sorted(p for p in Path(pipeline_root).glob("*/") if p.is_dir())  # names sort by start time
        summary = runs[-1] / "validate-data" / "summary" if runs else None
        if summary is not None and summary.exists() and "FAILED" in summary.read_text():
            typer.echo(summary.read_text(), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"pipeline run: {run_dir}")
    compiled = compile_pipeline(pipeline_root / "pipeline.yaml", profile=chosen, overrides=overrides)
    typer.echo(f"  compiled pipeline (upload in the Kubeflow UI): {compiled}")
    outputs = local_outputs(run_dir)
    for what, path in outputs.items():
        typer.echo(f"  {what}: {path or '(not produced)'}")
    if outputs["student ONNX"] and outputs["feast repo"]:
        settings = f"-c {config}" if config else f"-p {chosen}"
        typer.echo(f"  serve it: relevance serve {settings} --bundle {outputs['student ONNX']} "
                   f"--feature-repo {outputs['feast repo']}")
    registry_config = run_config(config, chosen, None).registry
    registry = Registry(registry_config)
    typer.echo(f"  MLflow registry: {tracking_uri(registry_config)}")
    for name in (registry_config.teacher_name, registry_config.student_name):
        for version in registry.versions(name):
            typer.echo(f"    {version.line()}")


@pipeline_app.command("submit")
@clear_errors()
def pipeline_submit(host: str = typer.Option(..., help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline"),
                    config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                    experiment: str = typer.Option("relevance", help="KFP experiment to file the run under."),
                    namespace: Optional[str] = typer.Option(None, help="Kubeflow profile namespace."),
                    token: Optional[str] = typer.Option(None, envvar="KFP_TOKEN", help="Bearer token, if needed."),
                    refresh: bool = RefreshOption):
    """Start the training pipeline on a Kubeflow cluster (kfp.Client)."""
    from relevance.pipelines.run import submit

    chosen, overrides = _pipeline_settings(config, profile)
    result = submit(host, chosen, overrides, experiment, namespace, token, refresh=refresh)
    typer.echo(f"run id: {result.run_id}")


@pipeline_app.command("schedule")
@clear_errors()
def pipeline_schedule(host: str = typer.Option(..., help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline"),
                      cron: str = typer.Option(..., help="KFP cron, six fields, seconds first: '0 0 3 * * *'."),
                      name: str = typer.Option("relevance-training-nightly", help="Recurring run name."),
                      config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                      experiment: str = typer.Option("relevance", help="KFP experiment for the runs."),
                      namespace: Optional[str] = typer.Option(None, help="Kubeflow profile namespace."),
                      token: Optional[str] = typer.Option(None, envvar="KFP_TOKEN", help="Bearer token, if needed."),
                      refresh: bool = RefreshOption):
    """Run the training pipeline on a schedule (a KFP recurring run; one run at a time, no catch-up)."""
    from relevance.pipelines.run import check_cron, schedule

    check_cron(cron)  # before connecting anywhere
    chosen, overrides = _pipeline_settings(config, profile)
    result = schedule(host, chosen, overrides, experiment, cron, name, namespace, token, refresh=refresh)
    typer.echo(f"recurring run id: {result.recurring_run_id}")
