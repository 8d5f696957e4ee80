"""`relevance` command line: one subcommand per step, and `relevance run` for the whole chain.

The top layer of the package: it may import everything below it (the core library, the platform adapters,
pipelines and serving), and nothing imports it. Every step takes the run config file (``--config``) and/or a
profile, so the same YAML drives a local run and each KFP component. Errors in the input are reported as one
line naming what was expected and what was got, with exit code 2 (relevance.common.console.clear_errors); no step leaves
a half-written output behind.

Every command parses its options, calls one library function and prints; the commands live by stage:

    options.py     the --config / --profile / --workdir options, and the run config and chain they give
    steps.py       prepare, train-teacher, candidates, label, train-student, fetch-backbone, export, features, run
    labels.py      select, import-labels (human grading through Label Studio)
    evaluation.py  evaluate, judge-eval
    serving.py     serve, serve-triton, score, traffic-sink, monitor
    pipeline.py    relevance pipeline …  (compile, run, submit, schedule)
    registry.py    relevance registry …  (list, promote, rollback)
    relevance canary …  is relevance.serving.canary.cli
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads unless the user opts in
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Our own progress bars are the ones to watch: no per-load bars and chatter from transformers / the hub client.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import typer  # noqa: E402

from relevance.cli import evaluation, labels, serving, steps  # noqa: E402
from relevance.cli.pipeline import pipeline_app  # noqa: E402
from relevance.cli.registry import registry_app  # noqa: E402
from relevance.serving.canary.cli import canary_app  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search relevance by distillation: teacher → soft labels → student → evaluation.")

# In the order `relevance --help` lists them: the chain's steps first, in the order they run.
app.command()(steps.prepare)
app.command("train-teacher")(steps.train_teacher)
app.command()(steps.candidates)
app.command()(steps.label)
app.command("train-student")(steps.train_student)
app.command("distil-towers")(steps.distil_towers)
app.command("distil-query-tower")(steps.distil_query_tower)
app.command()(labels.select)
app.command("import-labels")(labels.import_labels)
app.command("judge-eval")(evaluation.judge_eval)
app.command("fetch-backbone")(steps.fetch_backbone)
app.command()(evaluation.evaluate)
app.command()(steps.export)
app.command()(steps.features)
app.command(context_settings=serving.KSERVE_FLAGS, epilog=serving.KSERVE_HELP)(serving.serve)
app.command("serve-triton")(serving.serve_triton)
app.command()(serving.score)
app.command("traffic-sink")(serving.traffic_sink)
app.command()(serving.monitor)
app.command()(steps.run)
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(registry_app, name="registry")
app.add_typer(canary_app, name="canary")


def main() -> None:  # pragma: no cover - console entry for `python -m relevance.cli`
    app(prog_name="relevance")
    sys.exit(0)
