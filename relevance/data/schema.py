"""The data contract every adapter produces and every step consumes.

A dataset on disk is a directory of parquet tables:

    items.parquet        item_id, locale, text fields (title, description, caption, board_titles,
                         engagement_queries, link_titles; any subset), optional numeric columns
    queries.parquet      query_id, query, locale
    judgments.parquet    query_id, item_id, grade (int 0..K-1), split (train/valid/test), optional raw_score
    impressions.parquet  query_id, item_id (the unlabelled pool; no grade)
    dataset.json         name, num_grades K, grade names, raw-score scale

Teacher labels are written by labelling: query_id, item_id, p_0..p_{K-1}, teacher_version.

Every check raises :class:`DataContractError` naming the table, the column and what was expected versus got,
so that a bad file is rejected before any step writes anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TEXT_FIELDS = ("title", "description", "caption", "board_titles", "engagement_queries", "link_titles")
SPLITS = ("train", "valid", "test")
DEFAULT_LOCALE = "en_US"


class DataContractError(ValueError):
    """A table does not follow the data contract. The message says which table, which column, and why."""


@dataclass
class DatasetInfo:
    """Metadata stored next to the tables as dataset.json."""

    name: str
    num_grades: int
    grade_names: list[str] = field(default_factory=list)
    # The human raw-score scale, if the source had one (Home Depot: mean rating 1..3, linear in grade).
    raw_score_min: float | None = None
    raw_score_max: float | None = None
    # nDCG gain per grade; None means the default 2^g - 1. ESCI's official gains are [0, 0.01, 0.1, 1].
    ndcg_gains: list[float] | None = None
    synthetic: bool = False
    description: str = ""
    # The two slices judge-based evaluation needs (Dataset.judge_holdout_queries, Dataset.judge_check_pairs), as
    # shares of the query-text hash space. None: the dataset was prepared before they existed, and judge-based
    # evaluation refuses it rather than judge pairs a student was distilled on.
    judge_holdout_fraction: float | None = None
    judge_check_fraction: float | None = None

    def missing_slice(self, name: str) -> str:
        """Why the judge slice ``name`` (judge_holdout_fraction or judge_check_fraction) is not there, in words."""
        if getattr(self, name) is None:
            return f"dataset.json records no {name} (the data was prepared before the judge's slices existed)"
        return f"data.{name} is 0"

    def __post_init__(self) -> None:
        for name in ("judge_holdout_fraction", "judge_check_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise DataContractError(f"dataset.json: {name} must be in [0, 1), got {value}")
        if self.num_grades < 2:
            raise DataContractError(f"dataset.json: num_grades must be >= 2, got {self.num_grades}")
        if not self.grade_names:
            self.grade_names = [f"L{g}" for g in range(self.num_grades)]
        if len(self.grade_names) != self.num_grades:
            raise DataContractError(
                f"dataset.json: expected {self.num_grades} grade_names, got {len(self.grade_names)}"
            )
        if self.ndcg_gains is not None and len(self.ndcg_gains) != self.num_grades:
            raise DataContractError(
                f"dataset.json: expected {self.num_grades} ndcg_gains, got {len(self.ndcg_gains)}"
            )

    def save(self, directory: Path) -> None:
        (Path(directory) / "dataset.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_dict(cls, values: dict) -> "DatasetInfo":
        """From dataset.json (or a manifest's copy of it), ignoring keys this version does not know: a dataset
        prepared by a newer version still loads."""
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, directory: Path) -> "DatasetInfo":
        path = Path(directory) / "dataset.json"
        if not path.exists():
            raise DataContractError(f"{directory}: no dataset.json; is this a prepared dataset directory?")
        return cls.from_dict(json.loads(path.read_text()))


def _require_columns(df: pd.DataFrame, table: str, columns: tuple[str, ...] | list[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataContractError(
            f"{table}: missing column(s) {missing}; expected at least {list(columns)}, got {list(df.columns)}"
        )


def _require_no_nulls(df: pd.DataFrame, table: str, columns: tuple[str, ...] | list[str]) -> None:
    for column in columns:
        nulls = int(df[column].isna().sum())
        if nulls:
            raise DataContractError(f"{table}: column {column!r} has {nulls} null value(s); nulls are not allowed")


def _require_unique(df: pd.DataFrame, table: str, key: list[str]) -> None:
    duplicated = df.duplicated(subset=key, keep=False)
    if duplicated.any():
        example = df.loc[duplicated, key].head(3).to_dict("records")
        raise DataContractError(
            f"{table}: {int(duplicated.sum())} row(s) share a key {key}; each must be unique, e.g. {example}"
        )


def _as_str_ids(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    # Ids are strings everywhere, so that joins never fail on int-vs-str mismatches between sources.
    for column in columns:
        if column in df.columns and df[column].dtype != object:
            df[column] = df[column].astype(str)
    return df


def validate_items(items: pd.DataFrame) -> pd.DataFrame:
    _require_columns(items, "items", ["item_id"])
    items = _as_str_ids(items.copy(), ["item_id"])
    if "locale" not in items.columns:
        items["locale"] = DEFAULT_LOCALE
    text_columns = [c for c in TEXT_FIELDS if c in items.columns]
    if not text_columns:
        raise DataContractError(
            f"items: no text field; expected at least one of {list(TEXT_FIELDS)}, got {list(items.columns)}"
        )
    _require_no_nulls(items, "items", ["item_id", "locale"])
    _require_unique(items, "items", ["item_id"])
    for column in text_columns:
        items[column] = items[column].fillna("").astype(str)
    return items


def validate_queries(queries: pd.DataFrame) -> pd.DataFrame:
    _require_columns(queries, "queries", ["query_id", "query"])
    queries = _as_str_ids(queries.copy(), ["query_id"])
    if "locale" not in queries.columns:
        queries["locale"] = DEFAULT_LOCALE
    _require_no_nulls(queries, "queries", ["query_id", "query", "locale"])
    _require_unique(queries, "queries", ["query_id"])
    empty = queries["query"].astype(str).str.strip() == ""
    if empty.any():
        raise DataContractError(f"queries: {int(empty.sum())} empty query string(s), e.g. query_id "
                                f"{queries.loc[empty, 'query_id'].iloc[0]!r}")
    return queries


def validate_judgments(judgments: pd.DataFrame, num_grades: int) -> pd.DataFrame:
    _require_columns(judgments, "judgments", ["query_id", "item_id", "grade"])
    judgments = _as_str_ids(judgments.copy(), ["query_id", "item_id"])
    _require_no_nulls(judgments, "judgments", ["query_id", "item_id", "grade"])
    grades = pd.to_numeric(judgments["grade"], errors="coerce")
    if grades.isna().any() or not np.all(np.equal(np.mod(grades, 1), 0)):
        bad = judgments.loc[grades.isna() | (np.mod(grades.fillna(0), 1) != 0), "grade"].head(3).tolist()
        raise DataContractError(f"judgments: column 'grade' must hold integers, got e.g. {bad}")
    out_of_range = (grades < 0) | (grades >= num_grades)
    if out_of_range.any():
        raise DataContractError(
            f"judgments: {int(out_of_range.sum())} grade(s) out of range; expected 0..{num_grades - 1} "
            f"(K={num_grades}), got values {sorted(grades[out_of_range].unique().tolist())[:5]}"
        )
    judgments["grade"] = grades.astype("int64")
    if "split" in judgments.columns:
        unknown = sorted(set(judgments["split"].dropna().unique()) - set(SPLITS))
        if unknown or judgments["split"].isna().any():
            raise DataContractError(f"judgments: column 'split' must be one of {list(SPLITS)}, got {unknown or 'nulls'}")
    _require_unique(judgments, "judgments", ["query_id", "item_id"])
    if "split" in judgments.columns:
        splits_per_query = judgments.groupby("query_id")["split"].nunique()
        straddling = splits_per_query[splits_per_query > 1]
        if len(straddling):
            raise DataContractError(f"judgments: {len(straddling)} query id(s) appear in more than one split, e.g. "
                                    f"{straddling.index[:3].tolist()}; a query must sit in exactly one split")
    return judgments


def validate_impressions(impressions: pd.DataFrame) -> pd.DataFrame:
    _require_columns(impressions, "impressions", ["query_id", "item_id"])
    impressions = _as_str_ids(impressions.copy(), ["query_id", "item_id"])
    _require_no_nulls(impressions, "impressions", ["query_id", "item_id"])
    return impressions.drop_duplicates(subset=["query_id", "item_id"])


def prob_columns(num_grades: int) -> list[str]:
    return [f"p_{g}" for g in range(num_grades)]


def validate_teacher_labels(labels: pd.DataFrame, num_grades: int, tolerance: float = 1e-3) -> pd.DataFrame:
    columns = ["query_id", "item_id", *prob_columns(num_grades), "teacher_version"]
    _require_columns(labels, "teacher labels", columns)
    extra = [c for c in labels.columns if c.startswith("p_") and c not in columns]
    if extra:
        raise DataContractError(f"teacher labels: K mismatch; expected {num_grades} probability columns, "
                                f"got extra {extra}")
    probs = labels[prob_columns(num_grades)].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(probs)) or (probs < -tolerance).any():
        raise DataContractError("teacher labels: probabilities must be finite and non-negative")
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > tolerance
    if off.any():
        raise DataContractError(f"teacher labels: {int(off.sum())} row(s) whose probabilities do not sum to 1 "
                                f"(e.g. {sums[off][:3].tolist()})")
    _require_unique(labels, "teacher labels", ["query_id", "item_id"])
    return labels


@dataclass
class Dataset:
    """A prepared dataset held in memory. ``impressions`` may be None when it is large: read it in shards."""

    info: DatasetInfo
    items: pd.DataFrame
    queries: pd.DataFrame
    judgments: pd.DataFrame
    impressions: pd.DataFrame | None = None

    @property
    def num_grades(self) -> int:
        return self.info.num_grades

    @property
    def query_text(self) -> pd.Series:
        """query_id → query text."""
        return self.queries.set_index("query_id")["query"]

    def training_data_hash(self) -> str:
        """The content hash of what a model trains and early-stops on (train + valid judgments): the lineage
        that teacher and student manifests record."""
        from relevance.common.files import sha256_of_frame

        return sha256_of_frame(self.judgments[self.judgments["split"].isin(["train", "valid"])],
                               ["query_id", "item_id", "grade", "split"])

    # -- the judge's slices ---------------------------------------------------------------------------------
    # A judge (relevance.evaluation.judge) is only worth numbers on data nothing it judges has learnt from, and on an
    # agreement with humans measured where it did not early-stop or calibrate. Both slices are fixed by a hash of
    # the query text (relevance.data.splits.in_slice) with the fractions recorded in dataset.json, so the pool,
    # the teacher, judge-eval and the canary all draw the same line.

    def judge_holdout_queries(self) -> pd.DataFrame:
        """The unjudged queries held out for judging (``judge_holdout_fraction`` of the hash space): the pool
        never takes their pairs, so no distilled student learns them, and judge-eval and the canary's judge
        draw their queries only from here."""
        from relevance.data.splits import JUDGE_HOLDOUT_SALT, in_slice, normalize_query

        fraction = self.info.judge_holdout_fraction
        if not fraction:
            return self.queries.iloc[:0]
        # Hashing every query text costs ~10 s per million queries, and the pool, its check and every saved model's
        # manifest ask: kept for as long as the tables are the same objects of the same size.
        key = (fraction, id(self.queries), len(self.queries), id(self.judgments), len(self.judgments))
        cached = self.__dict__.get("_judge_holdout")
        if cached is not None and cached[0] == key:
            return cached[1]
        # Unjudged by id and by text: a source may give a judged query a second id, whose text the student learnt.
        text = self.queries["query"].map(normalize_query)
        judged = self.queries["query_id"].isin(self.judgments["query_id"])
        unjudged = ~judged & ~text.isin(set(text[judged]))
        holdout = self.queries[unjudged & in_slice(self.queries["query"], fraction, JUDGE_HOLDOUT_SALT)]
        self.__dict__["_judge_holdout"] = (key, holdout)
        return holdout

    def judge_holdout_fingerprint(self) -> dict | None:
        """What the pool and every model over the pool record of the judge holdout they were built without: the
        fraction, the number of queries and a hash of their ids (None without a holdout). judge-eval compares a
        ranker's record with the dataset's, so a student distilled under another holdout is never judged here."""
        import hashlib

        fraction = self.info.judge_holdout_fraction
        if not fraction:
            return None
        ids = sorted(self.judge_holdout_queries()["query_id"].astype(str))
        return {"fraction": fraction, "queries": len(ids),
                "hash": hashlib.sha256("\x1e".join(ids).encode("utf-8")).hexdigest()[:16]}

    def _judge_check_mask(self, valid: pd.DataFrame) -> pd.Series:
        """Which valid rows are judge-check pairs: their query's text hashes into ``judge_check_fraction``, except
        that the slice never takes every valid query (the one hashing farthest from the cut stays with the
        teacher, which must early-stop on something)."""
        from relevance.data.splits import JUDGE_CHECK_SALT, query_bucket

        fraction = self.info.judge_check_fraction or 0.0
        text = self.query_text.reindex(valid["query_id"]).fillna("")
        bucket = text.map({q: query_bucket(q, JUDGE_CHECK_SALT) for q in text.unique()}).to_numpy()
        mask = bucket < fraction
        if len(mask) and mask.all():
            mask &= bucket < bucket.max()
        return pd.Series(mask, index=valid.index)

    def teacher_valid(self) -> pd.DataFrame:
        """The valid pairs the teacher early-stops and calibrates on: valid minus :meth:`judge_check_pairs`."""
        valid = self.split("valid")
        return valid[~self._judge_check_mask(valid)]

    def judge_check_pairs(self) -> pd.DataFrame:
        """The valid pairs set aside from the teacher's early stopping and calibration, where a judge's agreement
        with humans is measured (``judge_check_fraction`` of the valid queries by hash)."""
        if not self.info.judge_check_fraction:
            raise DataContractError(f"{self.info.missing_slice('judge_check_fraction')}: a judge's agreement with "
                                    "humans would be measured on the valid pairs it early-stopped and calibrated on. "
                                    "Set data.judge_check_fraction, prepare the data again and retrain the teacher")
        valid = self.split("valid")
        rows = valid[self._judge_check_mask(valid)]
        if rows.empty:
            raise DataContractError(f"judgments: no valid pair falls in the judge-check slice (judge_check_fraction "
                                    f"{self.info.judge_check_fraction} of {valid['query_id'].nunique()} valid "
                                    "queries): raise the fraction or grade more valid queries")
        return rows

    def judge_check_fingerprint(self) -> str | None:
        """The content hash of :meth:`judge_check_pairs` (None when there are none): what a teacher's manifest
        records of the pairs it set aside, and what judge-eval compares it with."""
        from relevance.common.files import sha256_of_frame

        try:
            pairs = self.judge_check_pairs()
        except DataContractError:
            return None
        return sha256_of_frame(pairs, ["query_id", "item_id", "grade"])

    def validated(self) -> "Dataset":
        items = validate_items(self.items)
        queries = validate_queries(self.queries)
        judgments = validate_judgments(self.judgments, self.info.num_grades)
        check_references(judgments, "judgments", items, queries)
        impressions = None
        if self.impressions is not None:
            impressions = validate_impressions(self.impressions)
            check_references(impressions, "impressions", items, queries)
        return Dataset(self.info, items, queries, judgments, impressions)

    def split(self, name: str) -> pd.DataFrame:
        if "split" not in self.judgments.columns:
            raise DataContractError("judgments: no 'split' column; prepare the dataset with a split first")
        rows = self.judgments[self.judgments["split"] == name]
        if rows.empty:
            raise DataContractError(f"judgments: split {name!r} is empty; every step needs train, valid and test rows")
        return rows

    def save(self, directory: Path | str) -> Path:
        """Write all tables atomically (see relevance.common.files.atomic_directory)."""
        from relevance.common.files import atomic_directory

        with atomic_directory(directory) as tmp:
            self.info.save(tmp)
            self.items.to_parquet(tmp / "items.parquet", index=False)
            self.queries.to_parquet(tmp / "queries.parquet", index=False)
            self.judgments.to_parquet(tmp / "judgments.parquet", index=False)
            if self.impressions is not None:
                self.impressions.to_parquet(tmp / "impressions.parquet", index=False)
        return Path(directory)

    @classmethod
    def load(cls, directory: Path | str, with_impressions: bool = True) -> "Dataset":
        directory = Path(directory)
        if not directory.is_dir():
            raise DataContractError(f"{directory}: not a dataset directory")
        info = DatasetInfo.load(directory)
        tables = {}
        for name in ("items", "queries", "judgments"):
            path = directory / f"{name}.parquet"
            if not path.exists():
                raise DataContractError(f"{directory}: missing {name}.parquet")
            tables[name] = pd.read_parquet(path)
        impressions = None
        if with_impressions and (directory / "impressions.parquet").exists():
            impressions = pd.read_parquet(directory / "impressions.parquet")
        return cls(info, tables["items"], tables["queries"], tables["judgments"], impressions).validated()


def check_references(pairs: pd.DataFrame, table: str, items: pd.DataFrame, queries: pd.DataFrame | None) -> None:
    """Every pair must name a known item (and a known query, when ``queries`` is given)."""
    unknown_items = ~pairs["item_id"].isin(items["item_id"])
    if unknown_items.any():
        raise DataContractError(f"{table}: {int(unknown_items.sum())} row(s) reference item_id(s) not in items, "
                                f"e.g. {pairs.loc[unknown_items, 'item_id'].head(3).tolist()}")
    if queries is None:
        return
    unknown_queries = ~pairs["query_id"].isin(queries["query_id"])
    if unknown_queries.any():
        raise DataContractError(f"{table}: {int(unknown_queries.sum())} row(s) reference query_id(s) not in queries, "
                                f"e.g. {pairs.loc[unknown_queries, 'query_id'].head(3).tolist()}")
