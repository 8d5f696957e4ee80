"""The studies behind the report: each answers one question with numbers from a run made here.

    python -m benchmarks.studies                 # every study whose inputs changed, then the report (make report)
    python -m benchmarks.studies --only labelling --only scaling

(The studies are benchmarks, run from a checkout; the installed package never imports them.)

Each study is a module with ``TITLE``, ``QUESTION`` and ``run(steps, args) -> dict`` (its record: tables, figures,
the answer). Expensive work goes through :class:`Steps`, which keeps each step's result under
runs/studies/<study>/ keyed by a hash of the step's inputs, so a rerun after one change recomputes only what that
change touched. Records are merged into benchmarks/results/studies.json (a study not rerun keeps its last
record) and rendered to benchmarks/results/report.html with the figures embedded.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import importlib
import io
import json
import os
import shlex
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import machine

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "runs" / "studies"
# In the report's order.
# loop: the data flywheel on Home Depot (benchmarks/studies/loop.py, about 1.5 h).
STUDIES = ("teachers", "lambdamart", "scaling", "pareto", "active", "judged", "ablation", "backbones", "labelling",
           "locales", "gpu", "loop", "towers", "end_to_end", "pools")


def _key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]


# How the run makes its encoders (tuning the towers, distilling a query tower: steps of `relevance run`): a study's
# student reads the encoders its config names (student.encoder, student.query_encoder), never these.
ENCODER_STEPS = frozenset({"towers", "query_tower"})


def student_settings(student, exclude: frozenset[str] | set[str] = frozenset()) -> dict:
    """A student config (or its dump, as a manifest records it) as a study's cache key: what the student is
    trained with, not how the run makes its encoders (:data:`ENCODER_STEPS`); a separate query encoder (added
    after a study's results were cached) counts only where it is set, so the cached steps keep their keys."""
    dump = student if isinstance(student, dict) else student.model_dump()
    return {k: v for k, v in dump.items()
            if k not in exclude and k not in ENCODER_STEPS and not (k == "query_encoder" and v is None)}


class Steps:
    """Step-by-step cache of one study (JSON results, and directories for steps that write models)."""

    def __init__(self, study: str, root: Path = CACHE):
        self.root = Path(root) / study
        self.computed: list[str] = []
        self.reused: list[str] = []

    def __call__(self, name: str, inputs: dict, compute: Callable[[], dict]) -> dict:
        path = self.root / f"{name}-{_key(inputs)}.json"
        if path.exists():
            self.reused.append(name)
            return json.loads(path.read_text())["result"]
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"inputs": inputs, "result": result}, indent=2, default=str))
        os.replace(tmp, path)  # a killed step leaves no half-written result behind
        self.computed.append(name)
        return result

    def directory(self, name: str, inputs: dict) -> Path:
        """Where a step that writes files keeps them (the caller checks for its own completion marker)."""
        return self.root / f"{name}-{_key(inputs)}"


def on_run_towers(student, towers_dir: Path) -> tuple:
    """``student`` (a StudentConfig) reading the run's tuned towers as its one encoder, the run's encoder steps
    off, and the towers' fingerprint (for a study's cache key): the towers tuned once and reused for every MLP."""
    from relevance.student.encoder import BiEncoder

    towers = str(Path(towers_dir).resolve())
    tuned = student.without_encoder_steps().model_copy(update={"encoder": towers, "query_encoder": None})
    return tuned, BiEncoder(towers, tuned.encoder_max_length).fingerprint


def models_key(models: dict) -> dict:
    """Models to evaluate, as a step's inputs: each name's directory and content version (a model retrained in the
    same directory is evaluated again)."""
    def version(directory: Path) -> str:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
        return str(manifest.get("student_version") or manifest.get("teacher_version"))

    return {name: [str(path), version(path)] for name, path in sorted(models.items())}


def link(target: Path, at: Path) -> None:
    """``at`` → ``target`` (a symlink), unless ``at`` exists: a study reuses another run's folders without copying."""
    if not at.exists():
        at.parent.mkdir(parents=True, exist_ok=True)
        at.symlink_to(target.resolve(), target_is_directory=target.is_dir())


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def record(name: str, module, answer: str, tables: list[dict], figures: dict[str, bytes], command: str,
           steps: Steps | None = None, **extra) -> dict:
    """A study's record: what was asked, what the run says, and how to rerun it."""
    RESULTS.joinpath("studies").mkdir(parents=True, exist_ok=True)
    files = {}
    for index, (caption, png) in enumerate(figures.items()):
        path = RESULTS / "studies" / f"{name}-{index}.png"
        path.write_bytes(png)
        files[caption] = str(path.relative_to(RESULTS))
    return {"name": name, "title": module.TITLE, "question": module.QUESTION, "answer": answer, "tables": tables,
            "figures": files, "command": command, "machine": machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "steps": {"computed": steps.computed, "reused": steps.reused} if steps else None, **extra}


