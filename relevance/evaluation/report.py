"""The quality report's table, rendered once for every reader: markdown (the run's report.md, the CLI) and a
self-contained HTML page (the pipeline's evaluation artifact in the KFP UI)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

SUMMARY_METRICS = ("accuracy", "macro_f1", "ndcg@20", "rmse_grade", "rmse_raw", "auroc_ge3", "ece_top")


def summary_table(report: dict) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """(metric columns, [(model, values)]) of a report from relevance.evaluation.evaluate.evaluate_models; a metric no
    model has is left out, a metric one model lacks is None."""
    columns = [m for m in SUMMARY_METRICS if any(m in b["overall"] for b in report["models"].values())]
    return columns, [(name, [block["overall"].get(m) for m in columns]) for name, block in report["models"].items()]


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def title(report: dict) -> str:
    return f"Quality on {report['dataset']} ({report['split']} split, {report['num_pairs']} pairs)"


def markdown_report(report: dict, *plots: str) -> str:
    columns, rows = summary_table(report)
    lines = [f"# {title(report)}", "", "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(v) for v in values) + " |" for name, values in rows]
    if report.get("pairs_per_s"):
        lines += ["", "Throughput (pairs/s, this machine): " +
                  ", ".join(f"{k} {v:,.0f}" for k, v in report["pairs_per_s"].items())]
    lines += ["", *(f"![{Path(plot).stem}]({plot})" for plot in plots)] if plots else []
    return "\n".join(lines) + "\n"


def html_report(report: dict, confusion_png: bytes, headline: str) -> str:
    """A self-contained HTML page (the plot inlined) that the KFP UI can show as an HTML artifact."""
    columns, rows = summary_table(report)
    body = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_cell(v)}</td>" for v in values) + "</tr>"
                   for name, values in rows)
    image = base64.b64encode(confusion_png).decode()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Relevance evaluation</title>"
            "<style>body{font-family:sans-serif} td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
            f"</head><body><h1>{html.escape(title(report))}</h1><p><b>{html.escape(headline)}</b></p><table><tr>"
            "<th>model</th>" + "".join(f"<th>{m}</th>" for m in columns) + f"</tr>{body}</table>"
            f"<h2>Confusion matrices</h2><img src='data:image/png;base64,{image}'/></body></html>")
