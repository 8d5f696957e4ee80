"""Dataset adapters: Home Depot (prepared folder and Kaggle CSV), ESCI, WANDS and the generic folder reader.

ESCI, WANDS and Kaggle Home Depot run on tiny fixtures written here with the official column sets; the prepared
Home Depot folder is read from ../shared/data/homedepot when it exists (never copied into the repo).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relevance.data import esci, generic, homedepot, wands
from relevance.data.schema import SPLITS, DataContractError, Dataset
from relevance.data.splits import normalize_query

SHARED_HOMEDEPOT = Path(__file__).resolve().parents[3] / "shared/data/homedepot"


def assert_contract(ds: Dataset) -> None:
    """Keys unique, ids strings, references resolved (validated() again must be a no-op)."""
    assert ds.items["item_id"].is_unique
    assert ds.queries["query_id"].is_unique
    assert not ds.judgments.duplicated(["query_id", "item_id"]).any()
    assert ds.judgments["item_id"].map(type).eq(str).all()
    assert ds.judgments["query_id"].map(type).eq(str).all()
    assert set(ds.judgments["split"]) <= set(SPLITS)
    assert ds.judgments["grade"].between(0, ds.num_grades - 1).all()
    ds.validated()


# --------------------------------------------------------------------------------------------- shared helpers

def test_stable_query_id_is_normalised_and_deterministic():
    assert generic.stable_query_id("  Angle  Bracket ") == generic.stable_query_id("angle bracket")
    assert generic.stable_query_id("angle bracket") != generic.stable_query_id("deck over")
    qid = generic.stable_query_id("angle bracket")
    assert qid.startswith("q") and len(qid) == 13
    assert qid == "q" + __import__("hashlib").sha1(b"angle bracket").hexdigest()[:12]


@pytest.mark.parametrize("relevance, grade", [
    (1.0, 0), (1.25, 1), (1.33, 1), (1.67, 1), (1.75, 1), (2.0, 2), (2.0000001, 2),
    (2.25, 3), (2.33, 3), (2.67, 3), (2.75, 3), (3.0, 4), (2.9999999, 4),
])
def test_homedepot_grade_mapping(relevance, grade):
    assert homedepot.relevance_to_grade([relevance]).tolist() == [grade]


def test_homedepot_grade_mapping_rejects_out_of_scale():
    with pytest.raises(DataContractError, match=r"\[1.0, 3.0\]"):
        homedepot.relevance_to_grade([0.5, 2.0])


# --------------------------------------------------------------------------------------------- Home Depot Kaggle

def write_kaggle(folder: Path, with_descriptions: bool = True, with_test: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train = pd.DataFrame({
        "id": [2, 3, 9, 16, 17, 18, 20, 21, 23, 27, 30],
        "product_uid": [100001, 100001, 100002, 100005, 100005, 100006, 100006, 100007, 100007, 100009, 100009],
        "product_title": [
            "Simpson Strong-Tie 12-Gauge Angle", "Simpson Strong-Tie 12-Gauge Angle",
            "BEHR Premium Textured DeckOver 1-gal.", "Delta Vero 1-Handle Shower Only Faucet Trim Kit",
            "Delta Vero 1-Handle Shower Only Faucet Trim Kit", "Whirlpool 1.9 cu. ft. Over the Range Microwave",
            "Whirlpool 1.9 cu. ft. Over the Range Microwave", "Lithonia Lighting Quantum 2-Light Exit Sign",
            "Lithonia Lighting Quantum 2-Light Exit Sign", "Paslode 30\u00b0 Framing Nails",
            "Paslode 30\u00b0 Framing Nails",
        ],
        "search_term": ["angle bracket", "l bracket", "deck over", "rain shower head", "shower only faucet",
                        "convection otr", "microwave over stove", "emergency light", "Emergency  Light",
                        "framing nails", "caf\u00e9 nails"],
        "relevance": [3.0, 2.5, 3.0, 2.33, 2.67, 3.0, 2.67, 1.67, 2.33, 1.0, 2.0],
    })
    train.to_csv(folder / "train.csv", index=False, encoding="ISO-8859-1")
    if with_descriptions:
        pd.DataFrame({
            "product_uid": [100001, 100002, 100005, 100006, 100007, 100009],
            "product_description": ["Angle made from 12-gauge steel", "Revives wood and composite decks",
                                    "Update your bathroom", "Over-the-range microwave", "Exit sign",
                                    "Nails at 30\u00b0"],
        }).to_csv(folder / "product_descriptions.csv", index=False, encoding="ISO-8859-1")
    if with_test:
        pd.DataFrame({
            "id": [1, 4],
            "product_uid": [100001, 100010],
            "product_title": ["Simpson Strong-Tie 12-Gauge Angle", "Valley View Industries Metal Stakes"],
            "search_term": ["90 degree bracket", "metal plate cover gcfi"],
        }).to_csv(folder / "test.csv", index=False, encoding="ISO-8859-1")
    return folder / "train.csv"


def test_homedepot_kaggle_train_csv(tmp_path):
    train_csv = write_kaggle(tmp_path / "hd")
    ds = homedepot.load(train_csv)
    assert_contract(ds)
    assert ds.info.name == "homedepot" and ds.num_grades == 5
    assert ds.info.raw_score_min == 1.0 and ds.info.raw_score_max == 3.0
    assert ds.info.grade_names[0] == "irrelevant(1.0)"
    # Latin-1 read correctly, into title and description.
    nails = ds.items.set_index("item_id").loc["100009"]
    assert "30\u00b0" in nails["title"] and nails["description"] == "Nails at 30\u00b0"
    assert ds.items["locale"].eq("en_US").all()
    # Queries normalised; "emergency light" / "Emergency  Light" collapse into one (query, product) pair.
    assert set(ds.queries["query"]) == {normalize_query(q) for q in pd.read_csv(
        train_csv, encoding="ISO-8859-1")["search_term"]}
    assert "caf\u00e9 nails" in set(ds.queries["query"])
    qid = generic.stable_query_id("emergency light")
    merged = ds.judgments[(ds.judgments["query_id"] == qid) & (ds.judgments["item_id"] == "100007")]
    assert len(merged) == 1
    assert merged["raw_score"].iloc[0] == pytest.approx(2.0)
    assert merged["grade"].iloc[0] == 2
    assert len(ds.judgments) == 10
    grade_of = ds.judgments.set_index("item_id")
    assert ds.judgments.loc[ds.judgments["raw_score"] == 1.0, "grade"].tolist() == [0]
    assert grade_of.loc["100002", "grade"] == 4
    # Splits are a function of the normalised query, so each query sits in exactly one split.
    assert (ds.judgments.groupby("query_id")["split"].nunique() == 1).all()
    assert ds.impressions is None


def test_homedepot_kaggle_directory_and_split_options(tmp_path):
    write_kaggle(tmp_path / "hd", with_descriptions=False, with_test=True)
    ds = homedepot.load(tmp_path / "hd", valid_fraction=0.0, test_fraction=0.0)
    assert set(ds.judgments["split"]) == {"train"}
    assert "description" not in ds.items.columns
    # The competition's unrated test.csv becomes the impression pool, and its products become items.
    assert len(ds.impressions) == 2 and "100010" in set(ds.items["item_id"])
    assert generic.stable_query_id("90 degree bracket") in set(ds.queries["query_id"])
    again = homedepot.load(tmp_path / "hd", valid_fraction=0.3, test_fraction=0.3)
    assert again.judgments["split"].nunique() > 1


def test_homedepot_kaggle_errors(tmp_path):
    train_csv = write_kaggle(tmp_path / "hd", with_descriptions=False)
    df = pd.read_csv(train_csv, encoding="ISO-8859-1")
    df.drop(columns="search_term").to_csv(tmp_path / "no_query.csv", index=False)
    with pytest.raises(DataContractError, match=r"no_query.csv.*search_term"):
        homedepot.load(tmp_path / "no_query.csv")
    df.assign(relevance=[3.5] + df["relevance"].tolist()[1:]).to_csv(tmp_path / "bad_scale.csv", index=False)
    with pytest.raises(DataContractError, match=r"bad_scale.csv.*relevance.*3.5"):
        homedepot.load(tmp_path / "bad_scale.csv")
    with pytest.raises(DataContractError, match="not found"):
        homedepot.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataContractError, match="products.parquet"):
        homedepot.load(tmp_path / "empty")


# --------------------------------------------------------------------------------------------- Home Depot prepared

def write_prepared(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"product_id": ["100001", "100002", "100005"],
                  "title": ["Angle", "DeckOver", "Shower Faucet"]}).to_parquet(folder / "products.parquet")
    pd.DataFrame({
        "query_id": ["q0884126951", "q0884126951", "q2102141509", "q3285533610", "q3285533610"],
        "query": ["angle bracket", "angle bracket", "deck over", "fence mesh", "fence mesh"],
        "product_id": ["100001", "100002", "100002", "100005", "100005"],
        "relevance": [3.0, 1.33, 2.0, 2.33, 1.67],
        "grade": np.array([4, 1, 2, 3, 1], dtype="int8"),
        "split": ["train", "train", "valid", "test", "test"],
    }).to_parquet(folder / "judgments.parquet")
    pd.DataFrame({"query_id": ["q5706646790"], "query": ["rain shower head"],
                  "product_id": ["100005"]}).to_parquet(folder / "impressions.parquet")
    return folder


def test_homedepot_prepared_fixture(tmp_path):
    ds = homedepot.load(write_prepared(tmp_path / "hd"))
    assert_contract(ds)
    # The repeated (fence mesh, 100005) pair is averaged: (2.33 + 1.67) / 2 = 2.0 -> grade 2.
    fence = ds.judgments[ds.judgments["query_id"] == "q3285533610"]
    assert len(fence) == 1 and fence["raw_score"].iloc[0] == pytest.approx(2.0) and fence["grade"].iloc[0] == 2
    assert ds.judgments.set_index(["query_id", "item_id"]).loc[("q0884126951", "100002"), "grade"] == 1
    assert set(ds.queries["query_id"]) == {"q0884126951", "q2102141509", "q3285533610", "q5706646790"}
    assert ds.impressions[["query_id", "item_id"]].values.tolist() == [["q5706646790", "100005"]]


def test_homedepot_prepared_rejects_inconsistent_grade(tmp_path):
    folder = write_prepared(tmp_path / "hd")
    df = pd.read_parquet(folder / "judgments.parquet")
    df.loc[0, "grade"] = 2
    df.to_parquet(folder / "judgments.parquet")
    with pytest.raises(DataContractError, match=r"judgments.parquet.*'grade' disagrees with 'relevance'"):
        homedepot.load(folder)
    pd.DataFrame({"product_id": ["1"]}).to_parquet(folder / "products.parquet")
    with pytest.raises(DataContractError, match=r"products.parquet.*\['title'\]"):
        homedepot.load(folder)


def test_homedepot_real_folder():
    if not (SHARED_HOMEDEPOT / "products.parquet").is_file():
        pytest.skip(f"{SHARED_HOMEDEPOT} is absent")
    ds = homedepot.load(SHARED_HOMEDEPOT)
    assert_contract(ds)
    raw = pd.read_parquet(SHARED_HOMEDEPOT / "judgments.parquet")
    assert len(ds.items) == 54_667
    # The source repeats 3 (query, product) pairs; they merge, so 3 fewer judgments than rows.
    assert len(ds.judgments) == len(raw) - raw.duplicated(["query_id", "product_id"]).sum()
    assert set(ds.judgments["split"]) == set(SPLITS)
    assert sorted(ds.judgments["grade"].unique()) == [0, 1, 2, 3, 4]
    assert ds.judgments["raw_score"].between(1.0, 3.0).all()
    assert ds.impressions is not None and len(ds.impressions) == 26_110
    assert set(ds.impressions["query_id"]) <= set(ds.queries["query_id"])
    # The given query ids, grades and splits are kept.
    assert set(ds.judgments["query_id"]) == set(raw["query_id"])
    unique = raw.drop_duplicates(["query_id", "product_id"], keep=False).set_index(["query_id", "product_id"])
    kept = ds.judgments.set_index(["query_id", "item_id"]).loc[unique.index]
    assert (kept["grade"].to_numpy() == unique["grade"].to_numpy()).all()
    assert (kept["split"].to_numpy() == unique["split"].to_numpy()).all()
    # The generic reader (relevance evaluate --items/--judgments) agrees with the dedicated adapter.
    _, judgments, k = generic.load_judgments(SHARED_HOMEDEPOT / "judgments.parquet")
    assert k == 5
    both = ds.judgments.merge(judgments, on=["query_id", "item_id"])
    assert len(both) == len(ds.judgments) and (both["grade_x"] == both["grade_y"]).all()


# --------------------------------------------------------------------------------------------- ESCI

def write_esci(folder: Path, labels: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        # example_id, query, query_id, product_id, locale, label, small, large, split
        (0, "revent 80 cfm", 0, "B000MOO21W", "us", "I", 0, 1, "train"),
        (1, "revent 80 cfm", 0, "B07X3Y6B1V", "us", "E", 1, 1, "train"),
        (2, "revent 80 cfm", 0, "B07WDM7MQQ", "us", "E", 1, 1, "train"),
        (3, "revent 80 cfm", 0, "B07RH6Z8KW", "us", "S", 1, 1, "train"),
        (4, "bathroom fan without light", 1, "B07X3Y6B1V", "us", "C", 1, 1, "train"),
        (5, "bathroom fan without light", 1, "B07RH6Z8KW", "us", "I", 1, 1, "train"),
        (6, "!awnmower tires without rims", 2, "B075SCHMPY", "us", "I", 1, 1, "test"),
        (7, "!awnmower tires without rims", 2, "B08L3B9B9P", "us", "E", 1, 1, "test"),
        (8, "ventilador baño", 3, "B07X3Y6B1V", "es", "E", 1, 1, "train"),
        (9, "ventilador baño", 3, "B084KTTQ4G", "es", "S", 1, 1, "train"),
        (10, "換気扇", 4, "B07X3Y6B1V", "jp", "S", 1, 1, "test"),
        (11, "換気扇", 4, "B0B1234567", "jp", "C", 1, 1, "test"),
    ]
    for extra in range(12, 52):
        # Enough train queries that a 10% valid carve-out is non-empty.
        rows.append((extra, f"query {extra}", extra, "B07RH6Z8KW", "us", "ESCI"[extra % 4], 1, 1, "train"))
    examples = pd.DataFrame(rows, columns=["example_id", "query", "query_id", "product_id", "product_locale",
                                           "esci_label", "small_version", "large_version", "split"])
    if labels is not None:
        examples.loc[: len(labels) - 1, "esci_label"] = labels
    examples.to_parquet(folder / esci.EXAMPLES_FILE, index=False)
    products = pd.DataFrame({
        "product_id": ["B000MOO21W", "B07X3Y6B1V", "B07WDM7MQQ", "B07RH6Z8KW", "B075SCHMPY", "B08L3B9B9P",
                       "B07X3Y6B1V", "B084KTTQ4G", "B07X3Y6B1V", "B0B1234567", "B0UNUSED00"],
        "product_title": ["Panasonic FV-20VQ3 WhisperCeiling 190 CFM", "Homewerks 7141-80 Bathroom Fan",
                          "Homewerks 7140-80 Bathroom Fan", "Delta Electronics RAD80L BreezRadiance",
                          "MaxAuto 2-Pack 13x5.00-6 Lawnmower Tires", "NEIKO 20601A Tire Iron",
                          "Homewerks Ventilador de baño 80 CFM", "Extractor de aire", "浴室換気扇 80 CFM",
                          "換気扇フィルター", "unused"],
        "product_description": [None, "<p>Quiet fan</p>", "Quiet", None, "Tires", None, "Silencioso", None,
                                "静音", None, None],
        "product_bullet_point": ["WhisperCeiling fans", "80 CFM\nLED light", None, "Radiant heater", None,
                                 "Tire tool", None, "Extractor", None, "フィルター", None],
        "product_brand": ["Panasonic", "Homewerks", "Homewerks", "Delta", "MaxAuto", "NEIKO", "Homewerks",
                          None, "Homewerks", None, None],
        "product_color": ["White", "White", None, "White", "Black", None, "Blanco", None, "白", None, None],
        "product_locale": ["us", "us", "us", "us", "us", "us", "es", "es", "jp", "jp", "us"],
    })
    products.to_parquet(folder / esci.PRODUCTS_FILE, index=False)
    return folder


def test_esci_small_version(tmp_path):
    ds = esci.load(write_esci(tmp_path / "esci"))
    assert_contract(ds)
    assert ds.num_grades == 4
    assert ds.info.ndcg_gains == [0.0, 0.01, 0.1, 1.0]
    assert ds.info.grade_names == ["irrelevant", "complement", "substitute", "exact"]
    # The small_version == 0 example is dropped, and so is the product only it referenced.
    assert "us/B000MOO21W" not in set(ds.items["item_id"]) and len(ds.judgments) == 51
    # One ASIN in three locales: three distinct items with their own locale and text.
    fan = ds.items[ds.items["item_id"].str.endswith("/B07X3Y6B1V")].set_index("item_id")
    assert sorted(fan.index) == ["es/B07X3Y6B1V", "jp/B07X3Y6B1V", "us/B07X3Y6B1V"]
    assert fan.loc["es/B07X3Y6B1V", "locale"] == "es" and "Ventilador" in fan.loc["es/B07X3Y6B1V", "title"]
    assert fan.loc["us/B07X3Y6B1V", "description"] == "<p>Quiet fan</p>\n80 CFM\nLED light"
    assert fan.loc["us/B07X3Y6B1V", "brand"] == "Homewerks"
    grades = ds.judgments.set_index(["query_id", "item_id"])["grade"]
    assert grades[("0", "us/B07X3Y6B1V")] == 3  # E
    assert grades[("0", "us/B07RH6Z8KW")] == 2  # S
    assert grades[("1", "us/B07X3Y6B1V")] == 1  # C
    assert grades[("1", "us/B07RH6Z8KW")] == 0  # I
    assert grades[("4", "jp/B07X3Y6B1V")] == 2
    assert dict(zip(ds.queries["query_id"], ds.queries["locale"]))["3"] == "es"
    # Official test stays test; valid is carved from the official train only.
    split = ds.judgments.groupby("query_id")["split"].first()
    assert split["2"] == "test" and split["4"] == "test"
    assert set(split.drop(["2", "4"])) == {"train", "valid"}
    assert (ds.judgments.groupby("query_id")["split"].nunique() == 1).all()
    assert "raw_score" not in ds.judgments.columns


def test_esci_large_version_and_valid_fraction(tmp_path):
    folder = write_esci(tmp_path / "esci")
    ds = esci.load(folder, small_version=False, valid_fraction=0.0)
    assert len(ds.judgments) == 52 and "us/B000MOO21W" in set(ds.items["item_id"])
    assert set(ds.judgments["split"]) == {"train", "test"}
    assert ds.info.name == "esci-large"


def test_esci_errors(tmp_path):
    folder = write_esci(tmp_path / "esci", labels=["E", "X", "exact"])
    with pytest.raises(DataContractError, match=r"esci_label.*'X'.*'exact'"):
        esci.load(folder)
    folder = write_esci(tmp_path / "esci2")
    pd.read_parquet(folder / esci.EXAMPLES_FILE).drop(columns="product_locale").to_parquet(
        folder / esci.EXAMPLES_FILE)
    with pytest.raises(DataContractError, match=r"shopping_queries_dataset_examples.parquet.*product_locale"):
        esci.load(folder)
    folder = write_esci(tmp_path / "esci3")
    (folder / esci.PRODUCTS_FILE).unlink()
    with pytest.raises(DataContractError, match=r"shopping_queries_dataset_products.parquet: file not found"):
        esci.load(folder)


# --------------------------------------------------------------------------------------------- WANDS

def write_wands(folder: Path, label_values: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    queries = pd.DataFrame({
        "query_id": list(range(30)),
        "query": ["salon chair", "smart coffee table", "dinosaur", "turquoise pillows", "chair and a half recliner"]
        + [f"query number {i}" for i in range(5, 30)],
        "query_class": ["Massage Chairs", "Coffee & Cocktail Tables", "Kids Wall Decor", "Accent Pillows",
                        "Recliners"] + ["Other"] * 25,
    })
    queries.to_csv(folder / "query.csv", sep="\t", index=False)
    products = pd.DataFrame({
        "product_id": [0, 1, 2, 3],
        "product_name": ["solid wood platform bed", "all-clad 7 qt. slow cooker", "all-clad electrics 6.5 qt.",
                         "outdoor double-sided, comma, chair"],
        "product_class": ["Beds", "Slow Cookers", "Slow Cookers", ""],
        "category hierarchy": ["Furniture / Bedroom Furniture / Beds", "Kitchen / Small Appliances", None, None],
        "product_description": ["good, deep sleep", None, "a pot", "sit\u00a0outside"],
        "product_features": ["overallwidth-sidetoside:64.7|dsprimaryproductstyle:modern", "", None, None],
        "rating_count": [15.0, 100.0, None, None],
        "average_rating": [4.5, 2.0, None, None],
        "review_count": [15.0, 98.0, None, None],
    })
    products.to_csv(folder / "product.csv", sep="\t", index=False)
    n = 30
    labels = pd.DataFrame({
        "id": list(range(n)),
        "query_id": list(range(n)),
        "product_id": [i % 4 for i in range(n)],
        "label": label_values or [["Exact", "Partial", "Irrelevant"][i % 3] for i in range(n)],
    })
    labels.to_csv(folder / "label.csv", sep="\t", index=False)
    return folder


def test_wands(tmp_path):
    ds = wands.load(write_wands(tmp_path / "wands"))
    assert_contract(ds)
    assert ds.num_grades == 3 and ds.info.grade_names == ["irrelevant", "partial", "exact"]
    grades = ds.judgments.set_index("query_id")["grade"]
    assert grades["0"] == 2 and grades["1"] == 1 and grades["2"] == 0
    items = ds.items.set_index("item_id")
    assert items.loc["0", "title"] == "solid wood platform bed" and items.loc["0", "description"] == "good, deep sleep"
    assert items.loc["3", "title"] == "outdoor double-sided, comma, chair"
    assert items.loc["0", "category_hierarchy"] == "Furniture / Bedroom Furniture / Beds"
    for column in wands.NUMERIC_COLUMNS:
        assert ds.items[column].dtype == np.float64
    assert items.loc["2", "rating_count"] == 0.0 and items.loc["1", "average_rating"] == 2.0
    assert set(ds.judgments["split"]) == set(SPLITS)
    assert ds.queries.set_index("query_id").loc["3", "query_class"] == "Accent Pillows"


def test_wands_errors(tmp_path):
    folder = write_wands(tmp_path / "w1", label_values=["Exact", "Relevant"] + ["Exact"] * 28)
    with pytest.raises(DataContractError, match=r"label.csv.*'label'.*'Relevant'"):
        wands.load(folder)
    folder = write_wands(tmp_path / "w2")
    pd.read_csv(folder / "product.csv", sep="\t").drop(columns="product_name").to_csv(
        folder / "product.csv", sep="\t", index=False)
    with pytest.raises(DataContractError, match=r"product.csv.*product_name"):
        wands.load(folder)
    folder = write_wands(tmp_path / "w3")
    # A comma-separated file is not the official format: the tab-separated read finds no query_id column.
    pd.read_csv(folder / "query.csv", sep="\t").to_csv(folder / "query.csv", index=False)
    with pytest.raises(DataContractError, match=r"query.csv.*query_id"):
        wands.load(folder)


# --------------------------------------------------------------------------------------------- generic

def write_homedepot_shaped(folder: Path, fmt: str = "parquet") -> tuple[Path, Path]:
    """Exactly the shape `relevance evaluate --items products.parquet --judgments judgments.parquet` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    products = pd.DataFrame({"product_id": ["100001", "100002", "100005", "100006"],
                             "title": ["Angle", "DeckOver", "Shower Faucet", "Microwave"]})
    judgments = pd.DataFrame({
        "query_id": ["q0884126951", "q0884126951", "q2102141509", "q6827077853", "q6827077853", "q1848303113"],
        "query": ["angle bracket", "angle bracket", "deck over", "shower only faucet", "shower only faucet",
                  "convection otr"],
        "product_id": ["100001", "100002", "100002", "100005", "100001", "100006"],
        "relevance": [3.0, 1.33, 2.0, 2.67, 1.0, 3.0],
        "grade": np.array([4, 1, 2, 3, 0, 4], dtype="int8"),
        "split": ["train", "train", "valid", "test", "test", "train"],
    })
    if fmt == "parquet":
        products.to_parquet(folder / "products.parquet", index=False)
        judgments.to_parquet(folder / "judgments.parquet", index=False)
        return folder / "products.parquet", folder / "judgments.parquet"
    products.to_csv(folder / "products.csv", index=False)
    judgments.to_csv(folder / "judgments.csv", index=False)
    return folder / "products.csv", folder / "judgments.csv"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_generic_homedepot_shaped_files(tmp_path, fmt):
    items_path, judgments_path = write_homedepot_shaped(tmp_path, fmt)
    items = generic.load_items(items_path)
    assert list(items["item_id"]) == ["100001", "100002", "100005", "100006"]
    assert "title" in items.columns and items["locale"].eq("en_US").all()
    queries, judgments, k = generic.load_judgments(judgments_path)
    assert k == 5
    assert set(judgments.columns) == {"query_id", "item_id", "grade", "split", "raw_score"}
    assert judgments["item_id"].tolist()[0] == "100001"
    assert judgments["raw_score"].tolist() == [3.0, 1.33, 2.0, 2.67, 1.0, 3.0]
    assert judgments["split"].tolist() == ["train", "train", "valid", "test", "test", "train"]
    assert judgments["grade"].dtype == np.int64
    assert dict(zip(queries["query_id"], queries["query"]))["q2102141509"] == "deck over"
    assert len(queries) == 4
    # The tables satisfy the contract together.
    from relevance.data.schema import DatasetInfo
    Dataset(DatasetInfo("hd", k), items, queries, judgments).validated()


