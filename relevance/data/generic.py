"""Generic adapter: a folder of ``items``/``judgments`` (and optional ``queries``/``impressions``) tables.

Each table may be parquet or CSV. Column names are normalised through small alias maps so that a file in a
source's own vocabulary (Home Depot's ``product_id``/``search_term``/``relevance``) reads as the canonical
contract of :mod:`relevance.data.schema`. The two public helpers :func:`load_items` and :func:`load_judgments`
are what ``relevance evaluate --items ... --judgments ...`` uses on single files, and the dataset-specific
adapters (Home Depot, ESCI, WANDS) reuse the shared helpers here (:func:`stable_query_id`, :func:`read_table`,
:func:`require_columns`, :func:`map_labels`, :func:`merge_duplicate_pairs`) instead of duplicating them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from relevance.data.schema import DEFAULT_LOCALE, Dataset, DataContractError, DatasetInfo
from relevance.data.splits import assign_splits, normalize_query

log = logging.getLogger(__name__)

ITEM_ALIASES = {
    "product_id": "item_id",
    "product_uid": "item_id",
    "product_title": "title",
    "product_name": "title",
    "name": "title",
    "product_description": "description",
}
JUDGMENT_ALIASES = {
    "product_id": "item_id",
    "product_uid": "item_id",
    "search_term": "query",
    "relevance": "raw_score",
}
QUERY_ALIASES = {"search_term": "query"}
# Read these as strings from CSV: "00123" must not become the integer 123 and stop joining with a parquet id.
ID_COLUMNS = ("item_id", "query_id", "product_id", "product_uid", "id", "example_id")
TABLE_SUFFIXES = (".parquet", ".csv")


def stable_query_id(query: str) -> str:
    """A query id that is a pure function of the normalised query text: "q" + 12 hex digits of its SHA-1.

    Sources without query ids (Kaggle Home Depot, generic files) get the same id for the same query on every
    run and machine, so labels and splits computed in one run join with the next.
    """
    return "q" + hashlib.sha1(normalize_query(query).encode("utf-8")).hexdigest()[:12]


def stable_query_ids(queries: pd.Series) -> pd.Series:
    """:func:`stable_query_id` over a column, hashing each distinct query once."""
    cache = {q: stable_query_id(q) for q in queries.unique()}
    return queries.map(cache)


def require_file(path: Path, what: str = "") -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataContractError(f"{path}: file not found{' (' + what + ')' if what else ''}")
    return path


def require_columns(df: pd.DataFrame, source: str | Path, columns: list[str] | tuple[str, ...]) -> None:
    """Raise naming the file and the missing columns, with what was expected and what the file has."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataContractError(
            f"{source}: missing column(s) {missing}; expected at least {list(columns)}, got {list(df.columns)}"
        )


def read_table(path: str | Path, **csv_options) -> pd.DataFrame:
    """Read a parquet or CSV file (by suffix). CSV id columns are read as strings."""
    path = require_file(Path(path))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        if suffix == ".tsv":
            csv_options.setdefault("sep", "\t")
        header = pd.read_csv(path, nrows=0, **csv_options).columns
        dtype = {c: str for c in header if c in ID_COLUMNS}
        return pd.read_csv(path, dtype=dtype, keep_default_na=True, **csv_options)
    raise DataContractError(f"{path}: unsupported file type {suffix!r}; expected one of .parquet, .csv")


def find_table(directory: Path, name: str, required: bool = True) -> Path | None:
    """``directory/name.parquet`` or ``directory/name.csv``; parquet wins if both exist."""
    for suffix in TABLE_SUFFIXES:
        candidate = Path(directory) / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    if required:
        raise DataContractError(
            f"{directory}: missing table {name!r}; expected {name}.parquet or {name}.csv"
        )
    return None


