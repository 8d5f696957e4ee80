"""relevance.evaluation.report: one table for markdown and HTML; a metric no model has is left out."""

from __future__ import annotations

from relevance.evaluation.report import html_report, markdown_report, summary_table

REPORT = {"dataset": "shop", "split": "test", "num_pairs": 12, "pairs_per_s": {"student": 1234.5},
          "models": {"teacher": {"overall": {"accuracy": 0.5, "ndcg@20": 0.9}},
                     "bm25": {"overall": {"ndcg@20": 0.8}}}}


def test_summary_table_keeps_metrics_some_model_has():
    columns, rows = summary_table(REPORT)
    assert columns == ["accuracy", "ndcg@20"]
    assert rows == [("teacher", [0.5, 0.9]), ("bm25", [None, 0.8])]


def test_markdown_and_html_show_the_same_table():
    md = markdown_report(REPORT, "confusion.png")
    assert "| teacher | 0.5000 | 0.9000 |" in md and "| bm25 | – | 0.8000 |" in md
    assert "student 1,234" in md and "![confusion](confusion.png)" in md
    page = html_report(REPORT, b"\x89PNG", "<challenger> wins")
    assert "<td>0.9000</td>" in page and "&lt;challenger&gt; wins" in page and "data:image/png;base64," in page
