"""The local canary loop on Home Depot: champion = the student trained on human labels only (on the frozen
encoder), challenger = the student distilled from the teacher (on the run's tuned towers and query tower, when it
tunes them: then each reads its own feature version from one shared store), both from `make bench-quality-minilm`'s
run. Both serve for real on loopback behind a 10% splitter; the analysis replays the 1,183 test queries (human
grades) and 100 judge-holdout impression queries (unjudged, never in the pool; judged by the MiniLM teacher) to
both, reads their Prometheus metrics and decides.

    python -m benchmarks.canary_homedepot --config configs/homedepot-minilm.yaml

Writes benchmarks/results/canary-homedepot.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = [f"{q['name']}\n{q['metric']} ({q['queries']} q)" for q in report["quality"]]
    diffs = [q["mean_diff"] for q in report["quality"]]
    errors = [[d - q["ci_low"] for d, q in zip(diffs, report["quality"])],
              [q["ci_high"] - d for d, q in zip(diffs, report["quality"])]]
    left.errorbar(diffs, range(len(diffs)), xerr=errors, fmt="o", capsize=6, color="tab:blue")
    left.axvline(0, color="grey", lw=1, ls="--")
    left.set_yticks(range(len(names)), names)
    left.set_xlabel("challenger − champion (mean per query, 95% bootstrap CI)")
    left.set_title(f"decision: {report['decision'].upper()}")
    servers = list(report["slo"])
    for offset, key in ((-0.2, "p50_ms"), (0.2, "p99_ms")):
        right.bar([i + offset for i in range(len(servers))], [report["slo"][s][key] for s in servers], width=0.4,
                  label=key.replace("_ms", ""))
    right.set_xticks(range(len(servers)), servers)
    right.set_ylabel("request latency (ms)")
    right.legend()
    right.set_title("SLO window (server metrics)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/homedepot-minilm.yaml")
    parser.add_argument("--percent", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from benchmarks import machine
    from relevance.chain import Chain
    from relevance.common.files import read_manifest
    from relevance.config import load_config
    from relevance.platform.feature_store import (FEAST_YAML_ENV, materialize_features, repo_project,
                                                  shared_local_store)
    from relevance.serving.canary.local import run_local_canary
    from relevance.student.export import export_bundle
    from relevance.teacher.model import Teacher

    config = load_config(args.config)
    chain = Chain(config)
    dataset = chain.dataset(with_impressions=True)
    workdir = Path(config.workdir)
    challenger = workdir / "export"
    if not (challenger / "bundle.json").exists():
        raise SystemExit(f"{challenger}: run `relevance export -c {args.config}` first")
    champion_student = chain.student_dirs["student_human_only"]
    repo, champion_project = workdir / "feature_repo", None
    towers = {read_manifest(d, "student")["encoder_fingerprint"]
              for d in (champion_student, chain.student_dirs["student"])}
    if len(towers) > 1:
        # The challenger reads tuned towers' item vectors, the champion the frozen encoder's: two feature versions,
        # both materialized into one store (SQLite registry and online store, as a cluster's are shared), each
        # under its own project, and each server reads its bundle's.
        store = shared_local_store(workdir / "canary-local" / "feature-store")
        os.environ[FEAST_YAML_ENV] = str(store)
        frozen = config.model_copy(update={"student": config.student.without_encoder_steps()})
        champion_repo, repo = (workdir / "canary-local" / f"feature-repo-{name}" for name in ("champion", "challenger"))
        materialize_features(frozen, dataset, champion_repo, chain.embeddings_dir)
        materialize_features(chain.student_config(dataset, tune=False), dataset, repo, chain.embeddings_dir)
        champion_project = repo_project(champion_repo)
        if json.loads((challenger / "bundle.json").read_text()).get("feature_project") != repo_project(repo):
            raise SystemExit(f"{challenger} names another feature project than its features' ({repo_project(repo)}):"
                             f" run `relevance features -c {args.config}` and `relevance export` again")
    champion = workdir / "export-human-only"
    made = json.loads((champion / "bundle.json").read_text()) if (champion / "bundle.json").exists() else {}
    if (made.get("student_version") != read_manifest(champion_student, "student")["student_version"]
            or made.get("feature_project") != champion_project):
        for result in export_bundle(champion_student, champion, dataset.items, feature_project=champion_project):
            print(f"{result.path}: max |onnx - torch| {result.max_abs_diff:.2e}")
    started = datetime.now(timezone.utc)
    result = run_local_canary(config, ["--config", str(args.config)], champion, challenger, repo, dataset,
                              Teacher.load(chain.teacher_dir), args.percent, args.requests,
                              workdir / "canary-local")
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    context = {"command": f"python -m benchmarks.canary_homedepot --config {args.config} --percent {args.percent} "
                          f"--requests {args.requests}",
               "machine": machine(),
               "date": started.strftime("%Y-%m-%d"), "wall_seconds": round(seconds, 1),
               "champion": "student trained on human labels only (frozen encoder)",
               "challenger": "student distilled from the teacher" + (
                   " on its tuned towers" + (" and query tower" if config.student.query_tower.enabled else "")
                   + ": its own feature version" if len(towers) > 1 else "")}
    report = {**json.loads(Path(result["json"]).read_text()), "run": context}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "canary-homedepot.json").write_text(json.dumps(report, indent=2))
    markdown = Path(result["report"]).read_text().replace("# Canary analysis", "# Canary analysis on Home Depot", 1)
    markdown += "\n## Run\n\n" + "\n".join(f"- {k}: {v}" for k, v in context.items()) + "\n"
    markdown += "\n![decision and SLOs](canary-homedepot.png)\n"
    (RESULTS / "canary-homedepot.md").write_text(markdown)
    plot(report, RESULTS / "canary-homedepot.png")
    shutil.copy(RESULTS / "canary-homedepot.md", Path(config.workdir) / "canary-local" / "report.md")
    print(markdown)


if __name__ == "__main__":
    main()