def apply_aliases(df: pd.DataFrame, aliases: Mapping[str, str]) -> pd.DataFrame:
    """Rename alias columns to their canonical names.

    An alias is only renamed when its canonical name is not already taken (by the column itself or by an
    earlier alias), so a file with both ``title`` and ``name`` keeps ``name`` as an extra column.
    """
    renames: dict[str, str] = {}
    for column in df.columns:
        target = aliases.get(column)
        if target is None or target in df.columns or target in renames.values():
            continue
        renames[column] = target
    return df.rename(columns=renames)


def map_labels(values: pd.Series, mapping: Mapping[str, int], source: str | Path, column: str) -> pd.Series:
    """Map string labels to grades; an unknown label is an error naming the value(s) and the accepted ones."""
    grades = values.map(mapping)
    unknown = values[grades.isna()]
    if len(unknown):
        examples = sorted({repr(v) for v in unknown.head(1000).tolist()})[:5]
        raise DataContractError(
            f"{source}: column {column!r} has {len(unknown)} unknown label(s) {', '.join(examples)}; "
            f"expected one of {list(mapping)}"
        )
    return grades.astype("int64")


def merge_duplicate_pairs(judgments: pd.DataFrame, source: str | Path,
                          regrade=None) -> pd.DataFrame:
    """Collapse rows sharing (query_id, item_id) so the judgment key is unique.

    ``raw_score`` is averaged; the grade is ``regrade(mean raw_score)`` when given (the source's own mapping),
    else read off the file's own raw_score -> grade relation when that is monotone (so a generic read of a
    Home Depot file grades merged pairs as the Home Depot adapter does), else the mean grade rounded half up.
    Other columns keep their first value. Real files do carry such repeats (Home Depot's train.csv rates some
    (query, product) pairs twice), so merging beats rejecting.
    """
    key = ["query_id", "item_id"]
    duplicated = judgments.duplicated(subset=key, keep=False)
    if not duplicated.any():
        return judgments
    log.warning("%s: merging %d row(s) that share a (query_id, item_id) key", source, int(duplicated.sum()))
    dups = judgments[duplicated]
    agg: dict[str, str] = {c: "first" for c in judgments.columns if c not in key}
    if "raw_score" in judgments.columns:
        agg["raw_score"] = "mean"
    if "grade" in judgments.columns:
        agg["grade"] = "mean"
    # Groups come out in order of first appearance, the same order as the first rows kept below.
    merged = dups.groupby(key, sort=False, as_index=False).agg(agg)
    if "grade" in merged.columns:
        if regrade is None and "raw_score" in judgments.columns:
            single = judgments[~duplicated]
            regrade = _observed_regrade(single["raw_score"], single["grade"])
        rounded = np.floor(merged["grade"].to_numpy(dtype=float) + 0.5)
        if regrade is not None and "raw_score" in merged.columns:
            raw = merged["raw_score"].to_numpy(dtype=float)
            known = ~np.isnan(raw)
            rounded[known] = regrade(raw[known])
        merged["grade"] = rounded
    out = judgments.drop_duplicates(subset=key, keep="first").copy()
    first_rows = dups.drop_duplicates(subset=key, keep="first").index
    for column in agg:
        out.loc[first_rows, column] = merged[column].to_numpy()
    if "grade" in out.columns:
        out["grade"] = out["grade"].astype(judgments["grade"].dtype)
    return out


def _observed_regrade(raw_scores: pd.Series, grades: pd.Series):
    """The grade of the nearest observed raw_score, if grade is a non-decreasing function of raw_score."""
    table = pd.DataFrame({"raw": raw_scores.to_numpy(dtype=float), "grade": grades.to_numpy()}).dropna()
    table = table.drop_duplicates().sort_values(["raw", "grade"])
    if table.empty or table["raw"].duplicated().any() or (np.diff(table["grade"].to_numpy()) < 0).any():
        return None
    raw, grade = table["raw"].to_numpy(), table["grade"].to_numpy()

    def regrade(values: np.ndarray) -> np.ndarray:
        if len(raw) == 1:
            return np.full(len(values), grade[0])
        right = np.clip(np.searchsorted(raw, values), 1, len(raw) - 1)
        left = right - 1
        nearest = np.where(np.abs(values - raw[left]) <= np.abs(raw[right] - values), left, right)
        return grade[nearest]

    return regrade