def test_generic_load_judgments_derives_ids_splits_and_k(tmp_path):
    pd.DataFrame({
        "search_term": ["Angle  Bracket", "angle bracket", "deck over"],
        "product_uid": [100001, 100002, 100002],
        "grade": [1, 0, 1],
    }).to_csv(tmp_path / "j.csv", index=False)
    queries, judgments, k = generic.load_judgments(tmp_path / "j.csv")
    assert k == 2
    assert judgments["query_id"].tolist()[:2] == [generic.stable_query_id("angle bracket")] * 2
    assert sorted(queries["query"]) == ["angle bracket", "deck over"]
    assert (judgments.groupby("query_id")["split"].nunique() == 1).all()
    assert set(judgments["split"]) <= set(SPLITS)
    _, _, k = generic.load_judgments(tmp_path / "j.csv", num_grades=5)
    assert k == 5
    # Without query text there is no queries table to derive.
    pd.DataFrame({"query_id": [1, 2], "item_id": ["a", "b"], "grade": [0, 1]}).to_parquet(tmp_path / "ids.parquet")
    queries, judgments, _ = generic.load_judgments(tmp_path / "ids.parquet")
    assert queries is None and judgments["query_id"].tolist() == ["1", "2"]


def test_generic_load_directory(tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    pd.DataFrame({"product_id": ["a", "b", "c"], "product_title": ["red chair", "blue sofa", "lamp"],
                  "price": [10.0, 20.0, 5.0]}).to_csv(folder / "items.csv", index=False)
    pd.DataFrame({"query_id": ["1", "2"], "query": ["chair", "sofa"],
                  "locale": ["en_GB", "en_GB"]}).to_parquet(folder / "queries.parquet")
    pd.DataFrame({"query_id": ["1", "1", "2"], "item_id": ["a", "b", "b"],
                  "grade": [2, 0, 2]}).to_parquet(folder / "judgments.parquet")
    pd.DataFrame({"query": ["lamp"], "item_id": ["c"]}).to_csv(folder / "impressions.csv", index=False)
    ds = generic.load(folder)
    assert_contract(ds)
    assert ds.info.name == "mydata" and ds.num_grades == 3
    assert ds.items["price"].tolist() == [10.0, 20.0, 5.0]
    assert ds.queries.set_index("query_id").loc["1", "locale"] == "en_GB"
    assert ds.impressions["query_id"].tolist() == [generic.stable_query_id("lamp")]
    assert "lamp" in set(ds.queries["query"])


def test_generic_errors(tmp_path):
    items_path, judgments_path = write_homedepot_shaped(tmp_path)
    pd.read_parquet(judgments_path).assign(grade=[0, 1, 2, 3, 4, 7]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataContractError, match=r"bad.parquet.*out of range.*0\.\.4.*\[7\]"):
        generic.load_judgments(tmp_path / "bad.parquet", num_grades=5)
    pd.read_parquet(judgments_path).assign(grade=[0, -1, 2, 3, 4, 1]).to_parquet(tmp_path / "neg.parquet")
    with pytest.raises(DataContractError, match=r"neg.parquet.*out of range.*\[-1\]"):
        generic.load_judgments(tmp_path / "neg.parquet")
    pd.read_parquet(judgments_path).assign(grade=[0, 1.5, 2, 3, 4, 1]).to_parquet(tmp_path / "frac.parquet")
    with pytest.raises(DataContractError, match=r"frac.parquet.*'grade' must hold integers"):
        generic.load_judgments(tmp_path / "frac.parquet")
    pd.read_parquet(judgments_path).drop(columns="grade").to_parquet(tmp_path / "nograde.parquet")
    with pytest.raises(DataContractError, match=r"nograde.parquet.*\['grade'\]"):
        generic.load_judgments(tmp_path / "nograde.parquet")
    pd.read_parquet(judgments_path).drop(columns=["query_id", "query"]).to_parquet(tmp_path / "noq.parquet")
    with pytest.raises(DataContractError, match=r"noq.parquet.*query_id"):
        generic.load_judgments(tmp_path / "noq.parquet")
    pd.DataFrame({"title": ["x"]}).to_parquet(tmp_path / "noid.parquet")
    with pytest.raises(DataContractError, match=r"noid.parquet.*\['item_id'\]"):
        generic.load_items(tmp_path / "noid.parquet")
    with pytest.raises(DataContractError, match=r"missing.parquet: file not found"):
        generic.load_items(tmp_path / "missing.parquet")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataContractError, match=r"items.parquet or items.csv"):
        generic.load(empty)


def test_generic_reads_a_saved_dataset(tmp_path):
    original = wands.load(write_wands(tmp_path / "wands"))
    back = generic.load(original.save(tmp_path / "prepared"))
    assert back.info == original.info
    pd.testing.assert_frame_equal(back.judgments, original.judgments, check_like=True)
    assert set(back.items.columns) == set(original.items.columns)
    with pytest.raises(DataContractError, match=r"dataset.json: num_grades 3, but num_grades=5"):
        generic.load(tmp_path / "prepared", num_grades=5)


def test_merge_duplicate_pairs_without_raw_score_rounds_the_mean_grade():
    judgments = pd.DataFrame({"query_id": ["1", "1", "1", "2"], "item_id": ["a", "b", "a", "a"],
                              "grade": [1, 0, 2, 1], "split": ["train"] * 4})
    merged = generic.merge_duplicate_pairs(judgments, "test")
    assert merged[["query_id", "item_id", "grade"]].values.tolist() == [["1", "a", 2], ["1", "b", 0], ["2", "a", 1]]
