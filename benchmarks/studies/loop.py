"""The data flywheel on Home Depot, simulated from the data we have: one product family (doors) is held out of the
first model, then released as new traffic. Does the monitor notice, does one labelling round on the served
traffic repair the quality, and does the canary act on the refreshed student (and on a worse one) by itself?

    python -m benchmarks.studies --only loop                                  # the study (make report)
    python -m benchmarks.studies.loop --config configs/homedepot-loop-smoke.yaml   # a few-minute smoke run

Phases (each one's output is kept under runs/studies/loop/, and skipped when present: a killed run resumes; a phase
that cannot run, e.g. a command this checkout does not have yet, is reported as not run and its dependants too):

1. **slice**: the family is every product whose title matches ``FAMILIES[FAMILY]``; a family query is one whose
   judged products (impressions, for a query nobody judged) are at least half in the family. The first dataset
   (prepared layout) drops the family products' judgments, the family queries and their impressions. The family
   products stay in the catalog: the first model's feature store must serve them when their traffic arrives
   (unknown items are scored with default features, and the monitor would alert on that artefact rather than on
   the drift), and `relevance select --from-traffic` refuses items outside the catalog, so the refresh could
   never grade them. Family queries of the train split (and unjudged ones) are the **released** traffic; family
   queries of valid/test are the **new-slice evaluation** set, never served before the refresh nor graded. To fit
   2 cores, the study's scale keeps 1,600 of the ~3,300 non-family train queries (~10k pairs); the rest is whole.
2. **first**: `relevance run`, `features`, `export` with configs/homedepot-loop.yaml.
3. **detect**: the first model serves (`relevance serve --traffic-dir`); windows of ``window`` requests, each a
   query with its BM25 top-``monitor.candidates`` (the monitor's own reference retrieval): undrifted windows are
   training-distribution queries (several seeds: the false-alarm rate), released windows have ``n`` family
   queries among them. `relevance monitor` per window: N = the fewest family requests from which every window
   alerted (exit 3), and the false-alarm rate over the undrifted windows.
4. **label**: a release day (each released query once, as many old ones; each query's candidates are the
   products Home Depot showed for it, its judged products or, unjudged, its impressions: the retrieval whose
   results its raters graded), then `relevance select --from-traffic --budget B --strategy entropy`; the raters
   are simulated by Home Depot's grades of those pairs (a pair without one stays ungraded: budget spent for
   nothing, and counted), and `relevance import-labels --round 1`. Both work on a copy of the first workdir's
   data and teacher (<root>/label), so the first run stays what was served and can be monitored again.
5. **refresh**: a new chain run on the labelled dataset (data.source prepared), features, export.
6. **worse**: a deliberately broken challenger: a chain run on the refreshed dataset with every grade inverted
   (4 − g: a label pipeline that flipped the scale), cut short (1,000 teacher pairs, a BM25 top-1 pool) and with
   the student's cross-entropy on the (inverted) human grades weighted 10: it ranks the worst products first.
   (A student left at its random initialisation is no sure loser: on Home Depot's judged candidates, mostly
   relevant, a random order is only ~0.02 nDCG behind a trained one.)
7. **evaluate**: `relevance evaluate` of each bundle on the new-slice evaluation set and on the old test split
   (human grades).
8. **judged**: `relevance monitor --judge` (the first teacher, which never saw the family's labels: it cannot
   favour the refresh; the first student was distilled from it, so if anything it favours the first model, and a
   judged recovery is understated) on windows of new-slice and old queries served by the first and the refreshed
   model. The study sets monitor.judge_min_agreement to 0 knowingly (a cut-down MiniLM teacher agrees with humans
   below the default floor of 0.4) and reports the judge's agreement next to its numbers.
9. **canary**: `relevance canary local --serve` + `relevance canary watch` (registry on SQLite): first → refreshed
   (should promote), then refreshed → worse (should roll back). The labelled evidence is the new-slice
   evaluation set; the teacher judges old judge-holdout traffic, which can block a promotion. The judge is the
   refreshed teacher (the one trained on every judgment, as a refresh run's workdir holds it, the watch's
   default there): the refreshed student imitates it, which leans both decisions towards the expected outcome;
   the labelled evidence is what promotes.

Outputs: benchmarks/results/loop-homedepot.{json,md,png} and the study's record in studies.json / report.html.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

TITLE = "The data flywheel on Home Depot: a held-out product family released as new traffic"
QUESTION = ("With one product family (doors) held out of the first model and then released as traffic: after how "
            "many of its requests does the monitor alert, and how often on undrifted traffic; does judged quality "
            "on the new slice drop and recover after one labelling round of a stated budget; does the canary "
            "promote the refreshed student by itself, and roll back a worse one?")
ROOT = Path(__file__).resolve().parents[2]
LOOP_CONFIG = ROOT / "configs" / "homedepot-loop.yaml"
HOMEDEPOT = ROOT.parent / "shared" / "data" / "homedepot"
RESULTS_NAME = "loop-homedepot"
# Candidate families (title patterns): the slice phase tabulates each one's share of the judged queries, which is
# why doors: 5.9% of the judged queries (3-8% wanted), a vocabulary of its own (prehung, slab, hinge, knob,
# deadbolt, storm, garage), enough train-split queries to release and valid/test ones to evaluate on.
FAMILIES = {"door": r"\bdoors?\b", "lighting": r"\b(?:light|lights|lighting|lamp|chandelier|sconce|pendant)\b",
            "faucet": r"\bfaucets?\b", "paint": r"\b(?:paint|primer|stain)\b", "tile": r"\btiles?\b",
            "shelving/cabinets": r"\b(?:shelf|shelves|shelving|cabinet|cabinets)\b"}
FAMILY = "door"
MOSTLY = 0.5  # a family query: at least this share of its judged (or shown) products are in the family
ENV = {"HF_HUB_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
SERVER_ENV = {**ENV, "RELEVANCE_THREADS": "1"}
GRADED_TOP_K = 10  # select --from-traffic takes each served list's top this many (what users saw)
SHOWN_FALLBACK = 100  # a release-day query with no shown product in the catalog gets BM25's top this many
# The broken challenger's chain (on inverted grades), cut short: only its ranking's direction matters, which the
# student learns from the human grades themselves (cross-entropy, weighted over the short teacher's soft labels).
WORSE = {"teacher": {"max_train_pairs": 1000}, "candidates": {"top_k": 1, "include_impressions": False},
         "student": {"epochs": 10, "ce_weight": 10.0}}


@dataclass(frozen=True)
class Scale:
    """How much of everything a run uses: the study's full scale, or the smoke run's."""

    name: str
    sizes: dict = field(default_factory=dict)  # subsample: query group → at most this many queries; "items" → catalog
    window: int = 400  # requests per detection window
    family_counts: tuple[int, ...] = (10, 25, 50, 100, 200, 400)
    seeds: tuple[int, ...] = (0, 1)  # released windows per family count
    undrifted_seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    budget: int = 1500  # pairs sent to the (simulated) raters
    per_query: int = 5
    judge_lists: int = 150
    judge_depth: int = 20


SCALES = {
    # The first model trains on 1,600 of the ~3,300 non-family train queries (~10k pairs): one teacher epoch over
    # them fits 2 cores; valid, test, the unjudged queries and the family are kept whole.
    "full": Scale("full", sizes={"train": 1600}),
    "smoke": Scale("smoke", sizes={"train": 60, "valid": 24, "test": 24, "unjudged": 60, "family_train": 24,
                                   "family_eval": 16, "family_unjudged": 12, "items": 900},
                   window=40, family_counts=(8, 40), seeds=(0,), undrifted_seeds=(0, 1), budget=60, per_query=3,
                   judge_lists=20, judge_depth=10),
}


# ------------------------------------------------------------------------------------------------------------
# The slice (pure functions on the canonical tables; tests/benchmarks/test_loop_study.py)
# ------------------------------------------------------------------------------------------------------------


def normalized(texts: pd.Series) -> pd.Series:
    from relevance.data.splits import normalize_query

    return texts.astype(str).map(normalize_query)


def family_items(items: pd.DataFrame, pattern: str) -> set[str]:
    """The family: every item whose title matches ``pattern`` (case-insensitive regular expression)."""
    titles = items["title"].fillna("").astype(str).str.lower()
    return set(items.loc[titles.str.contains(pattern, regex=True), "item_id"].astype(str))


def family_queries(dataset, items: set[str], mostly: float = MOSTLY) -> set[str]:
    """Query ids whose judged items are at least ``mostly`` in the family (a query nobody judged: its shown
    items); and every other id of the same normalised text, so a family query never stays under a second id."""
    judged = dataset.judgments.assign(family=dataset.judgments["item_id"].isin(items))
    share = judged.groupby("query_id")["family"].mean()
    if dataset.impressions is not None and len(dataset.impressions):
        shown = dataset.impressions[~dataset.impressions["query_id"].isin(share.index)]
        share = pd.concat([share, shown.assign(family=shown["item_id"].isin(items))
                           .groupby("query_id")["family"].mean()])
    ids = set(share[share >= mostly].index)
    text = normalized(dataset.queries.set_index("query_id")["query"])
    return set(text[text.isin(set(text.reindex(sorted(ids)).dropna()))].index)


def query_groups(dataset, family: set[str]) -> pd.Series:
    """Each query id's group: train / valid / test / unjudged, or family_train / family_eval / family_unjudged."""
    split = (dataset.judgments.drop_duplicates("query_id").set_index("query_id")["split"]
             .reindex(dataset.queries["query_id"]).fillna("unjudged"))
    member = split.index.isin(sorted(family))
    kind = split.map({"train": "train", "valid": "eval", "test": "eval", "unjudged": "unjudged"})
    return pd.Series(np.where(member, "family_" + kind, split), index=split.index, name="group")


