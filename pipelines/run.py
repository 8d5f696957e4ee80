"""Running the training pipeline: locally with kfp.local, or on a cluster through kfp.Client.

Local runs use SubprocessRunner(use_venv=False): every step runs as a subprocess of this Python environment
(which has the project installed, like the image), nothing is pip-installed, and artifacts land under
``pipeline_root/<pipeline>-<timestamp>/<task>/<output>``.
"""

import json
import re
from datetime import datetime
from pathlib import Path

from relevance.pipelines.training import PIPELINE_NAME, build_pipeline


def local_arguments(profile: str, overrides: dict, refresh: bool = False) -> dict:
    """Pipeline arguments for a run on this machine: paths that steps resolve (the Feast definitions when given,
    the registry's SQLite file, the data) are made absolute, because each step runs in its own working
    directory."""
    from relevance.config import build_config
    from relevance.platform.registry import tracking_uri

    overrides = json.loads(json.dumps(overrides))  # a copy
    config = build_config(profile, overrides)  # fails here, before any step, on bad settings
    if config.features.repo:
        overrides.setdefault("features", {})["repo"] = str(Path(config.features.repo).resolve())
    overrides.setdefault("registry", {})["tracking_uri"] = tracking_uri(config.registry)
    if config.data.path:
        overrides.setdefault("data", {})["path"] = str(Path(config.data.path).resolve())
    return {"profile": profile, "overrides_json": json.dumps(overrides), "refresh": refresh}


def run_local(profile: str, overrides: dict, pipeline_root: str | Path, refresh: bool = False) -> Path:
    """Run the whole pipeline here; returns the run's artifact directory. Raises if a step fails."""
    from kfp import local

    pipeline_root = Path(pipeline_root).resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    arguments = local_arguments(profile, overrides, refresh)
    pipeline = build_pipeline(profile, json.loads(arguments["overrides_json"]), local=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    pipeline(**arguments)
    created = sorted((p for p in set(pipeline_root.iterdir()) - before if p.is_dir()),
                     key=lambda p: p.stat().st_mtime)
    if not created:
        raise RuntimeError(f"the local run wrote nothing under {pipeline_root}")
    return created[-1]


def local_outputs(run_dir: Path) -> dict[str, Path | None]:
    """Where a local run left what a user looks at first."""
    def first(pattern: str) -> Path | None:
        found = sorted(run_dir.glob(pattern))
        return found[0] if found else None

    return {
        "evaluation report (HTML)": first("evaluate-student/report"),
        "data docs (Great Expectations)": first("validate-data/data_docs/index.html"),
        "feast online store": first("compute-features/feature_repo/data/online_store.db"),
        "feast repo": first("compute-features/feature_repo"),
        "student": first("distill-student/student"),
        "student ONNX": first("export-onnx/onnx_model"),
    }


def client(host: str, namespace: str | None = None, existing_token: str | None = None):
    """A kfp.Client for a cluster (the Kubeflow Pipelines API behind ``host``)."""
    from kfp import Client

    return Client(host=host, namespace=namespace, existing_token=existing_token)


def submit(host: str, profile: str, overrides: dict, experiment: str, namespace: str | None = None,
           existing_token: str | None = None, run_name: str | None = None, refresh: bool = False):
    """Compile for this run's config (its pods sized by its ``cluster`` section) and start it on a cluster;
    returns kfp's RunPipelineResult (run_id, and a URL in the logs)."""
    pipeline = build_pipeline(profile, overrides)  # validates: a bad setting should not cost a cluster run
    arguments = {"profile": profile, "overrides_json": json.dumps(overrides), "refresh": refresh}
    return client(host, namespace, existing_token).create_run_from_pipeline_func(
        pipeline, arguments=arguments, experiment_name=experiment,
        run_name=run_name or f"{PIPELINE_NAME}-{datetime.now():%Y%m%d-%H%M%S}", namespace=namespace)



# KFP's cron format has six fields, seconds first (robfig/cron): "0 0 3 * * *" is 03:00:00 every day.
_CRON_FIELD = re.compile(r"^[0-9*/,?LW#A-Za-z-]+$")


def check_cron(expression: str) -> str:
    """A KFP cron expression, or a ValueError that says what KFP expects."""
    if re.fullmatch(r"@(yearly|annually|monthly|weekly|daily|midnight|hourly)|@every (\d+(\.\d+)?(h|m|s|ms))+",
                    expression):
        return expression
    fields = expression.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"--cron: KFP expects six fields, seconds first (e.g. '0 0 3 * * *' for 03:00 daily), "
                         f"got {expression!r} ({len(fields)} field(s))")
    return expression


def schedule(host: str, profile: str, overrides: dict, experiment: str, cron: str, name: str,
             namespace: str | None = None, existing_token: str | None = None, refresh: bool = False):
    """A recurring run of the training pipeline on a cluster (KFP has no declarative manifest for one: the API
    server owns ScheduledWorkflow objects). Compiles the pipeline for this config and registers the schedule with
    kfp.Client."""
    import tempfile

    from relevance.pipelines.training import compile_pipeline

    check_cron(cron)
    arguments = {"profile": profile, "overrides_json": json.dumps(overrides), "refresh": refresh}
    with tempfile.TemporaryDirectory() as tmp:
        # Compiling validates the config: before connecting anywhere.
        package = compile_pipeline(Path(tmp) / "pipeline.yaml", profile=profile, overrides=overrides)
        kfp_client = client(host, namespace, existing_token)
        experiment_id = kfp_client.create_experiment(experiment, namespace=namespace).experiment_id
        return kfp_client.create_recurring_run(experiment_id, job_name=name, cron_expression=cron,
                                               max_concurrency=1, no_catchup=True, params=arguments,
                                               pipeline_package_path=str(package))
