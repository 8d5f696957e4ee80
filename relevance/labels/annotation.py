"""The human-grading round trip through Label Studio (https://labelstud.io), the annotation tool teams already run.

Out: :func:`write_project` writes what a Label Studio project is created from:

    label_config.xml   the labelling interface: the query, the item's text (and image, when the catalog has
                       image URLs), and one single-choice question whose options are the dataset's K grade names
    tasks.json         one task per selected pair, in Label Studio's import format ({"data": {...}}); the pair's
                       ids travel in ``data`` and come back in the export
    project.json       what was selected, how, and from which labels

The teacher's prediction can ride along as a pre-annotation (a task's ``predictions``), off by default: raters
shown a suggestion agree with it more than they should (anchoring), which would feed the teacher's own errors
back into the human labels it learns from.

Back: :func:`read_export` parses Label Studio's JSON export (Export → JSON: a list of tasks, each with its
``annotations``; the format documented at labelstud.io/guide/task_format). Several annotators per pair are
aggregated (majority or mean), and agreement is reported as Krippendorff's alpha (ordinal; the ``krippendorff``
package) and the share of annotator pairs that agree exactly. :func:`merge_judgments` adds the aggregated grades
to a prepared dataset as train judgments of a new ``round``, never touching a valid/test query, never duplicating
a judged pair, and writing nothing when anything is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from relevance.data.schema import DataContractError, Dataset, check_references, prob_columns, validate_judgments
from relevance.common.files import atomic_write

CHOICE = "grade"  # the Choices control's name, from_name in every exported result
ITEM = "item"     # the object the choice is about, to_name

Aggregate = Literal["majority", "mean"]


def label_config(grade_names: list[str], with_image: bool = False) -> str:
    """The Label Studio labelling config for grading (query, item) pairs on the dataset's K-level rubric."""
    choices = "\n".join(f"    <Choice value={quoteattr(name)} hint={quoteattr(f'grade {grade} of {len(grade_names) - 1}')}/>"
                        for grade, name in reversed(list(enumerate(grade_names))))
    image = '  <Image name="image" value="$image" maxWidth="320px"/>\n' if with_image else ""
    return ("<View>\n"
            '  <Header value="How well does this item answer the search?"/>\n'
            '  <Text name="query" value="$query"/>\n'
            f"{image}"
            f'  <Text name="{ITEM}" value="$item"/>\n'
            f'  <Choices name="{CHOICE}" toName="{ITEM}" choice="single-radio" required="true">\n'
            f"{choices}\n"
            "  </Choices>\n"
            "</View>\n")


def write_project(out_dir: str | Path, pairs: pd.DataFrame, dataset: Dataset, item_text: pd.Series,
                  pre_annotate: bool = False, model_version: str | None = None, meta: dict | None = None) -> Path:
    """A Label Studio project for ``pairs`` (query_id, item_id; p_0..p_{K-1} when ``pre_annotate``)."""
    out_dir = Path(out_dir)
    names = list(dataset.info.grade_names)
    images = dataset.items.set_index("item_id")["image_url"] if "image_url" in dataset.items.columns else None
    tasks = []
    for row in pairs.itertuples(index=False):
        data = {"query": str(dataset.query_text.get(row.query_id, "")), "item": str(item_text.get(row.item_id, "")),
                "query_id": str(row.query_id), "item_id": str(row.item_id)}
        if images is not None and pd.notna(images.get(row.item_id)):
            data["image"] = str(images[row.item_id])
        task = {"data": data}
        if pre_annotate:
            probs = np.array([getattr(row, c) for c in prob_columns(len(names))], dtype=float)
            task["predictions"] = [{"model_version": model_version or "teacher", "score": float(probs.max()),
                                    "result": [{"from_name": CHOICE, "to_name": ITEM, "type": "choices",
                                                "value": {"choices": [names[int(probs.argmax())]]}}]}]
        tasks.append(task)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "label_config.xml").write_text(label_config(names, with_image=images is not None))
    (out_dir / "tasks.json").write_text(json.dumps(tasks, ensure_ascii=False, indent=1))
    (out_dir / "project.json").write_text(json.dumps({
        "tasks": len(tasks), "grade_names": names, "pre_annotated": pre_annotate,
        "note": "import tasks.json into a project created with label_config.xml; export as JSON for "
                "`relevance import-labels`", **(meta or {})}, indent=2))
    return out_dir


@dataclass
class ImportedLabels:
    """Aggregated human grades (query_id, item_id, grade, annotators) and how far the annotators agreed."""

    judgments: pd.DataFrame
    ratings: pd.DataFrame  # one row per (pair, annotator): query_id, item_id, annotator, grade
    krippendorff_alpha: float | None
    exact_agreement: float | None
    skipped: dict[str, int]

    def summary(self) -> str:
        alpha = "n/a (one annotator per pair)" if self.krippendorff_alpha is None else f"{self.krippendorff_alpha:.3f}"
        exact = "n/a" if self.exact_agreement is None else f"{self.exact_agreement:.1%}"
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items() if n) or "none"
        return (f"{len(self.judgments)} pair(s) from {len(self.ratings)} rating(s) by "
                f"{self.ratings['annotator'].nunique()} annotator(s); Krippendorff's alpha (ordinal) {alpha}; "
                f"exact agreement between annotators {exact}; skipped: {skipped}")