def subsample(dataset, groups: pd.Series, sizes: dict, seed: int = 0):
    """At most ``sizes[group]`` queries of each group (all of a group not named), with their judgments and
    impressions; the catalog cut to ``sizes['items']`` items (the referenced ones first) when named."""
    from relevance.data.schema import Dataset

    rng = np.random.default_rng(seed)
    keep = []
    for name in sorted(groups.unique()):
        ids = sorted(groups.index[groups == name])
        limit = sizes.get(name)
        if limit is not None and limit < len(ids):
            ids = sorted(rng.choice(ids, limit, replace=False).tolist())
        keep += ids
    judgments = dataset.judgments[dataset.judgments["query_id"].isin(keep)]
    impressions = dataset.impressions
    if impressions is not None:
        impressions = impressions[impressions["query_id"].isin(keep)]
    items = dataset.items
    if "items" in sizes:
        used = set(judgments["item_id"]) | (set(impressions["item_id"]) if impressions is not None else set())
        others = sorted(set(items["item_id"]) - used)
        extra = rng.choice(others, min(len(others), max(0, sizes["items"] - len(used))), replace=False)
        items = items[items["item_id"].isin(used | set(extra.tolist()))]
    return Dataset(dataset.info, items.reset_index(drop=True),
                   dataset.queries[dataset.queries["query_id"].isin(keep)].reset_index(drop=True),
                   judgments.reset_index(drop=True), None if impressions is None else impressions.reset_index(drop=True))


@dataclass
class Slice:
    """The first model's dataset, what is released as traffic, and the new slice's evaluation judgments."""

    first: object  # relevance.data.schema.Dataset
    family_items: set[str]
    family_queries: set[str]
    release: pd.DataFrame  # query_id, query, split (train | unjudged): the released traffic's queries
    evaluation: pd.DataFrame  # the family's valid/test judgments, with the query text
    removed: dict


def slice_family(dataset, pattern: str, mostly: float = MOSTLY) -> Slice:
    """The dataset without the family's judgments, the family queries and their impressions (module docstring)."""
    from relevance.data.schema import Dataset

    items = family_items(dataset.items, pattern)
    queries = family_queries(dataset, items, mostly)
    judgments, impressions = dataset.judgments, dataset.impressions
    if impressions is None:
        impressions = pd.DataFrame({"query_id": pd.Series(dtype=str), "item_id": pd.Series(dtype=str)})
    keep_judged = ~judgments["item_id"].isin(items) & ~judgments["query_id"].isin(queries)
    keep_shown = ~impressions["item_id"].isin(items) & ~impressions["query_id"].isin(queries)
    first = Dataset(dataset.info, dataset.items, dataset.queries[~dataset.queries["query_id"].isin(queries)]
                    .reset_index(drop=True), judgments[keep_judged].reset_index(drop=True),
                    impressions[keep_shown].reset_index(drop=True))
    split = (judgments.drop_duplicates("query_id").set_index("query_id")["split"])
    family = dataset.queries[dataset.queries["query_id"].isin(queries)][["query_id", "query"]].copy()
    family["split"] = split.reindex(family["query_id"]).fillna("unjudged").to_numpy()
    held = family[family["split"].isin(["valid", "test"])]
    release = family[family["split"].isin(["train", "unjudged"])
                     & ~normalized(family["query"]).isin(set(normalized(held["query"])))]
    evaluation = judgments[judgments["query_id"].isin(held["query_id"])].merge(held[["query_id", "query"]],
                                                                               on="query_id")
    removed = {"family_items": len(items), "family_queries": len(queries),
               "judgments_of_family_items_in_other_queries": int((judgments["item_id"].isin(items)
                                                                  & ~judgments["query_id"].isin(queries)).sum()),
               "judgments_of_family_queries": int(judgments["query_id"].isin(queries).sum()),
               "impressions_removed": int((~keep_shown).sum())}
    return Slice(first, items, queries, release.reset_index(drop=True), evaluation.reset_index(drop=True), removed)


