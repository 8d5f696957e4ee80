"""Human grading: choose pool pairs for graders and write a Label Studio project (select), and read their grades
back into the judgments (import-labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from relevance.cli.options import ConfigOption, ProfileOption, WorkdirOption, iso_time, open_chain
from relevance.common.console import clear_errors


@clear_errors()
def select(budget: int = typer.Option(..., "--budget", "-n", help="How many pairs to send to human graders."),
           strategy: str = typer.Option("entropy", help="random | entropy | disagreement | diverse"),
           per_query: int = typer.Option(3, help="At most this many pairs of one query."),
           seed: int = typer.Option(0, help="Seed of the random strategy and of tie breaks."),
           pre_annotate: bool = typer.Option(False, help="Show the teacher's grade as a pre-annotation (biases "
                                                          "raters towards the teacher: off by default)."),
           out: Optional[Path] = typer.Option(None, help="Project directory (default: workdir/label-studio)."),
           from_traffic: Optional[Path] = typer.Option(None, help="Choose among the pairs users were shown in this "
                                                                  "captured traffic, not the pool."),
           since: Optional[str] = typer.Option(None, help="With --from-traffic: only records from this time on "
                                                          "(ISO 8601 with an offset)."),
           top_k: int = typer.Option(10, help="With --from-traffic: the top this many items of each ranking."),
           config: Optional[Path] = ConfigOption, profile: Optional[str] = ProfileOption,
           workdir: Optional[str] = WorkdirOption):
    """Choose pool pairs (or, --from-traffic, served pairs) for human grading (active learning) and write a Label
    Studio project for them."""
    from relevance.labels.active import STRATEGIES

    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}",
                                 param_hint="--strategy")
    if since and not from_traffic:
        raise typer.BadParameter("--since reads traffic: give --from-traffic too", param_hint="--since")
    chain = open_chain(config, profile, workdir)
    out = out or chain.root / "label-studio"
    if from_traffic:
        from relevance.traffic import read_traffic

        if not from_traffic.is_dir():
            raise typer.BadParameter(f"{from_traffic}: not a directory of captured traffic",
                                     param_hint="--from-traffic")
        start = iso_time(since, "--since") if since else None
        records = read_traffic(from_traffic, since=start)
        typer.echo(f"select: {len(records)} traffic record(s) from {from_traffic}")
        chosen = chain.traffic_grading_project(chain.dataset(), records, strategy, budget, per_query, seed, top_k,
                                               pre_annotate, out, log=typer.echo)
    else:
        chosen = chain.grading_project(chain.dataset(), strategy, budget, per_query, seed, pre_annotate, out,
                                       log=typer.echo)
    typer.echo(f"{len(chosen)} pair(s) over {chosen['query_id'].nunique()} queries by {strategy} → {out}/tasks.json "
               f"(labelling config: {out}/label_config.xml)")


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
    chain = open_chain(config, profile, workdir)
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