def _check_grades(grades: pd.Series, source: str | Path, num_grades: int | None) -> tuple[pd.Series, int]:
    numeric = pd.to_numeric(grades, errors="coerce")
    bad = numeric.isna() | (np.mod(numeric.fillna(0), 1) != 0)
    if bad.any():
        raise DataContractError(
            f"{source}: column 'grade' must hold integers 0..K-1, got e.g. {grades[bad].head(3).tolist()}"
        )
    numeric = numeric.astype("int64")
    if num_grades is None:
        num_grades = max(int(numeric.max()) + 1, 2) if len(numeric) else 2
    out_of_range = (numeric < 0) | (numeric >= num_grades)
    if out_of_range.any():
        raise DataContractError(
            f"{source}: {int(out_of_range.sum())} grade(s) out of range in column 'grade'; expected "
            f"0..{num_grades - 1} (K={num_grades}), got {sorted(numeric[out_of_range].unique().tolist())[:5]}"
        )
    return numeric, num_grades


def _queries_from(df: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    """Unique (query_id, query, locale) rows from a table that carries query text; one text per id."""
    columns = ["query_id", "query"] + (["locale"] if "locale" in df.columns else [])
    queries = df[columns].drop_duplicates()
    if "locale" not in queries.columns:
        queries = queries.assign(locale=DEFAULT_LOCALE)
    clash = queries.duplicated(subset=["query_id"], keep=False)
    if clash.any():
        example = queries.loc[clash].head(4).to_dict("records")
        raise DataContractError(f"{source}: a query_id carries more than one query text/locale, e.g. {example}")
    return queries.reset_index(drop=True)


def _derive_query_ids(df: pd.DataFrame, source: str | Path) -> pd.DataFrame:
    if "query_id" in df.columns:
        df["query_id"] = df["query_id"].astype(str)
        return df
    if "query" not in df.columns:
        raise DataContractError(
            f"{source}: missing column(s) ['query_id'] and no 'query' (or 'search_term') column to derive it from; "
            f"got {list(df.columns)}"
        )
    # Derived ids hash the normalised text, so store the normalised text too: one text per id.
    df["query"] = df["query"].astype(str).map(normalize_query)
    df["query_id"] = stable_query_ids(df["query"])
    return df


def load_items(path: str | Path) -> pd.DataFrame:
    """Read an items file (parquet/CSV) into the canonical items columns.

    Aliases: product_id/product_uid -> item_id, product_title/product_name/name -> title,
    product_description -> description. A missing locale becomes the default locale.
    """
    path = Path(path)
    items = apply_aliases(read_table(path), ITEM_ALIASES)
    require_columns(items, path, ["item_id"])
    items["item_id"] = items["item_id"].astype(str)
    if "locale" not in items.columns:
        items["locale"] = DEFAULT_LOCALE
    return items


def load_queries(path: str | Path) -> pd.DataFrame:
    """Read a queries file; query_id is derived from the text when absent."""
    path = Path(path)
    queries = apply_aliases(read_table(path), QUERY_ALIASES)
    require_columns(queries, path, ["query"])
    queries = _derive_query_ids(queries, path)
    return _queries_from(queries, path)


def load_judgments(path: str | Path, num_grades: int | None = None, valid_fraction: float = 0.1,
                   test_fraction: float = 0.2, salt: str = "") -> tuple[pd.DataFrame | None, pd.DataFrame, int]:
    """Read a judgments file into ``(queries, judgments, num_grades)``.

    Aliases: product_id/product_uid -> item_id, search_term -> query, relevance -> raw_score. Without a
    query_id column the id is :func:`stable_query_id` of the normalised query. When the file carries query
    text the queries table is derived from it, otherwise ``queries`` is None and must come from elsewhere.
    ``num_grades=None`` infers K = max(grade) + 1. Without a split column, splits are assigned by a hash of
    the query (text if present, else id) so a query never straddles two splits. Repeated (query_id, item_id)
    rows are merged (see :func:`merge_duplicate_pairs`).
    """
    path = Path(path)
    df = apply_aliases(read_table(path), JUDGMENT_ALIASES)
    require_columns(df, path, ["item_id", "grade"])
    df = _derive_query_ids(df, path)
    df["item_id"] = df["item_id"].astype(str)
    nulls = df[["query_id", "item_id", "grade"]].isna().sum()
    if nulls.any():
        raise DataContractError(f"{path}: null values in {nulls[nulls > 0].to_dict()}; nulls are not allowed")
    df["grade"], num_grades = _check_grades(df["grade"], path, num_grades)
    if "raw_score" in df.columns:
        df["raw_score"] = pd.to_numeric(df["raw_score"], errors="coerce").astype(float)

    queries = _queries_from(df, path) if "query" in df.columns else None
    if "split" not in df.columns:
        basis = df["query"] if "query" in df.columns else df["query_id"]
        df["split"] = assign_splits(basis.astype(str), valid_fraction, test_fraction, salt)
    columns = ["query_id", "item_id", "grade", "split"] + (["raw_score"] if "raw_score" in df.columns else [])
    judgments = merge_duplicate_pairs(df[columns].copy(), path).reset_index(drop=True)
    return queries, judgments, num_grades


def load_impressions(path: str | Path) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """Read an impressions file into ``(queries or None, impressions)``, with the judgment aliases."""
    path = Path(path)
    df = apply_aliases(read_table(path), JUDGMENT_ALIASES)
    require_columns(df, path, ["item_id"])
    df = _derive_query_ids(df, path)
    df["item_id"] = df["item_id"].astype(str)
    queries = _queries_from(df, path) if "query" in df.columns else None
    impressions = df[["query_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    return queries, impressions


def union_queries(*tables: pd.DataFrame | None) -> pd.DataFrame:
    """Concatenate query tables, keeping the first row per query_id."""
    present = [t for t in tables if t is not None]
    if not present:
        raise DataContractError("no query table and no query text in judgments or impressions")
    return pd.concat(present, ignore_index=True).drop_duplicates(subset=["query_id"]).reset_index(drop=True)


def load(path: str | Path, num_grades: int | None = None, valid_fraction: float = 0.1,
         test_fraction: float = 0.2, salt: str = "") -> Dataset:
    """Build a validated :class:`Dataset` from a folder of items/judgments[/queries/impressions] tables.

    The dataset is named after the folder. A dataset.json in the folder supplies K, grade names and gains.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DataContractError(f"{directory}: not a directory; the generic adapter reads a folder of tables")
    info = DatasetInfo.load(directory) if (directory / "dataset.json").is_file() else None
    if info is not None:
        if num_grades is not None and num_grades != info.num_grades:
            raise DataContractError(f"{directory}/dataset.json: num_grades {info.num_grades}, but "
                                    f"num_grades={num_grades} was requested")
        num_grades = info.num_grades
    items = load_items(find_table(directory, "items"))
    judged_queries, judgments, num_grades = load_judgments(
        find_table(directory, "judgments"), num_grades, valid_fraction, test_fraction, salt)
    queries_path = find_table(directory, "queries", required=False)
    file_queries = load_queries(queries_path) if queries_path else None

    impressions = None
    impression_queries = None
    impressions_path = find_table(directory, "impressions", required=False)
    if impressions_path:
        impression_queries, impressions = load_impressions(impressions_path)
    queries = union_queries(file_queries, judged_queries, impression_queries)

    if info is None:
        info = DatasetInfo(name=directory.name, num_grades=num_grades)
    if "raw_score" in judgments.columns and info.raw_score_min is None and judgments["raw_score"].notna().any():
        info.raw_score_min = float(judgments["raw_score"].min())
        info.raw_score_max = float(judgments["raw_score"].max())
    return Dataset(info, items, queries, judgments, impressions).validated()