def _annotator(annotation: dict, where: str) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # some exports expand the user: {"id": 3, "email": ...}
        who = who.get("id", who.get("email"))
    if who is None:
        raise DataContractError(f"{where}: the annotation has no completed_by (who graded it)")
    return str(who)


def read_export(path: str | Path, grade_names: list[str], aggregate: Aggregate = "majority") -> ImportedLabels:
    """Parse a Label Studio JSON export of a project made by :func:`write_project`. Every problem is a
    DataContractError naming the task and what is wrong; nothing is half-read."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataContractError(f"{path}: not a readable JSON export ({error})") from None
    if not isinstance(tasks, list):
        raise DataContractError(f"{path}: expected Label Studio's JSON export, a list of tasks; got a "
                                f"{type(tasks).__name__} (JSON-MIN and CSV exports lack the annotators: export as JSON)")
    grade_of = {name: grade for grade, name in enumerate(grade_names)}
    rows, skipped = [], {"cancelled annotations": 0, "tasks without annotations": 0}
    for index, task in enumerate(tasks):
        where = f"{path.name}: task {task.get('id', index) if isinstance(task, dict) else index}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise DataContractError(f"{where}: not a task object with a 'data' field")
        data = task["data"]
        if not data.get("query_id") or not data.get("item_id"):
            raise DataContractError(f"{where}: data lacks query_id / item_id; was the project made by "
                                    "`relevance select`?")
        annotations = task.get("annotations")
        if annotations is None or not isinstance(annotations, list):
            raise DataContractError(f"{where}: no 'annotations' list (a JSON export includes them)")
        kept = 0
        for annotation in annotations:
            if annotation.get("was_cancelled"):
                skipped["cancelled annotations"] += 1
                continue
            choices = [r for r in annotation.get("result", []) if r.get("from_name") == CHOICE]
            if not choices:
                raise DataContractError(f"{where}: an annotation by {annotation.get('completed_by')} has no "
                                        f"'{CHOICE}' choice")
            if len(choices) > 1 or choices[0].get("type") != "choices":
                raise DataContractError(f"{where}: expected one single-choice '{CHOICE}' result, got "
                                        f"{[(r.get('type'), r.get('value')) for r in choices]}")
            picked = (choices[0].get("value") or {}).get("choices") or []
            if len(picked) != 1 or picked[0] not in grade_of:
                raise DataContractError(f"{where}: grade {picked} is not one of the rubric's {grade_names}")
            rows.append((str(data["query_id"]), str(data["item_id"]), _annotator(annotation, where),
                         grade_of[picked[0]]))
            kept += 1
        if not kept:
            skipped["tasks without annotations"] += 1
    if not rows:
        raise DataContractError(f"{path}: no completed annotation in {len(tasks)} task(s)")
    ratings = pd.DataFrame(rows, columns=["query_id", "item_id", "annotator", "grade"])
    repeated = ratings.duplicated(["query_id", "item_id", "annotator"], keep=False)
    if repeated.any():
        # The same pair in two tasks graded by one annotator: keep their latest grade (the export's order).
        ratings = ratings.drop_duplicates(["query_id", "item_id", "annotator"], keep="last")
        skipped["repeated ratings by one annotator"] = int(repeated.sum() // 2)
    return ImportedLabels(_aggregate(ratings, aggregate, len(grade_names)), ratings.reset_index(drop=True),
                          *_agreement(ratings), skipped)


def _aggregate(ratings: pd.DataFrame, how: Aggregate, num_grades: int) -> pd.DataFrame:
    grouped = ratings.groupby(["query_id", "item_id"], sort=False)["grade"]
    if how == "mean":
        grade = grouped.mean().round().astype(int)  # round half to even: a 2-vs-3 tie goes to the even grade
    elif how == "majority":
        def majority(values: pd.Series) -> int:
            counts = np.bincount(values.to_numpy(), minlength=num_grades)
            tied = np.flatnonzero(counts == counts.max())
            # A tie goes to the tied grade nearest the median rating (the lower one when equally near).
            median = float(np.median(values))
            return int(tied[np.argmin(np.abs(tied - median))])
        grade = grouped.agg(majority)
    else:
        raise ValueError(f"aggregate must be 'majority' or 'mean', got {how!r}")
    out = grade.rename("grade").reset_index()
    out["annotators"] = grouped.size().to_numpy()
    return out


def _agreement(ratings: pd.DataFrame) -> tuple[float | None, float | None]:
    """Krippendorff's alpha (ordinal) over pairs with ≥ 2 ratings, and the share of rater pairs in exact
    agreement; None where no pair has two ratings."""
    import krippendorff

    multi = ratings.groupby(["query_id", "item_id"])["grade"].transform("size") >= 2
    rated = ratings[multi]
    if rated.empty:
        return None, None
    matrix = rated.pivot_table(index="annotator", columns=["query_id", "item_id"], values="grade", aggfunc="first")
    values = matrix.to_numpy(dtype=float)
    alpha = None
    if len(np.unique(values[~np.isnan(values)])) > 1:  # alpha is undefined when every rating is the same grade
        alpha = float(krippendorff.alpha(reliability_data=values, level_of_measurement="ordinal"))
    agree = total = 0
    for _, grades in rated.groupby(["query_id", "item_id"])["grade"]:
        g = grades.to_numpy()
        same = (g[:, None] == g[None, :]).sum() - len(g)
        agree, total = agree + same, total + len(g) * (len(g) - 1)
    return alpha, agree / total


def merge_judgments(dataset_dir: str | Path, imported: pd.DataFrame, round_tag: int) -> dict:
    """Add imported grades to the prepared dataset at ``dataset_dir`` as train judgments tagged ``round``.

    Refused, with nothing written, when a pair names an unknown query or item, or a query of the valid/test
    splits (by id or by normalised text). Pairs already judged are left as they were and counted."""
    from relevance.labels.pool import held_out_query_mask

    if round_tag < 1:
        raise ValueError(f"the round tag must be ≥ 1 (round 0 is the original judgments), got {round_tag}")
    dataset = Dataset.load(dataset_dir, with_impressions=False)
    unknown_queries = ~imported["query_id"].isin(dataset.queries["query_id"])
    unknown_items = ~imported["item_id"].isin(dataset.items["item_id"])
    if unknown_queries.any() or unknown_items.any():
        raise DataContractError(f"imported labels: {int(unknown_queries.sum())} unknown query id(s) and "
                                f"{int(unknown_items.sum())} unknown item id(s), e.g. "
                                f"{imported[unknown_queries | unknown_items].iloc[0][['query_id', 'item_id']].tolist()}"
                                "; were they selected from another dataset?")
    held = held_out_query_mask(imported, dataset)
    if held.any():
        raise DataContractError(f"imported labels: {int(held.sum())} pair(s) of valid/test queries (by id or text), "
                                f"e.g. {imported[held].iloc[0]['query_id']}; evaluation queries are never graded "
                                "into training")
    judgments = dataset.judgments.copy()
    if "round" not in judgments.columns:
        judgments["round"] = 0
    if round_tag in set(judgments["round"]):
        raise DataContractError(f"{dataset_dir}: round {round_tag} was imported already; use a new round tag")
    judged = pd.MultiIndex.from_frame(judgments[["query_id", "item_id"]])
    known = pd.MultiIndex.from_frame(imported[["query_id", "item_id"]]).isin(judged)
    # A query already in a split keeps it (a query never straddles splits); new queries go to train.
    split_of = judgments.drop_duplicates("query_id").set_index("query_id")["split"]
    new = imported.loc[~known, ["query_id", "item_id", "grade"]].copy()
    new["split"] = new["query_id"].map(split_of).fillna("train")
    new["round"] = round_tag
    merged = validate_judgments(pd.concat([judgments, new], ignore_index=True), dataset.num_grades)
    check_references(merged, "judgments", dataset.items, dataset.queries)
    # Only the judgments change: the file is replaced in one rename, so a reader sees the old or the new one.
    with atomic_write(Path(dataset_dir) / "judgments.parquet") as tmp:
        merged.to_parquet(tmp, index=False)
    return {"added": int(len(new)), "already_judged": int(known.sum()), "round": round_tag,
            "judgments": int(len(merged))}


def add_queries(dataset_dir: str | Path, queries: pd.DataFrame) -> int:
    """Append ``queries`` (query_id, query) to the prepared dataset's queries, those whose id it lacks; the number
    added. Existing rows never change, and the table is replaced in one rename. Queries first seen in traffic
    come in this way (relevance.labels.from_traffic), so that their grades import like any other."""
    from relevance.data.schema import DEFAULT_LOCALE, validate_queries

    path = Path(dataset_dir) / "queries.parquet"
    current = pd.read_parquet(path)
    new = queries[~queries["query_id"].isin(current["query_id"])].drop_duplicates("query_id")
    if new.empty:
        return 0
    locale = new["locale"] if "locale" in new.columns else pd.Series("", index=new.index)
    new = pd.DataFrame({"query_id": new["query_id"], "query": new["query"],
                        "locale": locale.fillna("").replace("", DEFAULT_LOCALE)})
    merged = validate_queries(pd.concat([current, new], ignore_index=True))
    with atomic_write(path) as tmp:
        merged.to_parquet(tmp, index=False)
    return int(len(new))