def draw(pool: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` of ``pool``, without replacement until the pool is used up (then another shuffled pass)."""
    out: list[str] = []
    while len(out) < count and pool:
        out += [pool[i] for i in rng.permutation(len(pool))[:count - len(out)]]
    return out


def traffic_window(undrifted: list[str], released: list[str], size: int, family_count: int,
                   seed: int) -> list[tuple[str, bool]]:
    """One window: ``family_count`` released queries and ``size - family_count`` undrifted ones, shuffled;
    each as (query, is_family)."""
    if not 0 <= family_count <= size:
        raise ValueError(f"family_count must be in 0..{size}, got {family_count}")
    rng = np.random.default_rng([seed, family_count])
    window = ([(q, True) for q in draw(released, family_count, rng)]
              + [(q, False) for q in draw(undrifted, size - family_count, rng)])
    return [window[i] for i in rng.permutation(len(window))]


def family_table(dataset) -> list[list]:
    """Why this family: each candidate's share of the judged queries, and what it would release and evaluate."""
    rows = []
    for name, pattern in FAMILIES.items():
        items = family_items(dataset.items, pattern)
        groups = query_groups(dataset, family_queries(dataset, items)).value_counts()
        judged = int(groups.get("family_train", 0) + groups.get("family_eval", 0))
        total = dataset.judgments["query_id"].nunique()
        rows.append([name, pattern, len(items), judged, round(judged / total, 4), int(groups.get("family_train", 0)),
                     int(groups.get("family_eval", 0)), int(groups.get("family_unjudged", 0))])
    return rows


# ------------------------------------------------------------------------------------------------------------
# The public CLI, servers and traffic
# ------------------------------------------------------------------------------------------------------------


class InterfaceMissing(RuntimeError):
    """A command or option this checkout does not have (yet): the phase is reported as not run."""


class CommandFailed(RuntimeError):
    pass


def cli(args: list, log: Path, check: bool = True, env: dict | None = None) -> tuple[int, str]:
    """``relevance <args>`` (this interpreter's), output to ``log``; (exit code, output)."""
    args = [str(a) for a in args]
    print(f"   $ relevance {shlex.join(args)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        code = subprocess.run([sys.executable, "-m", "relevance.cli", *args], check=False, cwd=ROOT, stdout=handle,
                              stderr=subprocess.STDOUT, env={**os.environ, **ENV, **(env or {})}).returncode
    output = log.read_text()
    if code == 2 and ("No such option" in output or "No such command" in output):
        raise InterfaceMissing(f"`relevance {args[0]}` here has no such option/command: "
                               + " ".join(output.split())[-300:])
    if check and code != 0:
        raise CommandFailed(f"`relevance {shlex.join(args[:3])} …` exited {code} (log {log}): "
                            + " ".join(output.split())[-600:])
    return code, output


def now() -> datetime:
    return datetime.now(UTC)


def send(url: str, model: str, requests: list[tuple[str, list[str]]], prefix: str) -> dict:
    """Each (query, candidates) as one V1 rerank request; the window they make ([since, until))."""
    import httpx

    since = now()
    with httpx.Client(timeout=60) as client:
        for n, (query, candidates) in enumerate(requests):
            response = client.post(f"{url}/v1/models/{model}:predict", headers={"x-request-id": f"{prefix}-{n}"},
                                   json={"instances": [{"query": query, "candidates": candidates}]})
            if response.status_code != 200:
                raise CommandFailed(f"the server answered {response.status_code} to {query!r}: {response.text[:300]}")
    until = now() + timedelta(milliseconds=1)
    return {"since": since.isoformat(), "until": until.isoformat(), "requests": len(requests)}


def wait_readable(traffic_dir: Path, window: dict, timeout: float = 180.0) -> None:
    """Until every record of ``window`` is compacted (readers see a record within serving.traffic_segment_seconds)."""
    from relevance.traffic import read_traffic

    since, until = datetime.fromisoformat(window["since"]), datetime.fromisoformat(window["until"])
    deadline = time.time() + timeout
    while len(read_traffic(traffic_dir, since, until, columns=["request_id"])) < window["requests"]:
        if time.time() > deadline:
            raise CommandFailed(f"{traffic_dir}: the window's {window['requests']} records were not all readable "
                                f"after {timeout:.0f} s")
        time.sleep(1.0)


class Retrieval:
    """BM25 top-k from a serving bundle's own index (the catalog's), cached per query."""

    def __init__(self, bundle: Path, k: int):
        from relevance.models.bm25 import BM25Index

        self.index, self.k, self.cache = BM25Index.load(bundle / "bm25"), k, {}

    def __call__(self, query: str) -> list[str]:
        if query not in self.cache:
            self.cache[query] = [str(i) for i in self.index.top_k(query, self.k)[0].tolist()]
        return self.cache[query]

    def retrievable(self, queries) -> list[str]:
        return sorted({q for q in queries if self(q)})


@contextmanager
def served(config: Path, traffic_dir: Path, log: Path, bundle: Path | None = None):
    """`relevance serve --traffic-dir` on loopback, yielded as its URL."""
    from relevance.serving.process import free_port, model_server

    args = ["serve", "--config", str(config), "--traffic-dir", str(traffic_dir)]
    if bundle is not None:
        args += ["--bundle", str(bundle)]
    print(f"   $ relevance {shlex.join(args)}", flush=True)
    with model_server(args, free_port(), log, env={**os.environ, **SERVER_ENV}, cwd=ROOT) as url:
        yield url


def monitor(config: Path, traffic_dir: Path, window: dict, out: Path, judge: Path | None = None) -> dict:
    """`relevance monitor` on one window: its exit code and what monitor.json says that the study uses."""
    args = ["monitor", "--config", config, "--traffic-dir", traffic_dir, "--since", window["since"], "--until",
            window["until"], "--out", out] + (["--judge", judge] if judge else [])
    code, _ = cli(args, out / "monitor.log", check=False)
    if code not in (0, 3, 4, 5):
        raise CommandFailed(f"relevance monitor exited {code}: {(out / 'monitor.log').read_text()[-600:]}")
    report = json.loads((out / "monitor.json").read_text())
    return {"exit_code": code, "alerts": report.get("alerts", []), "verdict": report.get("verdict"),
            "records": report.get("records_of_this_student"), "coverage": report.get("coverage"),
            "psi": {name: row["psi"] for name, row in (report.get("drift") or {}).items()},
            "judged": report.get("judged")}


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def simulate_raters(tasks: list[dict], truth: dict, grade_names: list[str]) -> list[dict]:
    """A Label Studio JSON export of ``tasks`` (select's tasks.json) as Home Depot's raters graded them: the
    pair's grade where the data has one (``truth``: (normalised query, item id) → grade), none otherwise."""
    from relevance.data.splits import normalize_query
    from relevance.labels.annotation import CHOICE, ITEM

    export = []
    for n, task in enumerate(tasks):
        data = task["data"]
        grade = truth.get((normalize_query(data["query"]), str(data["item_id"])))
        annotations = [] if grade is None else [{
            "id": n, "completed_by": 1, "was_cancelled": False,
            "result": [{"from_name": CHOICE, "to_name": ITEM, "type": "choices",
                        "value": {"choices": [grade_names[int(grade)]]}}]}]
        export.append({"id": n, "data": data, "annotations": annotations})
    return export


def summarize_detection(windows: list[dict]) -> dict:
    """False alarms on undrifted windows (with a Clopper-Pearson 95% upper bound), and N: the fewest family
    requests from which every released window alerted (exit 3). A window the monitor could not judge (exit 4, too
    little traffic: no drift computed) is neither an alarm nor a quiet window: it is counted apart, and left out of
    both the false-alarm rate and N."""
    from scipy.stats import beta

    judged = [w for w in windows if w["exit_code"] != 4]
    undrifted = [w for w in judged if w["kind"] == "undrifted"]
    alarms = sum(w["exit_code"] == 3 for w in undrifted)
    trials = len(undrifted)
    if not trials:
        upper = None
    else:
        upper = 1.0 if alarms == trials else float(beta.ppf(0.975, alarms + 1, trials - alarms))
    by_count: dict[int, list] = {}
    for w in judged:
        by_count.setdefault(w["family_requests"], []).append(w)
    rows = []
    for count in sorted(by_count):
        group = by_count[count]
        features = [max(v for k, v in w["psi"].items() if k != "query_novelty") for w in group if w["psi"]]
        rows.append({"family_requests": count, "windows": len(group),
                     "alerts": sum(w["exit_code"] == 3 for w in group),
                     "query_novelty_psi": float(np.mean([w["psi"].get("query_novelty", np.nan) for w in group])),
                     "max_feature_psi": float(np.mean(features)) if features else None,
                     "alert_reasons": sorted({a.split(":")[0] for w in group for a in w["alerts"]})})
    detected = None
    for row in reversed(rows):  # the smallest count from which every larger one alerted in every window
        if row["family_requests"] == 0 or row["alerts"] < row["windows"]:
            break
        detected = row["family_requests"]
    first = next((r["family_requests"] for r in rows if r["family_requests"] and r["alerts"]), None)
    return {"undrifted_windows": trials, "false_alarms": alarms,
            "too_little_traffic": sum(w["exit_code"] == 4 for w in windows),
            "false_alarm_rate": alarms / trials if trials else None, "false_alarm_upper95": upper,
            "detected_at": detected, "first_alert_at": first, "by_count": rows, "windows": windows}


# ------------------------------------------------------------------------------------------------------------
# The phases
# ------------------------------------------------------------------------------------------------------------


class Loop:
    """One run of the study: its workdirs under the first model's workdir's parent, its phases, its record."""

    def __init__(self, config_path: Path, scale: Scale, steps, homedepot: Path = HOMEDEPOT):
        import yaml

        from relevance.config import load_config

        self.config_path = Path(config_path).resolve()
        self.settings = yaml.safe_load(self.config_path.read_text())
        self.config = load_config(self.config_path)
        self.first = self.absolute(self.config.workdir)
        self.root = self.first.parent
        self.dataset_dir = self.absolute(self.config.data.path)
        self.scale, self.steps, self.homedepot = scale, steps, Path(homedepot)
        self.model = self.config.serving.model_name
        self.status: dict[str, dict] = {}
        self.key = {"config": digest(self.settings), "scale": scale.name, "family": FAMILIES[FAMILY],
                    "mostly": MOSTLY}

    @staticmethod
    def absolute(path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else ROOT / path

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def phase(self, name: str, inputs: dict, compute, outputs=()) -> dict:
        """``compute()``'s result, kept in phases/<name>.json; reused while the inputs and outputs are there."""
        path = self.root / "phases" / f"{name}.json"
        key = digest(inputs)
        if path.exists() and all(Path(o).exists() for o in outputs):
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                self.steps.reused.append(name)
                return saved["result"]
        print(f"== loop: {name}", flush=True)
        started = time.perf_counter()
        result = compute()
        result["seconds"] = round(time.perf_counter() - started, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "inputs": inputs, "result": result}, indent=1, default=str))
        os.replace(tmp, path)  # a killed phase leaves no result behind: it is redone
        self.steps.computed.append(name)
        return result

    def guarded(self, name: str, needs: list[str], run) -> dict | None:
        """``run()``, or why not: a phase whose inputs did not run, or whose command this checkout lacks, is
        reported as not run; one that fails, as failed (with the error), and the study goes on."""
        import traceback

        missing = [n for n in needs if self.status.get(n, {}).get("status") != "ran"]
        if missing:
            self.status[name] = {"status": f"not run: needs {', '.join(missing)}"}
            return None
        try:
            result = run()
        except InterfaceMissing as error:
            self.status[name] = {"status": f"not run: {error}"}
        except Exception as error:  # noqa: BLE001 -- reported in the record; the phases after it go on
            traceback.print_exc()
            self.status[name] = {"status": f"failed: {type(error).__name__}: {error}"[:800]}
        else:
            self.status[name] = {"status": "ran", "seconds": result.get("seconds")}
            return result
        print(f"   {name}: {self.status[name]['status']}", flush=True)
        return None

    def derived(self, name: str, workdir: Path, overrides: dict) -> Path:
        """This study's config with another workdir and ``overrides``, checked and written to <root>/<name>.yaml."""
        import yaml

        from relevance.config import build_config

        # Relative paths stay as they are (every command runs in the checkout): the data section of a workdir's
        # config must be the one it was prepared with, or the chain refuses the workdir.
        settings = deep_merge(self.settings, {**overrides, "workdir": str(workdir)})
        build_config(settings.get("profile", "default"), {k: v for k, v in settings.items() if k != "profile"})
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        return path

    def refreshed_overrides(self) -> dict:
        return {"data": {"source": "prepared", "path": str(self.root / "label" / "data")}}

    def version(self, workdir: Path) -> str:
        return json.loads((workdir / "export" / "bundle.json").read_text())["student_version"]

    # -- 1. slice ----------------------------------------------------------------------------------------------
    def slice(self) -> dict:
        files = ("release.parquet", "family_eval.parquet", "old_test.parquet", "items.parquet", "truth.parquet",
                 "shown.parquet")
        return self.phase("slice", {**self.key, "homedepot": str(self.homedepot)}, self._slice,
                          [self.dataset_dir / "dataset.json", *(self.root / f for f in files)])

    def _slice(self) -> dict:
        from relevance.data import homedepot, judge_slices

        full = homedepot.load(self.homedepot)
        pattern = FAMILIES[FAMILY]
        groups = query_groups(full, family_queries(full, family_items(full.items, pattern)))
        candidates = family_table(full)
        sample = subsample(full, groups, self.scale.sizes)
        cut = slice_family(sample, pattern)
        # dataset.json with the judge's slices of this config, as the chain's copy of it will have (the monitor
        # reads a prepared dataset where data.path says, not the copy)
        cut.first.info = replace(cut.first.info, **judge_slices(self.config.data))
        cut.first.save(self.dataset_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        text = sample.query_text
        judged = sample.judgments.assign(text=normalized(text.reindex(sample.judgments["query_id"])).to_numpy())
        judged[["text", "item_id", "grade"]].drop_duplicates(["text", "item_id"]).to_parquet(
            self.root / "truth.parquet", index=False)
        shown = [judged[["text", "item_id"]]]
        if sample.impressions is not None:
            shown.append(sample.impressions.assign(
                text=normalized(text.reindex(sample.impressions["query_id"])).to_numpy())[["text", "item_id"]])
        pd.concat(shown).drop_duplicates().to_parquet(self.root / "shown.parquet", index=False)
        columns = ["query_id", "query", "item_id", "grade", "split"]
        cut.evaluation[columns].to_parquet(self.root / "family_eval.parquet", index=False)
        test = cut.first.split("test")
        test.assign(query=text.reindex(test["query_id"]).to_numpy())[columns].to_parquet(
            self.root / "old_test.parquet", index=False)
        cut.first.items[["item_id", "title"]].to_parquet(self.root / "items.parquet", index=False)
        cut.release.to_parquet(self.root / "release.parquet", index=False)
        first = cut.first
        return {"family": FAMILY, "pattern": pattern, "candidates": candidates, "removed": cut.removed,
                "full": {"items": len(full.items), "judged_queries": int(full.judgments["query_id"].nunique()),
                         "groups": {k: int(v) for k, v in groups.value_counts().items()}},
                "first": {"items": len(first.items), "queries": len(first.queries), "judgments": len(first.judgments),
                          "train_pairs": int((first.judgments["split"] == "train").sum()),
                          "impressions": len(first.impressions)},
                "release_queries": {k: int(v) for k, v in cut.release["split"].value_counts().items()},
                "evaluation": {"queries": int(cut.evaluation["query_id"].nunique()), "pairs": len(cut.evaluation)}}

    # -- 2. the first model, 5. the refresh ----------------------------------------------------------------------
    def first_model(self) -> dict:
        inputs = {**self.key, "data": file_digest(self.dataset_dir / "judgments.parquet")}
        return self.phase("first", inputs, lambda: self._chain(self.config_path, self.first, self.dataset_dir),
                          [self.first / "export" / "bundle.json"])

    def _workdir(self, workdir: Path, data: Path, config: Path) -> None:
        """``workdir`` ready for a chain of ``config`` on ``data``: kept (the chain resumes) while both are what
        it was started with (the config's sections the chain's steps depend on), else started afresh (the chain
        would keep its old copy of the data, or refuse outputs made with other settings); sharing the study's
        embedding cache (content-addressed)."""
        from relevance.chain import STEP_SETTINGS
        from relevance.config import load_config

        loaded = load_config(config)
        sections = sorted({section for names in STEP_SETTINGS.values() for section in names})
        inputs = {"data": [file_digest(data / f"{name}.parquet") for name in ("judgments", "queries", "items")],
                  "config": digest({s: getattr(loaded, s).model_dump(mode="json") for s in sections})}
        marker = workdir / "loop-inputs.json"
        if workdir.exists() and (not marker.exists() or json.loads(marker.read_text()) != inputs):
            shutil.rmtree(workdir)
        shared = self.root / "embeddings"
        shared.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "embeddings").exists():
            (workdir / "embeddings").symlink_to(shared.resolve(), target_is_directory=True)
        marker.write_text(json.dumps(inputs))

    def _chain(self, config: Path, workdir: Path, data: Path, commands=("run", "features", "export")) -> dict:
        """``commands`` (`relevance run`, `features`, `export`) in ``workdir``: resumed, the chain skips what it
        has."""
        self._workdir(workdir, data, config)
        timings = {}
        for command in commands:
            started = time.perf_counter()
            cli([command, "--config", config], self.log(f"{workdir.name}-{command}"))
            timings[command] = round(time.perf_counter() - started, 1)
        report = json.loads((workdir / "report.json").read_text())
        overall = {name: {m: block["overall"].get(m) for m in ("accuracy", "ndcg@10", "ndcg@20")}
                   for name, block in report.get("models", {}).items() if "overall" in block}
        pool = pd.read_parquet(workdir / "pool.parquet", columns=["item_id"])
        family = family_items(pd.read_parquet(self.root / "items.parquet"), FAMILIES[FAMILY])
        bundle = json.loads((workdir / "export" / "bundle.json").read_text())
        return {"timings": timings, "student_version": bundle["student_version"],
                "feature_project": bundle.get("feature_project"), "test": overall,
                "pool_pairs": len(pool), "pool_pairs_with_family_items": int(pool["item_id"].isin(family).sum())}

    def refresh(self) -> dict:
        config = self.derived("refresh", self.root / "refresh", self.refreshed_overrides())
        inputs = {**self.key, "labels": file_digest(self.root / "label" / "data" / "judgments.parquet"),
                  "first": self.version(self.first)}
        return self.phase("refresh", inputs, lambda: self._chain(config, self.root / "refresh",
                                                                self.root / "label" / "data"),
                          [self.root / "refresh" / "export" / "bundle.json"])

    # -- 3. detection ----------------------------------------------------------------------------------------------
    def detect(self) -> dict:
        from relevance.data.schema import Dataset

        retrieval = Retrieval(self.first / "export", self.config.monitor.candidates)
        undrifted = retrieval.retrievable(Dataset.load(self.dataset_dir, with_impressions=False).queries["query"])
        released = retrieval.retrievable(pd.read_parquet(self.root / "release.parquet")["query"])
        traffic = self.root / "traffic" / "detect"
        windows = ([("undrifted", 0, seed) for seed in self.scale.undrifted_seeds]
                   + [("released", count, seed) for count in self.scale.family_counts for seed in self.scale.seeds])
        results, version = [], self.version(self.first)
        with ExitStack() as stack:
            server: dict = {}

            def compute(kind: str, count: int, seed: int, name: str) -> dict:
                if "url" not in server:
                    server["url"] = stack.enter_context(served(self.config_path, traffic, self.log("serve-detect")))
                queries = traffic_window(undrifted, released, self.scale.window, count, seed)
                window = send(server["url"], self.model, [(q, retrieval(q)) for q, _ in queries], name)
                wait_readable(traffic, window)
                return {"kind": kind, "family_requests": count, "seed": seed, "window": window,
                        **monitor(self.config_path, traffic, window, self.root / "monitor" / name)}

            for kind, count, seed in windows:
                name = f"detect-{kind}-{count}-s{seed}"
                inputs = {**self.key, "student": version, "kind": kind, "count": count, "seed": seed,
                          "window": self.scale.window}
                results.append(self.phase(name, inputs, lambda k=kind, c=count, s=seed, n=name: compute(k, c, s, n)))
        summary = summarize_detection(results)
        summary.update({"window": self.scale.window, "psi_alert": self.config.monitor.psi_alert,
                        "undrifted_queries": len(undrifted), "released_queries": len(released),
                        "seconds": round(sum(w.get("seconds", 0) for w in results), 1)})
        return summary

    # -- 4. one labelling round on the released traffic --------------------------------------------------------
    def label(self) -> dict:
        inputs = {**self.key, "student": self.version(self.first), "budget": self.scale.budget,
                  "per_query": self.scale.per_query, "top_k": GRADED_TOP_K}
        return self.phase("label", inputs, self._label, [self.root / "label" / "data" / "judgments.parquet"])

    def _release_day(self) -> list[tuple[str, list[str]]]:
        """Each released query once and as many old ones, with the products Home Depot showed for the query
        (judged or impressions) as candidates."""
        from relevance.data.schema import Dataset

        first = Dataset.load(self.dataset_dir, with_impressions=False)
        retrieval = Retrieval(self.first / "export", SHOWN_FALLBACK)
        shown = pd.read_parquet(self.root / "shown.parquet")
        shown = shown[shown["item_id"].isin(set(first.items["item_id"]))].groupby("text")["item_id"].apply(list)
        family = sorted(set(pd.read_parquet(self.root / "release.parquet")["query"]))
        old = draw(sorted(set(first.queries["query"])), len(family), np.random.default_rng(11))
        requests = []
        for query in family + old:
            candidates = shown.get(normalized(pd.Series([query]))[0]) or retrieval(query)
            if candidates:
                requests.append((query, candidates))
        return [requests[i] for i in np.random.default_rng(12).permutation(len(requests))]

    def _label(self) -> dict:
        from relevance.data.schema import DatasetInfo

        workdir, traffic = self.root / "label", self.root / "traffic" / "label"
        for stale in (workdir, traffic):  # select and import-labels change the data: a redo starts over
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(self.first / "data", workdir / "data")
        shutil.copytree(self.first / "teacher", workdir / "teacher", copy_function=os.link)
        with served(self.config_path, traffic, self.log("serve-label")) as url:
            window = send(url, self.model, self._release_day(), "release-day")
            wait_readable(traffic, window)
        project = workdir / "project"
        cli(["select", "--config", self.config_path, "--workdir", workdir, "--from-traffic", traffic, "--since",
             window["since"], "--budget", self.scale.budget, "--per-query", self.scale.per_query, "--strategy",
             "entropy", "--top-k", GRADED_TOP_K, "--out", project], self.log("select"))
        tasks = json.loads((project / "tasks.json").read_text())
        truth = pd.read_parquet(self.root / "truth.parquet")
        names = DatasetInfo.load(workdir / "data").grade_names
        export = simulate_raters(tasks, dict(zip(zip(truth["text"], truth["item_id"]), truth["grade"])), names)
        (workdir / "export.json").write_text(json.dumps(export))
        cli(["import-labels", workdir / "export.json", "--round", 1, "--config", self.config_path, "--workdir",
             workdir], self.log("import-labels"))
        released = set(normalized(pd.read_parquet(self.root / "release.parquet")["query"]))
        family = [normalized(pd.Series([t["data"]["query"]]))[0] in released for t in tasks]
        graded = [bool(t["annotations"]) for t in export]
        grades = [names.index(t["annotations"][0]["result"][0]["value"]["choices"][0]) for t in export
                  if t["annotations"]]
        return {"window": window, "budget": self.scale.budget, "per_query": self.scale.per_query,
                "selected": len(tasks), "selected_family": int(sum(family)),
                "graded": int(sum(graded)), "graded_family": int(sum(f and g for f, g in zip(family, graded))),
                "queries": len({t["data"]["query_id"] for t in tasks}),
                "grades": np.bincount(grades, minlength=len(names)).tolist()}

    # -- 6. the deliberately worse challenger ------------------------------------------------------------------
    def worse(self) -> dict:
        inputs = {**self.key, "refresh": self.version(self.root / "refresh"), "settings": WORSE}
        return self.phase("worse", inputs, self._worse, [self.root / "worse" / "export" / "bundle.json"])

    def _worse(self) -> dict:
        from relevance.data.schema import Dataset

        refresh, workdir, data = self.root / "refresh", self.root / "worse", self.root / "worse-data"
        source = Dataset.load(refresh / "data", with_impressions=True)
        judgments = source.judgments.assign(grade=source.num_grades - 1 - source.judgments["grade"])
        info = source.info
        if "raw_score" in judgments and info.raw_score_min is not None:
            judgments["raw_score"] = info.raw_score_min + info.raw_score_max - judgments["raw_score"]
        Dataset(info, source.items, source.queries, judgments, source.impressions).save(data)
        config = self.derived("worse", workdir, {"data": {"source": "prepared", "path": str(data)}, **WORSE})
        self._workdir(workdir, data, config)
        (workdir / "feature_repo").mkdir(exist_ok=True)  # the refreshed run's feature version (same catalog)
        for name in ("feature_store.yaml", "embedding.json"):  # its project, and the encoder that embedded it
            shutil.copy2(refresh / "feature_repo" / name, workdir / "feature_repo")
        return {"settings": WORSE, **self._chain(config, workdir, data, commands=("run", "export"))}

    # -- 7. human-graded quality of each bundle on both slices -------------------------------------------------
    def evaluate(self) -> dict:
        sets = {"new slice": self.root / "family_eval.parquet", "old test": self.root / "old_test.parquet"}
        out = {}
        for model, workdir in self.bundles().items():
            for name, path in sets.items():
                slug = f"evaluate-{model}-{name.replace(' ', '-')}"
                target = self.root / "evaluate" / f"{slug}.json"

                def compute(bundle=workdir / "export", path=path, target=target, slug=slug) -> dict:
                    cli(["evaluate", "--model", bundle, "--items", self.root / "items.parquet", "--judgments", path,
                         "--out", target, "--cache-dir", self.root / "embeddings"], self.log(slug))
                    overall = json.loads(target.read_text())["overall"]
                    return {m: overall.get(m) for m in ("ndcg@10", "ndcg@20", "accuracy", "num_pairs")}

                inputs = {"bundle": self.version(workdir), "judgments": file_digest(path)}
                out.setdefault(model, {})[name] = self.phase(slug, inputs, compute, [target])
        return {"models": out, "seconds": round(sum(r["seconds"] for m in out.values() for r in m.values()), 1)}

    def bundles(self) -> dict[str, Path]:
        """The exported students the phases so far made: first, refreshed, worse."""
        names = {"first": self.first, "refreshed": self.root / "refresh", "worse": self.root / "worse"}
        ran = {"first": "first", "refreshed": "refresh", "worse": "worse"}
        return {name: path for name, path in names.items()
                if self.status.get(ran[name], {}).get("status") == "ran"}

    # -- 8. judged quality of the served lists -----------------------------------------------------------------
    def judged(self) -> dict:
        retrieval = Retrieval(self.first / "export", self.config.monitor.candidates)  # the catalog's BM25
        family = retrieval.retrievable(pd.read_parquet(self.root / "family_eval.parquet")["query"])
        old = draw(retrieval.retrievable(pd.read_parquet(self.root / "old_test.parquet")["query"]), len(family),
                   np.random.default_rng(7))
        judge = self.first / "teacher"  # never saw a family label: it cannot favour the refresh
        settings = {"min_records": len(family), "max_records": max(len(family), 400),
                    "judge_lists": min(self.scale.judge_lists, len(family)), "judge_depth": self.scale.judge_depth,
                    "judge_k": 10, "judge_min_agreement": 0.0}
        from relevance.config import RunConfig

        known = RunConfig.model_fields["monitor"].annotation.model_fields
        missing = sorted(set(settings) - set(known))
        if missing:
            raise InterfaceMissing(f"monitor settings {missing} are not in this checkout's config")
        out = {}
        for model, workdir in (("first", self.first), ("refreshed", self.root / "refresh")):
            overrides = {} if model == "first" else self.refreshed_overrides()
            config = self.derived(f"monitor-{model}", workdir, {**overrides, "monitor": settings})
            out[model] = self._judged_windows(model, config, workdir, {"new slice": family, "old": old}, judge)
        return {"models": out, "judge": str(judge), "queries": len(family),
                "seconds": round(sum(r["seconds"] for m in out.values() for r in m.values()), 1)}

    def _judged_windows(self, model: str, config: Path, workdir: Path, slices: dict, judge: Path) -> dict:
        retrieval = Retrieval(workdir / "export", self.config.monitor.candidates)
        traffic = self.root / "traffic" / f"judged-{model}"
        out = {}
        with ExitStack() as stack:
            server: dict = {}

            def compute(name: str, queries: list[str], slug: str) -> dict:
                if "url" not in server:
                    server["url"] = stack.enter_context(served(config, traffic, self.log(f"serve-judged-{model}")))
                window = send(server["url"], self.model, [(q, retrieval(q)) for q in queries], slug)
                wait_readable(traffic, window)
                report = monitor(config, traffic, window, self.root / "monitor" / slug, judge)
                judged = report.pop("judged") or {}
                if "overall" not in judged:
                    raise CommandFailed(f"monitor --judge reported no judged quality: {judged.get('refused', judged)}")
                return {**report, "window": window, "judged": judged}

            for name, queries in slices.items():
                slug = f"judged-{model}-{name.replace(' ', '-')}"
                inputs = {"student": self.version(workdir), "judge": file_digest(judge / "manifest.json"),
                          "queries": digest(queries), "scale": self.scale.name}
                out[name] = self.phase(slug, inputs, lambda n=name, q=queries, s=slug: compute(n, q, s))
        return out

    # -- 9. the canary, promote and rollback -------------------------------------------------------------------
    def canary_data(self) -> Path:
        """The canary's dataset (<root>/canary/data): the refreshed run's, whose test split is the new slice's
        held-out queries with their human grades: what the labelled replay compares the two students on."""
        from relevance.data.schema import DEFAULT_LOCALE, Dataset

        refreshed = Dataset.load(self.root / "refresh" / "data", with_impressions=True)
        held = pd.read_parquet(self.root / "family_eval.parquet")
        judgments = refreshed.judgments[refreshed.judgments["split"] != "test"]
        judgments = pd.concat([judgments, held[["query_id", "item_id", "grade"]].assign(split="test")],
                              ignore_index=True)
        queries = pd.concat([refreshed.queries, held[["query_id", "query"]].drop_duplicates("query_id")
                             .assign(locale=DEFAULT_LOCALE)], ignore_index=True).drop_duplicates("query_id")
        data = self.root / "canary" / "data"
        Dataset(refreshed.info, refreshed.items, queries, judgments, refreshed.impressions).validated().save(data)
        return data

    def canary(self, tag: str, champion: str, challenger: str) -> dict:
        bundles = self.bundles()
        inputs = {**self.key, "champion": self.version(bundles[champion]), "scale": self.scale.name,
                  "challenger": self.version(bundles[challenger]), "eval": file_digest(self.root / "family_eval.parquet")}
        return self.phase(f"canary-{tag}", inputs, lambda: self._canary(tag, bundles[champion], bundles[challenger]))

    def _canary(self, tag: str, champion: Path, challenger: Path) -> dict:
        """Champion registered as such, the challenger as a new version; `relevance canary local --serve` runs
        both behind the splitter; the canary starts at 10% (the registry's canary alias and the splitter's
        share, as `relevance canary start` does on a cluster); `relevance canary watch` decides and acts."""
        from relevance.serving.canary.rollout import apply, plan_start
        from relevance.serving.canary.watch import SplitterTarget, aliases

        from relevance.config import load_config
        from relevance.platform.registry import CHAMPION, Registry

        out = self.root / f"canary-{tag}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh registry: a redone canary starts from nothing
        self.canary_data()
        config_path = self.derived(f"canary-{tag}", self.root / "canary", {
            **self.refreshed_overrides(), "registry": {"tracking_uri": f"sqlite:///{out / 'mlflow.db'}"}})
        config = load_config(config_path)
        registry, name = Registry(config.registry), config.registry.student_name
        for role, workdir in (("champion", champion), ("challenger", challenger)):
            tags = {"feature_version": json.loads((workdir / "export" / "bundle.json").read_text())
                    .get("feature_project") or ""}
            version = registry.register(name, workdir / "student", {}, {}, tags,
                                        alias=CHAMPION if role == "champion" else None, key=f"loop-{workdir.name}")
        local = out / "local"
        log = self.log(f"canary-{tag}-local")
        command = [sys.executable, "-m", "relevance.cli", "canary", "local", "--config", str(config_path),
                   "--champion-bundle", str(champion / "export"), "--challenger-bundle", str(challenger / "export"),
                   "--feature-repo", str(self.root / "refresh" / "feature_repo"), "--percent", "10", "--requests",
                   "0", "--serve", "--out", str(local)]
        print(f"   $ relevance {shlex.join(command[3:])} &", flush=True)
        with open(log, "w") as handle:
            process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       env={**os.environ, **SERVER_ENV})
        try:
            state = wait_for_file(local / "local-canary.json", process, log)
            splitter = SplitterTarget(state["splitter_url"])
            started = apply(config, plan_start(config, registry, version, 10), send=splitter.send)
            code, _ = cli(["canary", "watch", "--config", config_path, "--splitter-url", state["splitter_url"],
                           "--champion-url", state["urls"]["champion"], "--challenger-url", state["urls"]["challenger"],
                           "--teacher", self.root / "refresh" / "teacher", "--rounds", 1, "--out", out / "watch"],
                          self.log(f"canary-{tag}-watch"), check=False)
            if code not in (0, 3):
                raise CommandFailed(f"relevance canary watch exited {code}: "
                                    + " ".join(self.log(f"canary-{tag}-watch").read_text().split())[-600:])
            analysis = json.loads((out / "watch" / "canary-analysis.json").read_text())
            share, after = splitter.traffic().percent, aliases(registry, name)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        return {"champion": champion.name, "challenger": challenger.name, "challenger_version": version,
                "start": started, "watch_exit": code, "decision": analysis["decision"],
                "reasons": analysis["reasons"], "action": analysis.get("context", {}).get("action"),
                "quality": analysis.get("quality", []), "slo": analysis.get("slo", {}),
                "splitter_share_after": share, "aliases_after": after}

    # -- all of it ---------------------------------------------------------------------------------------------
    def run(self) -> dict:
        plan = [("slice", [], self.slice), ("first", ["slice"], self.first_model), ("detect", ["first"], self.detect),
                ("label", ["first"], self.label), ("refresh", ["label"], self.refresh),
                ("worse", ["refresh"], self.worse), ("evaluate", ["first"], self.evaluate),
                ("judged", ["refresh"], self.judged),
                ("canary-promote", ["refresh"], lambda: self.canary("promote", "first", "refreshed")),
                ("canary-rollback", ["worse"], lambda: self.canary("rollback", "refreshed", "worse"))]
        results = {}
        for name, needs, run in plan:
            results[name] = self.guarded(name, needs, run)
        return results


def wait_for_file(path: Path, process: subprocess.Popen, log: Path, timeout: float = 600) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        if process.poll() is not None:
            raise CommandFailed(f"`relevance canary local --serve` exited {process.returncode}: "
                                + " ".join(log.read_text().split())[-600:])
        time.sleep(0.5)
    raise CommandFailed(f"{path} did not appear in {timeout:.0f} s (log {log})")


# ------------------------------------------------------------------------------------------------------------
# The record: tables, figures, the answer, loop-homedepot.{json,md,png}
# ------------------------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def tables(results: dict, status: dict) -> list[dict]:
    from benchmarks.studies import table

    out = []
    cut = results.get("slice")
    if cut:
        out.append(table(f"Candidate families on the whole of Home Depot (a family query: at least {MOSTLY:.0%} of "
                         "its judged products match the title pattern); the study holds out "
                         f"'{cut['family']}'", ["family", "title pattern", "products", "judged queries",
                                                "share of judged queries", "train (released)", "valid+test (evaluated)",
                                                "unjudged (released)"], cut["candidates"]))
        first = results.get("first") or {}
        rows = [[k.replace("_", " "), v] for k, v in cut["removed"].items()]
        rows += [[f"first dataset: {k.replace('_', ' ')}", v] for k, v in cut["first"].items()]
        rows += [[f"released queries ({k})", v] for k, v in cut["release_queries"].items()]
        rows += [["new-slice evaluation queries (valid+test)", cut["evaluation"]["queries"]],
                 ["new-slice evaluation pairs", cut["evaluation"]["pairs"]]]
        if first:
            rows += [["first pool: pairs", first["pool_pairs"]],
                     ["first pool: pairs with a family product (BM25 candidates of other queries)",
                      first["pool_pairs_with_family_items"]]]
        out.append(table("The slice", ["what", "count"], rows))
    detect = results.get("detect")
    if detect:
        out.append(table(f"Detection: windows of {detect['window']} requests, `relevance monitor` per window "
                         f"(alert: exit 3; PSI alert above {detect['psi_alert']})",
                         ["family requests", "share", "windows", "alerts", "query-novelty PSI (mean)",
                          "largest feature/score PSI (mean)", "alerts on"],
                         [[r["family_requests"], round(r["family_requests"] / detect["window"], 3), r["windows"],
                           r["alerts"], r["query_novelty_psi"], r["max_feature_psi"], ", ".join(r["alert_reasons"])]
                          for r in detect["by_count"]]))
    label = results.get("label")
    if label:
        out.append(table("One labelling round: `relevance select --from-traffic --strategy entropy` on the release "
                         "day's traffic, raters simulated by Home Depot's grades", ["what", "count"],
                         [["budget (the most pairs select may send)", label["budget"]],
                          ["selected (sent to raters)", label["selected"]],
                          ["selected, of released (family) queries", label["selected_family"]],
                          ["graded (Home Depot has the pair's grade)", label["graded"]],
                          ["graded, of released queries", label["graded_family"]],
                          [f"grades 0..{len(label['grades']) - 1} of the graded pairs",
                           " / ".join(map(str, label["grades"]))]]))
    quality = quality_rows(results)
    if quality:
        out.append(table("Quality by slice: human grades (`relevance evaluate` of each serving bundle) and the "
                         "first teacher's judged nDCG@10 of the served lists (`relevance monitor --judge`, 95% CI)",
                         ["model", "slice", "nDCG@10 (human)", "accuracy (human)", "judged nDCG@10",
                          "judged CI low", "judged CI high", "lists judged"], quality))
    canaries = [(tag, results.get(f"canary-{tag}")) for tag in ("promote", "rollback")]
    rows = []
    for tag, c in canaries:
        if c:
            evidence = "; ".join(f"{q['name']} {q['metric']} {q['mean_diff']:+.4f} ({q['ci_low']:+.4f} .. "
                                 f"{q['ci_high']:+.4f}, {q['queries']} q)" for q in c["quality"])
            rows.append([f"{c['champion']} → {c['challenger']}", c["decision"], c["watch_exit"], c["action"], evidence,
                         c["splitter_share_after"]])
    if rows:
        out.append(table("The canary: `relevance canary local --serve` + `relevance canary watch` (acts by itself)",
                         ["champion → challenger", "decision", "watch exit", "action",
                          "evidence (challenger − champion, 95% CI)", "challenger share after"], rows))
    out.append(table("Phases", ["phase", "status", "seconds"],
                     [[name, s["status"], s.get("seconds")] for name, s in status.items()]))
    return out


def quality_rows(results: dict) -> list[list]:
    human = (results.get("evaluate") or {}).get("models", {})
    judged = (results.get("judged") or {}).get("models", {})
    rows = []
    for model in ("first", "refreshed", "worse"):
        for name, judged_name in (("new slice", "new slice"), ("old test", "old")):
            h = human.get(model, {}).get(name)
            j = (judged.get(model, {}).get(judged_name) or {}).get("judged", {}).get("overall")
            if h or j:
                rows.append([model, name, (h or {}).get("ndcg@10"), (h or {}).get("accuracy"),
                             (j or {}).get("mean"), (j or {}).get("ci_low"), (j or {}).get("ci_high"),
                             (j or {}).get("n")])
    return rows


def figures(results: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.studies import figure_png

    out = {}
    detect = results.get("detect")
    if detect:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        rows = detect["by_count"]
        x = [r["family_requests"] for r in rows]
        ax.plot(x, [r["alerts"] / r["windows"] for r in rows], "o-", color="tab:red", label="windows alerting")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(f"family (new-slice) requests in a window of {detect['window']}")
        ax.set_ylabel("share of windows alerting")
        twin = ax.twinx()
        twin.plot(x, [r["query_novelty_psi"] for r in rows], "s--", color="tab:blue", label="query-novelty PSI")
        twin.plot(x, [r["max_feature_psi"] for r in rows], "^:", color="tab:green",
                  label="largest feature/score PSI")
        twin.axhline(detect["psi_alert"], color="grey", lw=0.8)
        twin.set_ylabel("PSI (mean over windows)")
        fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
        out["Detection: the monitor's alerts and drift statistics against the family's share of a window "
            "(0: undrifted windows, the false alarms)"] = figure_png(fig)
        plt.close(fig)
    quality = quality_rows(results)
    if quality:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        labels = [f"{m}\n{s}" for m, s, *_ in quality]
        human = [(i, r[2]) for i, r in enumerate(quality) if r[2] is not None]  # no bar where nothing was measured
        ax.bar([i - 0.2 for i, _ in human], [v for _, v in human], 0.4, label="nDCG@10, human grades")
        judged = [(i, r) for i, r in enumerate(quality) if r[4] is not None]
        if judged:
            ax.errorbar([i + 0.2 for i, _ in judged], [r[4] for _, r in judged],
                        yerr=[[r[4] - r[5] for _, r in judged], [r[6] - r[4] for _, r in judged]], fmt="o",
                        color="tab:orange", capsize=4, label="judged nDCG@10 (first teacher), 95% CI")
        ax.set_xticks(range(len(quality)), labels, fontsize=8)
        shown = [v for r in quality for v in (r[2], r[5]) if v is not None]
        ax.set_ylim(max(0.0, min(shown) - 0.05), 1.01)  # the differences are a few points of nDCG
        ax.legend(fontsize=8, loc="lower right")
        out["Quality on the new slice and the old test split, before and after the refresh"] = figure_png(fig)
        plt.close(fig)
    canary = [results.get(f"canary-{t}") for t in ("promote", "rollback")]
    evidence = [(f"{c['champion']}→{c['challenger']}: {q['name']}", q, c["decision"]) for c in canary if c
                for q in c["quality"]]
    if evidence:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(evidence) + 1.4))
        for y, (_, q, _) in enumerate(evidence):
            ax.errorbar(q["mean_diff"], y, xerr=[[q["mean_diff"] - q["ci_low"]], [q["ci_high"] - q["mean_diff"]]],
                        fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(evidence)), [f"{name} ({decision})" for name, _, decision in evidence], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("challenger − champion nDCG (95% bootstrap CI)")
        out["The canary's evidence and decisions"] = figure_png(fig)
        plt.close(fig)
    return out


def answer(results: dict, status: dict) -> str:
    parts = []
    cut, detect, label = results.get("slice"), results.get("detect"), results.get("label")
    if cut:
        row = next(r for r in cut["candidates"] if r[0] == cut["family"])
        parts.append(f"Held out: {cut['family']} ({row[2]} products, {row[3]} judged queries, {row[4]:.1%} of them).")
    if detect:
        rate = detect["false_alarm_rate"]
        found = (f"the monitor alerted in every window from {detect['detected_at']} family requests of "
                 f"{detect['window']} ({detect['detected_at'] / detect['window']:.0%}) on"
                 if detect["detected_at"] else f"the monitor never alerted in every window, even at "
                 f"{max((r['family_requests'] for r in detect['by_count']), default=0)} of {detect['window']}")
        parts.append(f"Detection: {found} (first alert at {detect['first_alert_at']}); false alarms "
                     f"{detect['false_alarms']} of {detect['undrifted_windows']} undrifted windows "
                     f"({_fmt(rate, 2)}, 95% upper bound {_fmt(detect['false_alarm_upper95'], 2)})"
                     + (f"; {detect['too_little_traffic']} window(s) too small to judge (exit 4), left out"
                        if detect.get("too_little_traffic") else "") + ".")
    human = (results.get("evaluate") or {}).get("models", {})
    if "first" in human:
        old, new = human["first"]["old test"]["ndcg@10"], human["first"]["new slice"]["ndcg@10"]
        line = (f"Human nDCG@10 of the first model: {old:.4f} on the old test split, {new:.4f} on the new slice "
                f"({new - old:+.4f})")
        if "refreshed" in human and label:
            after = human["refreshed"]["new slice"]["ndcg@10"]
            line += (f"; after one round ({label['selected']} pairs sent to raters of a budget of "
                     f"{label['budget']}, {label['graded']} graded, "
                     f"{label['graded_family']} of them of released queries) the refreshed model: {after:.4f} on "
                     f"the new slice ({after - new:+.4f}), {human['refreshed']['old test']['ndcg@10']:.4f} on the old")
        if "worse" in human:
            line += f"; the worse challenger: {human['worse']['new slice']['ndcg@10']:.4f} on the new slice"
        parts.append(line + ".")
    judged = results.get("judged") or {}
    if judged.get("models"):
        cells = [f"{m} on {s}: {w['judged']['overall']['mean']:.4f} ({w['judged']['overall']['ci_low']:.4f} .. "
                 f"{w['judged']['overall']['ci_high']:.4f})" for m, slices in judged["models"].items()
                 for s, w in slices.items()]
        agreement = next(iter(next(iter(judged["models"].values())).values()))["judged"].get("judge_agreement") or {}
        parts.append("Judged nDCG@10 of the served lists (the first teacher as judge, exact agreement with humans "
                     f"{_fmt(agreement.get('exact'), 3)} on the judge-check pairs; the study sets no agreement "
                     "floor; the first student was distilled from this judge, so a judged gap between the first "
                     "and the refreshed model understates the refresh: the human grades above are the primary "
                     "evidence): " + "; ".join(cells) + ".")
    for tag in ("promote", "rollback"):
        c = results.get(f"canary-{tag}")
        if c:
            evidence = "; ".join(f"{q['name']} {q['mean_diff']:+.4f} ({q['ci_low']:+.4f} .. {q['ci_high']:+.4f})"
                                 for q in c["quality"])
            parts.append(f"Canary {c['champion']} → {c['challenger']}: {c['decision'].upper()} (watch exit "
                         f"{c['watch_exit']}; {evidence}; {c['action']}).")
    skipped = [f"{name} ({s['status']})" for name, s in status.items() if s["status"] != "ran"]
    if skipped:
        parts.append("Not run: " + "; ".join(skipped) + ".")
    return " ".join(parts)


def markdown(rec: dict) -> str:
    lines = [f"# {rec['title']}", "", f"*{rec['question']}*", "", f"**{rec['answer']}**", "",
             f"- command: `{rec['command']}`", f"- machine: {rec['machine']}", f"- date: {rec['date']}",
             f"- scale: {rec['scale']}; config: `{rec['config']}`", ""]
    for t in rec["tables"]:
        lines += [f"### {t['caption']}", "", "| " + " | ".join(t["columns"]) + " |",
                  "|" + "---|" * len(t["columns"])]
        lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in t["rows"]]
        lines.append("")
    lines += [f"![{caption}](studies/{Path(path).name})" for caption, path in rec["figures"].items()]
    lines += ["", ("How the study is built: `benchmarks/studies/loop.py` (its docstring lists the phases and the "
                   "choices: the family, the catalog, the windows, the simulated raters, the canary's evidence).")]
    return "\n".join(lines) + "\n"


def combined_png(pngs: list[bytes], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    if not pngs:
        return
    images = [mpimg.imread(__import__("io").BytesIO(png), format="png") for png in pngs]
    fig, axes = plt.subplots(len(images), 1, figsize=(8, 3.8 * len(images)))
    for ax, image in zip(np.atleast_1d(axes), images):
        ax.imshow(image)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study(config: Path, steps, command: str, results_dir: Path, homedepot: Path = HOMEDEPOT) -> dict:
    """Run (or resume) every phase of ``config``'s study and write its record and results files."""
    from benchmarks import studies

    scale = SCALES["smoke" if "smoke" in Path(config).stem else "full"]
    loop = Loop(config, scale, steps, homedepot)
    # A SIGTERM (timeout, kill) unwinds like Ctrl-C, so the servers this process started are stopped; the phases
    # done are kept and the next run resumes after them.
    previous = signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    try:
        results = loop.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    pictures = figures(results)
    rec = studies.record("loop", sys.modules[__name__], answer(results, loop.status), tables(results, loop.status),
                         pictures, command, steps, scale=scale.name, config=str(Path(config).resolve().relative_to(ROOT))
                         if Path(config).resolve().is_relative_to(ROOT) else str(config),
                         phases=loop.status, results=results)
    rec["status"] = "done" if all(s["status"] == "ran" for s in loop.status.values()) else "partial"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{RESULTS_NAME}.json").write_text(json.dumps(rec, indent=2, default=str))
    (results_dir / f"{RESULTS_NAME}.md").write_text(markdown(rec))
    combined_png(list(pictures.values()), results_dir / f"{RESULTS_NAME}.png")
    return rec


def run(steps, args, command: str) -> dict:
    """The studies framework's entry (`python -m benchmarks.studies --only loop`): configs/homedepot-loop.yaml,
    unless --config names a homedepot-loop*.yaml (the smoke config runs the smoke scale)."""
    from benchmarks import studies

    config = Path(args.config)
    if not config.name.startswith("homedepot-loop"):
        config = LOOP_CONFIG
    return study(config, steps, command, studies.RESULTS)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.loop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=LOOP_CONFIG, help="configs/homedepot-loop*.yaml")
    parser.add_argument("--homedepot", type=Path, default=HOMEDEPOT, help="The Home Depot folder (read in place).")
    parser.add_argument("--results", type=Path, default=None,
                        help="Where the record and loop-homedepot.* go (default: benchmarks/results for the study, "
                             "<study root>/results for the smoke config)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmarks import studies
    from relevance.config import load_config

    root = Loop.absolute(load_config(args.config).workdir).parent
    smoke = "smoke" in args.config.stem
    results = args.results or (root / "results" if smoke else studies.RESULTS)
    studies.RESULTS = results  # the record's figures go next to it
    command = f"python -m benchmarks.studies.loop --config {args.config}"
    rec = study(args.config, studies.Steps(root.name, root.parent), command, results, args.homedepot)
    if not smoke and results == ROOT / "benchmarks" / "results":
        if "loop" not in studies.STUDIES:  # as benchmarks/studies/__main__.py registers it
            studies.STUDIES = (*studies.STUDIES, "loop")
        studies.write({**studies.load_records(), "loop": rec}, readme=ROOT / "README.md")
    print(rec["answer"])
    return rec


if __name__ == "__main__":
    main()
