"""The synthetic shop: deterministic, streamed, valid under the data contract, and graded by its rubric."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from relevance.data import synthetic
from relevance.data.schema import TEXT_FIELDS, Dataset
from relevance.data.splits import normalize_query
from relevance.data.synthetic import (
    COMPLEMENTS,
    DEPARTMENT_OF,
    FIELD_COVERAGE,
    GRADE_NAMES,
    ItemAttributes,
    QueryIntent,
    generate,
    rubric_grade,
)

TABLES = ("items", "queries", "judgments", "impressions")


@pytest.fixture(scope="module")
def default_shop(tmp_path_factory):
    return Dataset.load(generate(tmp_path_factory.mktemp("shop") / "default"))


def _digests(directory) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def test_same_arguments_give_byte_identical_files(tmp_path):
    arguments = dict(num_items=300, num_judged_queries=60, num_impressions=25_000, chunk_rows=7_000, seed=3)
    first = _digests(generate(tmp_path / "a", **arguments))
    second = _digests(generate(tmp_path / "b", **arguments))
    assert first == second
    assert set(first) == {"dataset.json", *(f"{table}.parquet" for table in TABLES)}


def test_a_different_seed_gives_a_different_shop(tmp_path):
    first = _digests(generate(tmp_path / "a", num_items=200, num_judged_queries=30, num_impressions=1000, seed=1))
    second = _digests(generate(tmp_path / "b", num_items=200, num_judged_queries=30, num_impressions=1000, seed=2))
    assert first["items.parquet"] != second["items.parquet"]


def test_tables_do_not_depend_on_chunk_rows(tmp_path):
    arguments = dict(num_items=300, num_judged_queries=40, num_impressions=23_000, seed=5)
    small = generate(tmp_path / "small", chunk_rows=3_000, **arguments)
    large = generate(tmp_path / "large", chunk_rows=100_000, **arguments)
    for table in TABLES:
        assert pq.read_table(small / f"{table}.parquet").equals(pq.read_table(large / f"{table}.parquet")), table
    assert pq.ParquetFile(small / "impressions.parquet").metadata.num_row_groups == 8  # streamed in row groups


def test_default_shop_is_a_valid_synthetic_dataset(default_shop):
    dataset = default_shop
    info = dataset.info
    assert info.synthetic and "SYNTHETIC" in info.description
    assert info.num_grades == 5 and info.grade_names == GRADE_NAMES
    assert len(dataset.items) == 2000 and dataset.items["item_id"].is_unique
    assert len(dataset.impressions) == 20_000
    assert dataset.judgments["query_id"].nunique() == 300
    assert dataset.judgments.groupby("query_id").size().eq(12).all()
    for split in ("train", "valid", "test"):
        assert len(dataset.split(split)) > 0


def test_impressions_are_distinct_unjudged_pairs_from_unjudged_queries(default_shop):
    dataset = default_shop
    impressions, judgments, queries = dataset.impressions, dataset.judgments, dataset.queries
    assert not impressions.duplicated(["query_id", "item_id"]).any()
    assert impressions.merge(judgments, on=["query_id", "item_id"]).empty
    text = queries.set_index("query_id")["query"].map(normalize_query)
    judged_texts = set(text[judgments["query_id"].unique()])
    impression_texts = set(text[impressions["query_id"].unique()])
    assert not judged_texts & impression_texts
    # The queries table holds exactly the queries that something refers to.
    assert set(queries["query_id"]) == set(judgments["query_id"]) | set(impressions["query_id"])


def test_judged_query_texts_are_distinct_and_splits_follow_the_text(default_shop):
    dataset = default_shop
    judged = dataset.queries[dataset.queries["query_id"].isin(dataset.judgments["query_id"])]
    assert judged["query"].map(normalize_query).is_unique
    assert dataset.judgments.groupby("query_id")["split"].nunique().eq(1).all()


def test_field_coverage_is_partial_and_near_its_targets(default_shop):
    dataset = default_shop
    for field in TEXT_FIELDS:
        coverage = (dataset.items[field] != "").mean()
        assert abs(coverage - FIELD_COVERAGE[field]) < 0.05, (field, coverage)
    assert (dataset.items[list(TEXT_FIELDS)] != "").any(axis=1).all()
    assert (dataset.items["price"] > 0).all() and (dataset.items["popularity"] >= 0).all()


def test_every_locale_has_items_and_queries_in_its_own_language(default_shop):
    dataset = default_shop
    locales = set(synthetic.SUPPORTED_LOCALES)
    assert set(dataset.items["locale"]) == locales and set(dataset.queries["locale"]) == locales
    queries = dataset.queries.set_index("locale")["query"]
    assert queries["ja_JP"].str.contains(r"[\u3040-\u30ff\u4e00-\u9fff]").all()
    assert not queries["en_US"].str.contains(r"[\u3040-\u30ff\u4e00-\u9fff]").any()
    german_nouns = {word.lower() for word in synthetic.VOCABULARIES["de_DE"].categories}
    assert queries["de_DE"].map(lambda q: any(noun in q for noun in german_nouns)).mean() > 0.8
    pairs = (dataset.impressions.merge(dataset.queries, on="query_id")
             .merge(dataset.items[["item_id", "locale"]], on="item_id", suffixes=("_query", "_item")))
    own_locale = (pairs["locale_query"] == pairs["locale_item"]).mean()
    assert 0.85 < own_locale < 0.97  # mostly own locale, some cross-locale results


def test_every_grade_is_well_represented(default_shop):
    dataset = default_shop
    shares = dataset.judgments["grade"].value_counts(normalize=True).reindex(range(5), fill_value=0.0)
    assert (shares >= 0.05).all(), shares.to_dict()


def test_rubric():
    sofa = ItemAttributes(category="sofa", colour="red", material="leather", brand="Nordhem", style="modern")
    assert rubric_grade(QueryIntent("sofa"), sofa) == 4
    assert rubric_grade(QueryIntent("sofa", colour="red", material="leather", brand="Nordhem", style="modern"),
                        sofa) == 4
    assert rubric_grade(QueryIntent("sofa", colour="blue", material="leather"), sofa) == 3
    assert rubric_grade(QueryIntent("sofa", colour="blue", material="velvet"), sofa) == 2
    assert rubric_grade(QueryIntent("armchair", colour="red"), sofa) == 2  # sibling: a substitute
    assert rubric_grade(QueryIntent("cushion", colour="red"), sofa) == 1  # complement, whatever the colour
    assert rubric_grade(QueryIntent("drill"), sofa) == 0
    drill = ItemAttributes(category="drill", colour="black", material="plastic", brand="Torkraft", style="modern")
    assert rubric_grade(QueryIntent("drill bits"), drill) == 1
    bits = ItemAttributes(category="drill bits", colour="red", material="steel", brand="Ferrox", style="modern")
    assert rubric_grade(QueryIntent("drill bits"), bits) == 4


def test_complements_are_symmetric_and_never_siblings():
    for category, complements in COMPLEMENTS.items():
        for other in complements:
            assert category in COMPLEMENTS[other]
            assert DEPARTMENT_OF[other] != DEPARTMENT_OF[category]
    assert all(COMPLEMENTS.values()), "every category should have a complement, so that grade 1 occurs everywhere"


def test_annotator_noise_moves_grades_by_one_step_on_the_same_pairs(tmp_path):
    arguments = dict(num_items=500, num_judged_queries=150, num_impressions=0)
    clean = Dataset.load(generate(tmp_path / "clean", annotator_noise=0.0, **arguments)).judgments
    noisy = Dataset.load(generate(tmp_path / "noisy", annotator_noise=0.2, **arguments)).judgments
    merged = clean.merge(noisy, on=["query_id", "item_id"], suffixes=("_clean", "_noisy"))
    assert len(merged) == len(clean) == len(noisy)
    step = (merged["grade_noisy"] - merged["grade_clean"]).abs()
    assert step.max() == 1 and 0.1 < (step == 1).mean() < 0.2  # 0.2, less the steps clipped at 0 and 4
    # Every query comes from an item that matches it exactly, and that item is always retrieved.
    assert clean.groupby("query_id")["grade"].max().eq(4).all()


def test_fields_name_the_attributes_the_design_says():
    catalog = synthetic.sample_catalog(400, ("en_US",), seed=0)
    items = synthetic.render_items(catalog, seed=0).to_pandas()
    for i, item in items.iterrows():
        category, colour = synthetic.CATEGORIES[catalog.category[i]], synthetic.COLOURS[catalog.colour[i]]
        brand, style = synthetic.BRANDS[catalog.brand[i]], synthetic.STYLES[catalog.style[i]]
        material = synthetic.MATERIALS[catalog.material[i]]
        if item["caption"]:
            assert category in item["caption"] and colour in item["caption"]
            assert brand not in item["caption"]
        if item["title"]:
            assert brand in item["title"] and material in item["title"] and category in item["title"]
            assert colour not in item["title"].split()
        if item["board_titles"]:
            assert category not in item["board_titles"]
        if item["link_titles"]:
            assert brand in item["link_titles"] and category in item["link_titles"]
    boards = items.loc[items["board_titles"] != "", "board_titles"]
    styles = [synthetic.STYLES[s] for s in catalog.style[boards.index]]
    assert np.mean([style in board for style, board in zip(styles, boards)]) > 0.5


def test_rejects_unknown_locales_and_bad_counts(tmp_path):
    with pytest.raises(ValueError, match="locales"):
        generate(tmp_path / "x", locales=("en_US", "xx_XX"))
    with pytest.raises(ValueError, match="annotator_noise"):
        generate(tmp_path / "x", annotator_noise=1.5)
    assert not (tmp_path / "x").exists()


def _peak_rss_mb(tmp_path, num_impressions: int) -> float:
    script = (
        "import resource, sys\n"
        "from relevance.data.synthetic import generate\n"
        f"generate(sys.argv[1], num_items=500, num_judged_queries=50, num_impressions={num_impressions}, "
        "chunk_rows=20_000)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / str(num_impressions))], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_impressions_stream_in_bounded_memory(tmp_path):
    # Eight times the rows; holding them would cost ~50 MB more (two string columns of 1.4 M extra rows).
    small, large = _peak_rss_mb(tmp_path, 200_000), _peak_rss_mb(tmp_path, 1_600_000)
    assert large - small < 25, (small, large)
