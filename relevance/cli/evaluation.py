"""Evaluation beyond the run's report: a saved model on any judgments file (evaluate), and two rankers compared on
queries nobody graded (judge-eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from relevance.cli.options import ConfigOption, ProfileOption, WorkdirOption, open_chain
from relevance.common.console import clear_errors


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
    from relevance.evaluation.judge_eval import judge_eval as run_judge_eval
    from relevance.evaluation.judge_eval import report_markdown, write_report

    if allocation not in ("neyman", "proportional"):
        raise typer.BadParameter(f"expected neyman or proportional, got {allocation!r}", param_hint="--allocation")
    chain = open_chain(config, profile, workdir)
    dataset = chain.dataset(with_impressions=True)  # the traffic of the judge-holdout queries
    report = run_judge_eval(chain.config, dataset, baseline, candidate, judge or chain.teacher_dir,
                            chain.embeddings_dir, queries, allocation, k=top_k, min_agreement=min_agreement,
                            seed=seed, log=typer.echo)
    write_report(report, out or chain.root / "judge-eval")
    typer.echo(report_markdown(report))


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
    from relevance.evaluation.evaluate import evaluate_file

    report = evaluate_file(model, items, judgments, out, split, cache_dir)
    overall = report["overall"]
    typer.echo(f"{report['kind']} on {overall['num_pairs']} pairs: accuracy {overall['accuracy']:.4f}, "
               f"ndcg@20 {overall.get('ndcg@20') or float('nan'):.4f} → {out}")