def table(caption: str, columns: list[str], rows: list[list]) -> dict:
    return {"caption": caption, "columns": columns, "rows": rows}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.0f}"
    return html.escape(str(value))


def render_html(records: dict[str, dict]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Relevance studies</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em} table{border-collapse:collapse;"
             "margin:.5em 0} td,th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right}"
             "td:first-child,th:first-child{text-align:left} .meta{color:#666;font-size:90%} img{max-width:100%}"
             "</style></head><body><h1>Relevance studies</h1><ul>"]
    parts += [f"<li><a href='#{name}'>{html.escape(r['title'])}</a>: {html.escape(r.get('status', 'done'))}</li>"
              for name, r in records.items()]
    parts.append("</ul>")
    for name, r in records.items():
        parts.append(f"<h2 id='{name}'>{html.escape(r['title'])}</h2><p><i>{html.escape(r['question'])}</i></p>"
                     f"<p><b>{html.escape(r['answer'])}</b></p>")
        for t in r.get("tables", []):
            parts.append(f"<table><caption>{html.escape(t['caption'])}</caption><tr>"
                         + "".join(f"<th>{html.escape(c)}</th>" for c in t["columns"]) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>"
                                   for row in t["rows"]) + "</table>")
        for caption, relative in r.get("figures", {}).items():
            path = RESULTS / relative
            if path.exists():
                data = base64.b64encode(path.read_bytes()).decode()
                parts.append(f"<figure><img src='data:image/png;base64,{data}'/><figcaption>"
                             f"{html.escape(caption)}</figcaption></figure>")
        parts.append(f"<p class='meta'>Rerun: <code>{html.escape(r['command'])}</code> · machine: "
                     f"{html.escape(r['machine'])} · date: {r['date']}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


README_BEGIN, README_END = "<!-- studies:begin -->", "<!-- studies:end -->"


def summary_markdown(records: dict[str, dict]) -> str:
    """The README's table: one row per study, its answer, linking the report."""
    lines = ["| study | what the run says |", "|---|---|"]
    for name, r in records.items():
        lines.append(f"| [{r['title']}](benchmarks/results/report.html#{name}) | {r['answer']} |")
    return "\n".join(lines)


def update_readme(records: dict[str, dict], readme: Path = ROOT / "README.md") -> bool:
    """Replace the table between the README's study markers (if it has them) with the current records'."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_BEGIN}\n{summary_markdown(records)}\n{README_END}{tail}")
    return True


def write(records: dict[str, dict], results: Path = RESULTS, readme: Path | None = None) -> tuple[Path, Path]:
    ordered = {name: records[name] for name in STUDIES if name in records}
    results.mkdir(parents=True, exist_ok=True)
    studies, report = results / "studies.json", results / "report.html"
    studies.write_text(json.dumps(ordered, indent=2, default=str))
    report.write_text(render_html(ordered))
    if readme is not None:
        update_readme(ordered, readme)
    return studies, report


def load_records(results: Path = RESULTS) -> dict[str, dict]:
    path = results / "studies.json"
    return json.loads(path.read_text()) if path.exists() else {}


def not_run(name: str, module, chain, command: str) -> dict:
    """A study on the run's tuned towers, asked of a run without them: its last record is kept as it is (a report
    of the other studies is still written), or one that says what to run first."""
    print(f"   {name}: {chain.towers_dir} holds no tuned towers; run `make bench-quality-minilm` (its config tunes "
          "them) first. The last record is kept.", flush=True)
    answer = f"Not run: {chain.towers_dir} held no tuned towers (`make bench-quality-minilm` tunes them)."
    return load_records().get(name) or record(name, module, answer, [], {}, command)


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=STUDIES, help="Run only these studies (repeatable).")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "homedepot-minilm.yaml",
                        help="The Home Depot run the Home Depot studies start from (relevance run -c configs/homedepot-minilm.yaml).")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    records = load_records()
    for name in args.only or STUDIES:
        module = importlib.import_module(f"benchmarks.studies.{name}")
        print(f"== {name}: {module.TITLE}", flush=True)
        steps = Steps(name)
        command = "python -m benchmarks.studies --only " + name + (f" --config {shlex.quote(str(args.config))}"
                                                        if args.config != parser.get_default("config") else "")
        records[name] = module.run(steps, args, command)
        print(f"   {records[name]['answer']}", flush=True)
    # Re-read before writing: another study run may have finished meanwhile; keep its records.
    done = {name: records[name] for name in (args.only or STUDIES)}
    return write({**load_records(), **done}, readme=ROOT / "README.md")


