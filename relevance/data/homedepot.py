"""Home Depot product-search relevance (Kaggle, 2016): real search terms, real product titles, human grades.

``relevance`` is the mean of three human ratings on a 1-3 scale. It becomes five grades, like Pinterest's
L1..L5, exactly as ``../shared/data/homedepot/README.md`` defines them: 1.0 -> 0, (1,2) -> 1, 2.0 -> 2,
(2,3) -> 3, 3.0 -> 4. The raw mean is kept as ``raw_score``.

Two sources are read:

* the prepared folder (products.parquet, judgments.parquet, impressions.parquet): its query ids, grades and
  splits are kept as given;
* the competition's own train.csv (ISO-8859-1), optionally with product_descriptions.csv beside it: queries
  are normalised, ids are :func:`~relevance.data.generic.stable_query_id`, splits are a hash of the query.
  A test.csv beside it (the competition's unrated pairs) becomes the impressions pool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from relevance.data.generic import (
    merge_duplicate_pairs,
    read_table,
    require_columns,
    require_file,
    stable_query_ids,
    union_queries,
)
from relevance.data.schema import DEFAULT_LOCALE, Dataset, DataContractError, DatasetInfo
from relevance.data.splits import assign_splits, normalize_query

NUM_GRADES = 5
GRADE_NAMES = [
    "irrelevant(1.0)",
    "mostly irrelevant(1-2)",
    "somewhat relevant(2.0)",
    "mostly relevant(2-3)",
    "perfectly relevant(3.0)",
]
RAW_MIN, RAW_MAX = 1.0, 3.0
# Means of three ratings are thirds (1.33, 2.67) rounded to two decimals; 1e-6 separates 2.0 from 1.99 safely.
TOLERANCE = 1e-6
KAGGLE_ENCODING = "ISO-8859-1"
KAGGLE_COLUMNS = ["product_uid", "product_title", "search_term", "relevance"]


def info() -> DatasetInfo:
    return DatasetInfo(
        name="homedepot",
        num_grades=NUM_GRADES,
        grade_names=list(GRADE_NAMES),
        raw_score_min=RAW_MIN,
        raw_score_max=RAW_MAX,
        description="Home Depot Product Search Relevance (Kaggle 2016): mean of three 1-3 human ratings.",
    )


def relevance_to_grade(relevance, tolerance: float = TOLERANCE) -> np.ndarray:
    """Map mean ratings in [1, 3] to grades 0..4: the integers 1, 2, 3 and the open intervals between them."""
    r = np.asarray(relevance, dtype=float)
    bad = ~np.isfinite(r) | (r < RAW_MIN - tolerance) | (r > RAW_MAX + tolerance)
    if bad.any():
        raise DataContractError(
            f"relevance: expected values in [{RAW_MIN}, {RAW_MAX}], got e.g. {np.unique(r[bad])[:5].tolist()}"
        )
    grade = np.where(r < 2.0 - tolerance, 1, np.where(r <= 2.0 + tolerance, 2, 3))
    grade = np.where(r <= RAW_MIN + tolerance, 0, grade)
    grade = np.where(r >= RAW_MAX - tolerance, 4, grade)
    return grade.astype("int64")


def load(path: str | Path, valid_fraction: float = 0.1, test_fraction: float = 0.2, salt: str = "",
         with_impressions: bool = True) -> Dataset:
    """Load Home Depot from the prepared folder or from the Kaggle train.csv (file or its folder).

    The split options apply to the Kaggle source only; the prepared folder's splits are kept.
    """
    path = Path(path)
    if path.is_dir() and (path / "products.parquet").is_file():
        return load_prepared(path, with_impressions=with_impressions)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_kaggle(path, valid_fraction, test_fraction, salt, with_impressions)
    if path.is_dir() and (path / "train.csv").is_file():
        return load_kaggle(path / "train.csv", valid_fraction, test_fraction, salt, with_impressions)
    if not path.exists():
        raise DataContractError(f"{path}: not found; expected the Home Depot folder or the Kaggle train.csv")
    raise DataContractError(
        f"{path}: not a Home Depot source; expected a folder with products.parquet, a folder with train.csv, "
        f"or a .csv file"
    )


def load_prepared(directory: str | Path, with_impressions: bool = True) -> Dataset:
    """The prepared folder: keeps its query_id, grade and split; raw_score = relevance."""
    directory = Path(directory)
    products_path = require_file(directory / "products.parquet", "Home Depot products")
    judgments_path = require_file(directory / "judgments.parquet", "Home Depot judgments")
    products = read_table(products_path)
    require_columns(products, products_path, ["product_id", "title"])
    raw = read_table(judgments_path)
    require_columns(raw, judgments_path, ["query_id", "query", "product_id", "relevance", "grade", "split"])

    items = pd.DataFrame({
        "item_id": products["product_id"].astype(str),
        "locale": DEFAULT_LOCALE,
        "title": products["title"].fillna("").astype(str),
    })
    try:
        grades = relevance_to_grade(raw["relevance"])
    except DataContractError as exc:
        raise DataContractError(f"{judgments_path}: column 'relevance': {exc}") from None
    given = pd.to_numeric(raw["grade"], errors="coerce").to_numpy()
    mismatch = given != grades
    if mismatch.any():
        example = raw.loc[mismatch, ["relevance", "grade"]].head(3).to_dict("records")
        raise DataContractError(
            f"{judgments_path}: column 'grade' disagrees with 'relevance' in {int(mismatch.sum())} row(s) under "
            f"the README mapping, e.g. {example}"
        )
    judgments = pd.DataFrame({
        "query_id": raw["query_id"].astype(str),
        "item_id": raw["product_id"].astype(str),
        "grade": grades,
        "split": raw["split"].astype(str),
        "raw_score": raw["relevance"].astype(float),
    })
    # The source rates a few (query, product) pairs twice ("fence mesh"); average them into one judgment.
    judgments = merge_duplicate_pairs(judgments, judgments_path, regrade=relevance_to_grade)
    queries = [raw[["query_id", "query"]]]

    impressions = None
    impressions_path = directory / "impressions.parquet"
    if with_impressions and impressions_path.is_file():
        shown = read_table(impressions_path)
        require_columns(shown, impressions_path, ["query_id", "query", "product_id"])
        impressions = pd.DataFrame({
            "query_id": shown["query_id"].astype(str),
            "item_id": shown["product_id"].astype(str),
        })
        queries.append(shown[["query_id", "query"]])
    queries = union_queries(*(q.assign(query_id=q["query_id"].astype(str)).drop_duplicates() for q in queries))
    queries["locale"] = DEFAULT_LOCALE
    return Dataset(info(), items, queries, judgments.reset_index(drop=True), impressions).validated()


def _read_kaggle_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    require_file(path)
    try:
        df = pd.read_csv(path, encoding=KAGGLE_ENCODING, dtype={"product_uid": str, "id": str})
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataContractError(f"{path}: cannot parse as CSV ({exc})") from exc
    require_columns(df, path, columns)
    return df


def load_kaggle(train_csv: str | Path, valid_fraction: float = 0.1, test_fraction: float = 0.2, salt: str = "",
                with_impressions: bool = True) -> Dataset:
    """The competition's train.csv (+ product_descriptions.csv, + test.csv as impressions, when beside it)."""
    train_csv = Path(train_csv)
    train = _read_kaggle_csv(train_csv, KAGGLE_COLUMNS)
    sources = [(train_csv, train)]
    test_csv = train_csv.with_name("test.csv")
    test = None
    if with_impressions and test_csv.is_file() and test_csv != train_csv:
        test = _read_kaggle_csv(test_csv, ["product_uid", "product_title", "search_term"])
        sources.append((test_csv, test))
    frames = [df for _, df in sources]

    for source, df in sources:
        df["query"] = df["search_term"].fillna("").astype(str).map(normalize_query)
        empty = df["query"] == ""
        if empty.any():
            raise DataContractError(f"{source}: {int(empty.sum())} row(s) with an empty 'search_term'")
        df["query_id"] = stable_query_ids(df["query"])
        df["item_id"] = df["product_uid"].astype(str)

    products = pd.concat([df[["item_id", "product_title"]] for df in frames], ignore_index=True)
    items = (products.drop_duplicates(subset=["item_id"])
             .rename(columns={"product_title": "title"})
             .assign(locale=DEFAULT_LOCALE)
             .reset_index(drop=True))
    descriptions_csv = train_csv.with_name("product_descriptions.csv")
    if descriptions_csv.is_file():
        descriptions = _read_kaggle_csv(descriptions_csv, ["product_uid", "product_description"])
        descriptions = descriptions.drop_duplicates(subset=["product_uid"]).set_index("product_uid")
        items["description"] = items["item_id"].map(descriptions["product_description"]).fillna("")

    relevance = pd.to_numeric(train["relevance"], errors="coerce")
    judgments = pd.DataFrame({
        "query_id": train["query_id"],
        "item_id": train["item_id"],
        "raw_score": relevance.astype(float),
        "query": train["query"],
    })
    # Home Depot's train.csv repeats some (query, product) pairs with different ratings: average them.
    judgments = judgments.groupby(["query_id", "item_id"], sort=False, as_index=False).agg(
        raw_score=("raw_score", "mean"), query=("query", "first"))
    try:
        judgments["grade"] = relevance_to_grade(judgments["raw_score"])
    except DataContractError as exc:
        raise DataContractError(f"{train_csv}: column 'relevance': {exc}") from None
    judgments["split"] = assign_splits(judgments["query"], valid_fraction, test_fraction, salt)

    queries = pd.concat([df[["query_id", "query"]] for df in frames], ignore_index=True).drop_duplicates(
        subset=["query_id"]).assign(locale=DEFAULT_LOCALE).reset_index(drop=True)
    impressions = None
    if test is not None:
        impressions = test[["query_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    judgments = judgments[["query_id", "item_id", "grade", "split", "raw_score"]]
    return Dataset(info(), items, queries, judgments, impressions).validated()
