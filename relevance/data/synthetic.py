"""The synthetic shop: the demo's default dataset. Everything in it is SYNTHETIC: generated products, queries and
judgments, not real users, products or annotators.

It imitates a multilingual home-and-tools catalogue in the shape of Pinterest's search-relevance data, so that the
whole pipeline (teacher, labelling, student, serving) runs with no download, and so that its studies have a known
ground truth. :func:`generate` writes the canonical dataset directory (see ``relevance.data.schema``).

Latent world. Every item has a locale, a category (27 categories in 9 departments), a colour, a material, a brand,
a style and a room. A query comes from an *intent*: a category plus optionally a colour, material, brand and style,
taken from an item someone had in mind (the "anchor"), so every query has at least one exact match.

Text fields carry different information, so that adding fields helps a model:

    caption             category + colour              (what an image captioner sees)
    title               brand + material + category
    description         material + colour              (no category noun)
    board_titles        style + room                   (the only field, besides engagement queries, naming style)
    engagement_queries  query-like phrasings of the item's own intent (category + some attributes)
    link_titles         brand + category

Coverage is partial, as in real catalogues (missing = empty string): see ``FIELD_COVERAGE``.

Grading rubric (K = 5), applied to the latent attributes, never to the text:

    4 exact       same category, and every attribute the query names (colour, material, brand, style) matches
    3 close       same category, exactly one named attribute differs
    2 substitute  same category with two or more named attributes differing,
                  or a sibling category in the same department (sofa for armchair, saucepan for frying pan)
    1 complement  a complementary category (drill <-> drill bits, sofa <-> cushion, lamp <-> light bulb)
    0 irrelevant  anything else

Locale does not enter the rubric: a red sofa is a red sofa in any language. Then annotator noise: with probability
``annotator_noise`` a grade moves one step up or down (equally likely), clipped to 0..4.

Candidates (judged and impressions alike) imitate a retrieval system: the anchor item first, then mostly items of the
query's category, some of a sibling or complementary category, some random; 90% from the query's own locale.
Impression queries are fresh, unjudged queries drawn the same way; none has the text of a judged query, so the
unlabelled pool never contains an evaluation query.

Determinism and streaming. Every random draw comes from ``np.random.default_rng([seed, stream, block])``:
impressions are generated in fixed blocks of ``BLOCK_ROWS`` rows and written row group by row group, so ten
million impressions never sit in memory and the tables do not depend on ``chunk_rows`` (only the row-group size
does). Same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import math
import time
import unicodedata
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from relevance.common.files import atomic_directory
from relevance.data.schema import TEXT_FIELDS, DatasetInfo
from relevance.data.splits import assign_splits, normalize_query

NAME = "synthetic_shop"
GRADE_NAMES = ["irrelevant", "complement", "substitute", "close", "exact"]
IRRELEVANT, COMPLEMENT, SUBSTITUTE, CLOSE, EXACT = range(5)

# Impressions are generated in blocks of this many rows, each with its own random stream, so that output does not
# depend on how many rows are buffered per row group.
BLOCK_ROWS = 10_000
# Independent random streams (the second number in every seed): changing one part never shifts another's draws.
_ITEMS_STREAM, _JUDGED_STREAM, _NOISE_STREAM, _IMPRESSIONS_STREAM = range(4)

# Share of items with a non-empty field; roughly what a real pin/product catalogue has.
FIELD_COVERAGE = {"title": 0.95, "description": 0.70, "caption": 0.90, "board_titles": 0.60,
                  "engagement_queries": 0.40, "link_titles": 0.50}

# How often a query names each attribute of its anchor item (the category is always named).
NAMED_ATTRIBUTE_PROBABILITY = {"colour": 0.5, "material": 0.35, "brand": 0.2, "style": 0.25}
ATTRIBUTES = tuple(NAMED_ATTRIBUTE_PROBABILITY)

# Candidate strata after the anchor: same category, sibling category, complementary category, random item.
CANDIDATE_STRATA = {"same_category": 0.5, "sibling": 0.2, "complement": 0.15, "random": 0.15}
CROSS_LOCALE_PROBABILITY = 0.1
IMPRESSIONS_PER_QUERY = (10, 30)  # inclusive range; mean 20

# ---------------------------------------------------------------------------------------------------------------
# The latent world: departments, categories, attributes. English names are canonical; each locale translates them.
# Word tuples are (en_US, de_DE, fr_FR, ja_JP).
# ---------------------------------------------------------------------------------------------------------------

SUPPORTED_LOCALES = ("en_US", "de_DE", "fr_FR", "ja_JP")

DEPARTMENTS = {
    "seating": ("sofa", "armchair", "loveseat"),
    "tables": ("coffee table", "side table", "dining table"),
    "soft furnishings": ("cushion", "throw blanket", "rug"),
    "lamps": ("floor lamp", "table lamp", "pendant light"),
    "lighting accessories": ("light bulb", "lampshade", "dimmer switch"),
    "cookware": ("frying pan", "saucepan", "wok"),
    "kitchen utensils": ("spatula", "ladle", "tongs"),
    "power tools": ("drill", "impact driver", "cordless screwdriver"),
    "tool accessories": ("drill bits", "screwdriver bits", "tool case"),
}

COMPLEMENT_PAIRS = (
    ("sofa", "cushion"), ("sofa", "throw blanket"), ("sofa", "coffee table"), ("armchair", "cushion"),
    ("armchair", "side table"), ("armchair", "floor lamp"), ("loveseat", "cushion"), ("loveseat", "throw blanket"),
    ("coffee table", "rug"), ("side table", "table lamp"), ("dining table", "pendant light"),
    ("floor lamp", "light bulb"), ("floor lamp", "lampshade"), ("table lamp", "light bulb"),
    ("table lamp", "lampshade"), ("pendant light", "light bulb"), ("pendant light", "dimmer switch"),
    ("frying pan", "spatula"), ("frying pan", "tongs"), ("wok", "spatula"), ("wok", "ladle"), ("saucepan", "ladle"),
    ("drill", "drill bits"), ("drill", "tool case"), ("impact driver", "screwdriver bits"),
    ("impact driver", "tool case"), ("cordless screwdriver", "screwdriver bits"), ("cordless screwdriver", "tool case"),
)

CATEGORY_WORDS = {
    "sofa": ("sofa", "Sofa", "canapé", "ソファ"),
    "armchair": ("armchair", "Sessel", "fauteuil", "アームチェア"),
    "loveseat": ("loveseat", "Zweisitzer", "causeuse", "2人掛けソファ"),
    "coffee table": ("coffee table", "Couchtisch", "table basse", "ローテーブル"),
    "side table": ("side table", "Beistelltisch", "table d'appoint", "サイドテーブル"),
    "dining table": ("dining table", "Esstisch", "table à manger", "ダイニングテーブル"),
    "cushion": ("cushion", "Kissen", "coussin", "クッション"),
    "throw blanket": ("throw blanket", "Kuscheldecke", "plaid", "ブランケット"),
    "rug": ("rug", "Teppich", "tapis", "ラグ"),
    "floor lamp": ("floor lamp", "Stehlampe", "lampadaire", "フロアランプ"),
    "table lamp": ("table lamp", "Tischlampe", "lampe à poser", "テーブルランプ"),
    "pendant light": ("pendant light", "Pendelleuchte", "suspension", "ペンダントライト"),
    "light bulb": ("light bulb", "Glühbirne", "ampoule", "電球"),
    "lampshade": ("lampshade", "Lampenschirm", "abat-jour", "ランプシェード"),
    "dimmer switch": ("dimmer switch", "Dimmer", "variateur", "調光スイッチ"),
    "frying pan": ("frying pan", "Bratpfanne", "poêle", "フライパン"),
    "saucepan": ("saucepan", "Kochtopf", "casserole", "片手鍋"),
    "wok": ("wok", "Wok", "wok", "中華鍋"),
    "spatula": ("spatula", "Pfannenwender", "spatule", "フライ返し"),
    "ladle": ("ladle", "Schöpfkelle", "louche", "お玉"),
    "tongs": ("tongs", "Küchenzange", "pince de cuisine", "トング"),
    "drill": ("drill", "Bohrmaschine", "perceuse", "電動ドリル"),
    "impact driver": ("impact driver", "Schlagschrauber", "visseuse à chocs", "インパクトドライバー"),
    "cordless screwdriver": ("cordless screwdriver", "Akkuschrauber", "tournevis sans fil", "電動ドライバー"),
    "drill bits": ("drill bits", "Bohrer-Set", "forets", "ドリルビット"),
    "screwdriver bits": ("screwdriver bits", "Bit-Set", "embouts de vissage", "ドライバービット"),
    "tool case": ("tool case", "Werkzeugkoffer", "mallette à outils", "工具ケース"),
}

COLOUR_WORDS = {
    "black": ("black", "schwarz", "noir", "黒"), "white": ("white", "weiß", "blanc", "白"),
    "grey": ("grey", "grau", "gris", "グレー"), "red": ("red", "rot", "rouge", "赤"),
    "blue": ("blue", "blau", "bleu", "青"), "green": ("green", "grün", "vert", "緑"),
    "beige": ("beige", "beige", "beige", "ベージュ"), "brown": ("brown", "braun", "marron", "茶色"),
    "yellow": ("yellow", "gelb", "jaune", "黄色"), "pink": ("pink", "rosa", "rose", "ピンク"),
}

MATERIAL_WORDS = {
    "leather": ("leather", "Leder", "cuir", "本革"), "velvet": ("velvet", "Samt", "velours", "ベルベット"),
    "linen": ("linen", "Leinen", "lin", "リネン"), "oak": ("oak", "Eiche", "chêne", "オーク"),
    "walnut": ("walnut", "Nussbaum", "noyer", "ウォールナット"), "glass": ("glass", "Glas", "verre", "ガラス"),
    "marble": ("marble", "Marmor", "marbre", "大理石"), "cotton": ("cotton", "Baumwolle", "coton", "コットン"),
    "wool": ("wool", "Wolle", "laine", "ウール"), "metal": ("metal", "Metall", "métal", "金属"),
    "ceramic": ("ceramic", "Keramik", "céramique", "セラミック"), "rattan": ("rattan", "Rattan", "rotin", "ラタン"),
    "plastic": ("plastic", "Kunststoff", "plastique", "プラスチック"),
    "stainless steel": ("stainless steel", "Edelstahl", "inox", "ステンレス"),
    "cast iron": ("cast iron", "Gusseisen", "fonte", "鋳鉄"),
    "aluminium": ("aluminium", "Aluminium", "aluminium", "アルミ"),
    "silicone": ("silicone", "Silikon", "silicone", "シリコン"), "bamboo": ("bamboo", "Bambus", "bambou", "竹"),
    "steel": ("steel", "Stahl", "acier", "スチール"), "titanium": ("titanium", "Titan", "titane", "チタン"),
}

STYLE_WORDS = {
    "modern": ("modern", "modern", "moderne", "モダン"), "rustic": ("rustic", "rustikal", "rustique", "ラスティック"),
    "scandinavian": ("scandinavian", "skandinavisch", "scandinave", "北欧"),
    "industrial": ("industrial", "industriell", "industriel", "インダストリアル"),
    "vintage": ("vintage", "vintage", "vintage", "ヴィンテージ"),
    "minimalist": ("minimalist", "minimalistisch", "minimaliste", "ミニマル"),
    "bohemian": ("bohemian", "boho", "bohème", "ボヘミアン"),
}

ROOM_WORDS = {
    "living room": ("living room", "Wohnzimmer", "salon", "リビング"),
    "bedroom": ("bedroom", "Schlafzimmer", "chambre", "寝室"),
    "dining room": ("dining room", "Esszimmer", "salle à manger", "ダイニング"),
    "kitchen": ("kitchen", "Küche", "cuisine", "キッチン"),
    "home office": ("home office", "Arbeitszimmer", "bureau", "書斎"),
    "workshop": ("workshop", "Werkstatt", "atelier", "作業場"),
}

# Brand names are invented and locale-neutral, as brands are.
BRANDS = ("Nordhem", "Casavia", "Lindgard", "Oakhaven", "Woolery", "Lumea", "Brightwell", "Cuisino", "Ferrox",
          "Kaito", "Torkraft", "Boltmaster")

_HOME = ("living room", "bedroom", "dining room", "home office")
# Per department: the materials, brands and rooms its items can have (a leather frying pan would teach nothing).
DEPARTMENT_OPTIONS = {
    "seating": (("leather", "velvet", "linen", "cotton"), ("Nordhem", "Casavia", "Lindgard"), _HOME),
    "tables": (("oak", "walnut", "glass", "marble", "metal"), ("Nordhem", "Oakhaven", "Lindgard"), _HOME),
    "soft furnishings": (("cotton", "wool", "linen", "velvet"), ("Woolery", "Casavia", "Nordhem"), _HOME),
    "lamps": (("metal", "glass", "ceramic", "rattan"), ("Lumea", "Brightwell", "Nordhem"), _HOME),
    "lighting accessories": (("glass", "plastic", "linen", "metal"), ("Lumea", "Brightwell"), _HOME),
    "cookware": (("stainless steel", "cast iron", "aluminium", "ceramic"), ("Cuisino", "Ferrox", "Kaito"),
                 ("kitchen",)),
    "kitchen utensils": (("silicone", "bamboo", "stainless steel"), ("Cuisino", "Kaito"), ("kitchen",)),
    "power tools": (("plastic", "aluminium", "steel"), ("Torkraft", "Boltmaster", "Kaito"), ("workshop",)),
    "tool accessories": (("steel", "titanium", "plastic"), ("Torkraft", "Boltmaster", "Ferrox"), ("workshop",)),
}

# Typical price in USD-equivalent; items scatter log-normally around it.
BASE_PRICE = {
    "sofa": 900, "armchair": 400, "loveseat": 650, "coffee table": 250, "side table": 120, "dining table": 700,
    "cushion": 30, "throw blanket": 45, "rug": 200, "floor lamp": 150, "table lamp": 70, "pendant light": 120,
    "light bulb": 8, "lampshade": 35, "dimmer switch": 25, "frying pan": 45, "saucepan": 40, "wok": 50,
    "spatula": 12, "ladle": 10, "tongs": 12, "drill": 130, "impact driver": 160, "cordless screwdriver": 70,
    "drill bits": 25, "screwdriver bits": 18, "tool case": 40,
}

CATEGORIES = tuple(CATEGORY_WORDS)
COLOURS = tuple(COLOUR_WORDS)
MATERIALS = tuple(MATERIAL_WORDS)
STYLES = tuple(STYLE_WORDS)
ROOMS = tuple(ROOM_WORDS)
DEPARTMENT_OF = {category: department for department, members in DEPARTMENTS.items() for category in members}
COMPLEMENTS = {category: frozenset() for category in CATEGORIES}
for _a, _b in COMPLEMENT_PAIRS:
    COMPLEMENTS[_a] |= {_b}
    COMPLEMENTS[_b] |= {_a}


# ---------------------------------------------------------------------------------------------------------------
# The rubric
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueryIntent:
    """What a query asks for: a category and the attributes it names (None = not named). English names."""

    category: str
    colour: str | None = None
    material: str | None = None
    brand: str | None = None
    style: str | None = None


@dataclass(frozen=True)
class ItemAttributes:
    """An item's latent attributes (English names); its text is rendered from these."""

    category: str
    colour: str
    material: str
    brand: str
    style: str


def rubric_grade(query_intent: QueryIntent, item: ItemAttributes) -> int:
    """The noise-free grade (0..4) of ``item`` for ``query_intent``; the module docstring states the rubric."""
    if item.category == query_intent.category:
        mismatches = sum(1 for attribute in ATTRIBUTES
                         if getattr(query_intent, attribute) is not None
                         and getattr(query_intent, attribute) != getattr(item, attribute))
        return EXACT if mismatches == 0 else CLOSE if mismatches == 1 else SUBSTITUTE
    if DEPARTMENT_OF[item.category] == DEPARTMENT_OF[query_intent.category]:
        return SUBSTITUTE
    if item.category in COMPLEMENTS[query_intent.category]:
        return COMPLEMENT
    return IRRELEVANT


def apply_annotator_noise(grades: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """With ``probability`` move each grade one step up or down (equally likely), clipped to the scale."""
    draws = rng.random((len(grades), 2))
    step = np.where(draws[:, 0] < probability, np.where(draws[:, 1] < 0.5, -1, 1), 0)
    return np.clip(grades + step, 0, len(GRADE_NAMES) - 1)


# ---------------------------------------------------------------------------------------------------------------
# Locales: words and templates
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocaleVocabulary:
    """How one locale says things: its words for the latent attributes, its field templates and query habits."""

    locale: str
    categories: tuple[str, ...]
    colours: tuple[str, ...]
    materials: tuple[str, ...]
    styles: tuple[str, ...]
    rooms: tuple[str, ...]
    captions: tuple[str, ...]
    titles: tuple[str, ...]
    descriptions: tuple[str, ...]
    description_fillers: tuple[str, ...]
    board_titles: tuple[str, ...]
    link_titles: tuple[str, ...]
    # Query habits: how often attributes come before the noun, spelling variants and abbreviations, typos.
    attributes_first_probability: float
    alternatives: dict[str, tuple[str, ...]]
    typo_probability: float
    accent_drop_probability: float
    lowercase_queries: bool


def _words(table: dict[str, tuple[str, ...]], locale: str) -> tuple[str, ...]:
    column = SUPPORTED_LOCALES.index(locale)
    return tuple(words[column] for words in table.values())


def _vocabulary(locale: str, **templates) -> LocaleVocabulary:
    return LocaleVocabulary(locale=locale, categories=_words(CATEGORY_WORDS, locale),
                            colours=_words(COLOUR_WORDS, locale), materials=_words(MATERIAL_WORDS, locale),
                            styles=_words(STYLE_WORDS, locale), rooms=_words(ROOM_WORDS, locale), **templates)


VOCABULARIES = {
    "en_US": _vocabulary(
        "en_US",
        captions=("a {colour} {category} on a white background", "photo of a {colour} {category}",
                  "a {colour} {category} in a bright room", "close-up of a {colour} {category}"),
        titles=("{brand} {material} {category}", "{category} by {brand}, {material}",
                "{brand} {category} - {material}"),
        descriptions=("Made of {material}, finished in {colour}. {filler}", "{filler} Solid {material} in {colour}."),
        description_fillers=("Easy to clean.", "Built to last.", "Ships in 2 days.", "A customer favourite."),
        board_titles=("{style} {room}", "{room} ideas", "{style} decor", "{style} home", "my {room}"),
        link_titles=("{brand} {category} | Official Store", "Buy {brand} {category} online",
                     "{category} from {brand} - free shipping"),
        attributes_first_probability=0.75,
        alternatives={"grey": ("gray",), "aluminium": ("aluminum",), "stainless steel": ("stainless", "ss"),
                      "light bulb": ("bulb", "lightbulb"), "throw blanket": ("throw",), "coffee table": ("coffee tbl",),
                      "scandinavian": ("scandi", "nordic"), "dimmer switch": ("dimmer",),
                      "cordless screwdriver": ("cordless driver",), "frying pan": ("skillet", "fry pan"),
                      "pendant light": ("pendant lamp",)},
        typo_probability=0.08, accent_drop_probability=0.0, lowercase_queries=True),
    "de_DE": _vocabulary(
        "de_DE",
        captions=("{category} in {colour} vor weißem Hintergrund", "Foto: {category}, Farbe {colour}",
                  "{category} ({colour}) in einem hellen Raum"),
        titles=("{brand} {category} aus {material}", "{category} {material} von {brand}"),
        descriptions=("Aus {material}, Farbe {colour}. {filler}", "{filler} Material: {material}, Farbe: {colour}."),
        description_fillers=("Pflegeleicht.", "Langlebig verarbeitet.", "Lieferung in 2 Tagen.", "Ein Kundenliebling."),
        board_titles=("{room} {style}", "{room} Inspiration", "{style} Deko", "{style} wohnen"),
        link_titles=("{brand} {category} | Offizieller Shop", "{category} von {brand} online kaufen"),
        attributes_first_probability=0.5,
        alternatives={"weiß": ("weiss",), "Glühbirne": ("Glühlampe", "Leuchtmittel"), "Edelstahl": ("Inox",),
                      "Akkuschrauber": ("Akku-Schrauber",), "skandinavisch": ("skandi",), "Couchtisch": ("Sofatisch",)},
        typo_probability=0.08, accent_drop_probability=0.0, lowercase_queries=True),
    "fr_FR": _vocabulary(
        "fr_FR",
        captions=("{category} {colour} sur fond blanc", "photo : {category} de couleur {colour}",
                  "{category} {colour} dans une pièce lumineuse"),
        titles=("{category} en {material} {brand}", "{brand} - {category} en {material}"),
        descriptions=("En {material}, coloris {colour}. {filler}", "{filler} Matière : {material}, coloris {colour}."),
        description_fillers=("Facile à entretenir.", "Conçu pour durer.", "Livraison en 2 jours.",
                             "Un favori des clients."),
        board_titles=("{room} {style}", "idées {room}", "déco {style}", "inspiration {room}"),
        link_titles=("{brand} {category} | Boutique officielle", "Acheter {category} {brand} en ligne"),
        attributes_first_probability=0.25,
        alternatives={"lampadaire": ("lampe sur pied",), "inox": ("acier inoxydable",), "plaid": ("jeté de canapé",)},
        typo_probability=0.08, accent_drop_probability=0.3, lowercase_queries=True),
    "ja_JP": _vocabulary(
        "ja_JP",
        captions=("白い背景の{colour}の{category}", "{colour}の{category}の写真", "明るい部屋にある{colour}の{category}"),
        titles=("{brand} {material}製 {category}", "{category} {material} {brand}"),
        descriptions=("{material}素材、カラーは{colour}。{filler}", "{filler}素材：{material}、カラー：{colour}。"),
        description_fillers=("お手入れ簡単。", "丈夫で長持ち。", "2日以内に発送。", "人気商品です。"),
        board_titles=("{style}な{room}", "{room}のアイデア", "{style}インテリア", "{room}コーディネート"),
        link_titles=("{brand} {category} | 公式ストア", "{category}の通販 - {brand}"),
        attributes_first_probability=0.6,
        alternatives={"ソファ": ("ソファー",), "フライパン": ("ふらいぱん",), "ステンレス": ("ステンレス製",),
                      "電動ドリル": ("ドリル",)},
        # Typos in Japanese are conversion errors, not letter swaps; the variants above stand in for them.
        typo_probability=0.0, accent_drop_probability=0.0, lowercase_queries=False),
}


# ---------------------------------------------------------------------------------------------------------------
# The catalogue: latent item attributes, sampled once, with an index for drawing candidates
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Catalog:
    """Latent attributes of every item (integer codes into the canonical tuples) plus lookup indexes."""

    locales: tuple[str, ...]
    item_ids: pa.Array
    locale: np.ndarray
    category: np.ndarray
    colour: np.ndarray
    material: np.ndarray
    brand: np.ndarray
    style: np.ndarray
    room: np.ndarray
    price: np.ndarray
    popularity: np.ndarray
    # Items sorted by (locale, category); a (locale, category) cell is order[cell_start : cell_start + cell_count].
    order: np.ndarray
    cell_start: np.ndarray
    cell_count: np.ndarray
    anchor_cdf: np.ndarray  # queries come from popular items more often
    locale_cdf: np.ndarray  # where a cross-locale candidate comes from, in proportion to catalogue share

    def __len__(self) -> int:
        return len(self.category)

    def attributes(self, item: int) -> ItemAttributes:
        return ItemAttributes(category=CATEGORIES[self.category[item]], colour=COLOURS[self.colour[item]],
                              material=MATERIALS[self.material[item]], brand=BRANDS[self.brand[item]],
                              style=STYLES[self.style[item]])


def _padded_choices(options_per_category: list[tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """A ragged list as a padded matrix plus lengths, so that a row can pick one option with a uniform draw."""
    width = max(1, max(len(options) for options in options_per_category))
    matrix = np.zeros((len(options_per_category), width), dtype=np.int64)
    for row, options in enumerate(options_per_category):
        matrix[row, :len(options)] = options
    return matrix, np.array([len(options) for options in options_per_category], dtype=np.int64)


def _codes(names: tuple[str, ...], chosen) -> tuple[int, ...]:
    return tuple(sorted(names.index(name) for name in chosen))


# Per category (row): the codes it may take or relate to, for vectorised draws.
MATERIAL_CHOICES, MATERIAL_COUNTS = _padded_choices(
    [_codes(MATERIALS, DEPARTMENT_OPTIONS[DEPARTMENT_OF[c]][0]) for c in CATEGORIES])
BRAND_CHOICES, BRAND_COUNTS = _padded_choices(
    [_codes(BRANDS, DEPARTMENT_OPTIONS[DEPARTMENT_OF[c]][1]) for c in CATEGORIES])
ROOM_CHOICES, ROOM_COUNTS = _padded_choices(
    [_codes(ROOMS, DEPARTMENT_OPTIONS[DEPARTMENT_OF[c]][2]) for c in CATEGORIES])
SIBLING_CHOICES, SIBLING_COUNTS = _padded_choices(
    [_codes(CATEGORIES, [s for s in DEPARTMENTS[DEPARTMENT_OF[c]] if s != c]) for c in CATEGORIES])
COMPLEMENT_CHOICES, COMPLEMENT_COUNTS = _padded_choices([_codes(CATEGORIES, COMPLEMENTS[c]) for c in CATEGORIES])


def _pick(choices: np.ndarray, counts: np.ndarray, rows: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """For each row, the option at a uniform position among that row's ``counts`` options."""
    return choices[rows, np.minimum((uniform * counts[rows]).astype(np.int64), counts[rows] - 1)]


def _locale_weights(locales: tuple[str, ...]) -> np.ndarray:
    # English is the largest market; every other locale gets half its share.
    weights = np.array([2.0 if locale == "en_US" else 1.0 for locale in locales])
    return weights / weights.sum()


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights, dtype=np.float64)
    return cdf / cdf[-1]


def sample_catalog(num_items: int, locales: tuple[str, ...], seed: int) -> Catalog:
    """Draw every item's latent attributes and numeric features (vectorised, one random stream)."""
    rng = np.random.default_rng([seed, _ITEMS_STREAM])
    u = rng.random((num_items, 4))
    locale = np.searchsorted(_cdf(_locale_weights(locales)), u[:, 0], side="right")
    category = rng.integers(0, len(CATEGORIES), num_items)
    colour = rng.integers(0, len(COLOURS), num_items)
    style = rng.integers(0, len(STYLES), num_items)
    material = _pick(MATERIAL_CHOICES, MATERIAL_COUNTS, category, u[:, 1])
    brand = _pick(BRAND_CHOICES, BRAND_COUNTS, category, u[:, 2])
    room = _pick(ROOM_CHOICES, ROOM_COUNTS, category, u[:, 3])
    base_price = np.array([BASE_PRICE[c] for c in CATEGORIES], dtype=np.float64)
    price = np.round(base_price[category] * rng.lognormal(0.0, 0.35, num_items), 2)
    # Past impressions: heavy-tailed, like real engagement counts.
    popularity = np.floor(rng.lognormal(4.0, 1.2, num_items)).astype(np.int64)

    order = np.lexsort((category, locale))
    cells = np.bincount(locale * len(CATEGORIES) + category, minlength=len(locales) * len(CATEGORIES))
    cell_start = (np.cumsum(cells) - cells).reshape(len(locales), len(CATEGORIES))
    per_locale = np.bincount(locale, minlength=len(locales)).astype(np.float64)
    return Catalog(
        locales=locales, item_ids=pa.array([f"i{index:07d}" for index in range(num_items)], pa.string()),
        locale=locale, category=category, colour=colour, material=material, brand=brand, style=style, room=room,
        price=price, popularity=popularity, order=order, cell_start=cell_start,
        cell_count=cells.reshape(len(locales), len(CATEGORIES)),
        anchor_cdf=_cdf(np.sqrt(popularity + 1.0)), locale_cdf=_cdf(per_locale))


# ---------------------------------------------------------------------------------------------------------------
# Intents and queries
# ---------------------------------------------------------------------------------------------------------------

NOT_NAMED = -1


@dataclass(frozen=True)
class Intents:
    """A batch of query intents as parallel integer arrays; an attribute is NOT_NAMED (-1) when not named."""

    anchor: np.ndarray
    locale: np.ndarray
    category: np.ndarray
    colour: np.ndarray
    material: np.ndarray
    brand: np.ndarray
    style: np.ndarray

    def __len__(self) -> int:
        return len(self.anchor)

    def take(self, index: np.ndarray) -> "Intents":
        return Intents(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concatenate(parts: list["Intents"]) -> "Intents":
        return Intents(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Intents)})

    def query_intent(self, row: int) -> QueryIntent:
        def named(codes: np.ndarray, names: tuple[str, ...]) -> str | None:
            return None if codes[row] == NOT_NAMED else names[codes[row]]

        return QueryIntent(category=CATEGORIES[self.category[row]], colour=named(self.colour, COLOURS),
                           material=named(self.material, MATERIALS), brand=named(self.brand, BRANDS),
                           style=named(self.style, STYLES))


def sample_anchors(rng: np.random.Generator, catalog: Catalog, count: int) -> np.ndarray:
    return np.searchsorted(catalog.anchor_cdf, rng.random(count), side="right")


def sample_intents(rng: np.random.Generator, catalog: Catalog, anchors: np.ndarray) -> Intents:
    """Intents that an anchor item satisfies exactly: its category plus a random subset of its attributes."""
    named = rng.random((len(anchors), len(ATTRIBUTES))) < np.array(list(NAMED_ATTRIBUTE_PROBABILITY.values()))
    values = {attribute: np.where(named[:, column], getattr(catalog, attribute)[anchors], NOT_NAMED)
              for column, attribute in enumerate(ATTRIBUTES)}
    return Intents(anchor=anchors, locale=catalog.locale[anchors], category=catalog.category[anchors], **values)


_QUERY_DRAWS = 6  # uniforms per rendered query: word order, variant?, which variant, typo?, which word, which edit


def render_query(vocabulary: LocaleVocabulary, category: int, colour: int, material: int, brand: int, style: int,
                 u: np.ndarray) -> str:
    """A query string for one intent, in the locale's words and habits; ``u`` holds its uniform draws."""
    named = ((brand, BRANDS), (style, vocabulary.styles), (colour, vocabulary.colours),
             (material, vocabulary.materials))
    attributes = [words[code] for code, words in named if code != NOT_NAMED]
    noun = vocabulary.categories[category]
    words = attributes + [noun] if u[0] < vocabulary.attributes_first_probability else [noun] + attributes
    variable = [i for i, word in enumerate(words) if word in vocabulary.alternatives]
    if variable and u[1] < 0.3:
        position = variable[int(u[2] * len(variable))]
        options = vocabulary.alternatives[words[position]]
        words[position] = options[int((u[2] * len(variable)) % 1 * len(options))]
    text = " ".join(words)
    if vocabulary.lowercase_queries:
        text = text.lower()
    # The other end of the same draw: a query gets a spelling variant or loses its accents, never both.
    if u[1] > 1.0 - vocabulary.accent_drop_probability:
        text = _drop_accents(text)
    if u[3] < vocabulary.typo_probability:
        text = _with_typo(text, u[4], u[5])
    return text


def _drop_accents(text: str) -> str:
    # French searchers often type without accents ("canape" for "canapé").
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _with_typo(text: str, which_word: float, which_edit: float) -> str:
    """One keyboard slip in one word of four or more letters: swap two letters, drop one, or double one."""
    tokens = text.split(" ")
    candidates = [i for i, token in enumerate(tokens) if len(token) >= 4]
    if not candidates:
        return text
    index = candidates[int(which_word * len(candidates))]
    token = tokens[index]
    kind, fraction = divmod(which_edit * 3, 1.0)
    position = int(fraction * (len(token) - 1))
    if kind == 0:
        token = token[:position] + token[position + 1] + token[position] + token[position + 2:]
    elif kind == 1:
        token = token[:position] + token[position + 1:]
    else:
        token = token[:position] + token[position] + token[position:]
    tokens[index] = token
    return " ".join(tokens)


def render_queries(rng: np.random.Generator, catalog: Catalog, intents: Intents) -> list[str]:
    u = rng.random((len(intents), _QUERY_DRAWS))
    return [render_query(VOCABULARIES[catalog.locales[intents.locale[i]]], intents.category[i], intents.colour[i],
                         intents.material[i], intents.brand[i], intents.style[i], u[i])
            for i in range(len(intents))]


# ---------------------------------------------------------------------------------------------------------------
# Candidates: what a retrieval system would put in front of the annotator or the user
# ---------------------------------------------------------------------------------------------------------------

_STRATUM_CDF = _cdf(np.array(list(CANDIDATE_STRATA.values())))
SAME_CATEGORY, SIBLING, COMPLEMENTARY = range(3)  # the fourth stratum is a random item


def sample_candidates(rng: np.random.Generator, catalog: Catalog, intents: Intents,
                      counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``counts[q]`` distinct items per intent q: (intent row, item) pairs, grouped by intent, anchor first.

    Draws a few more than needed and keeps the first distinct ones, so that duplicates never reach the tables.
    """
    draws = counts + counts // 2 + 3
    row = np.repeat(np.arange(len(intents)), draws)
    u = rng.random((len(row), 5))
    stratum = np.searchsorted(_STRATUM_CDF, u[:, 0], side="right")
    locale = np.where(u[:, 1] < CROSS_LOCALE_PROBABILITY,
                      np.searchsorted(catalog.locale_cdf, u[:, 2], side="right"), intents.locale[row])
    query_category = intents.category[row]
    category = np.select(
        [stratum == SAME_CATEGORY, stratum == SIBLING, stratum == COMPLEMENTARY],
        [query_category, _pick(SIBLING_CHOICES, SIBLING_COUNTS, query_category, u[:, 3]),
         _pick(COMPLEMENT_CHOICES, COMPLEMENT_COUNTS, query_category, u[:, 3])],
        default=NOT_NAMED)
    cell_count = catalog.cell_count[locale, np.maximum(category, 0)]
    in_cell = (category != NOT_NAMED) & (cell_count > 0)
    # A random item, or the fallback when the catalogue has no item of that category in that locale.
    locale_start = catalog.cell_start[locale, 0]
    locale_count = catalog.cell_count[locale].sum(axis=1)
    position = np.where(in_cell,
                        catalog.cell_start[locale, np.maximum(category, 0)] + (u[:, 4] * cell_count).astype(np.int64),
                        locale_start + (u[:, 4] * locale_count).astype(np.int64))
    item = catalog.order[position]
    first_of_query = np.cumsum(draws) - draws
    item[first_of_query] = intents.anchor  # retrieval finds what the user had in mind

    _, first_occurrence = np.unique(row * len(catalog) + item, return_index=True)
    distinct = np.zeros(len(row), dtype=bool)
    distinct[first_occurrence] = True
    row, item = row[distinct], item[distinct]
    rank_in_query = np.arange(len(row)) - np.searchsorted(row, row, side="left")
    kept = rank_in_query < counts[row]
    return row[kept], item[kept]


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------

ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("locale", pa.string()),
                          *[(name, pa.string()) for name in TEXT_FIELDS],
                          ("price", pa.float64()), ("popularity", pa.int64())])
QUERIES_SCHEMA = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("locale", pa.string())])
JUDGMENTS_SCHEMA = pa.schema([("query_id", pa.string()), ("item_id", pa.string()), ("grade", pa.int64()),
                              ("split", pa.string())])
IMPRESSIONS_SCHEMA = pa.schema([("query_id", pa.string()), ("item_id", pa.string())])


def _item_words(vocabulary: LocaleVocabulary, catalog: Catalog, item: int) -> dict[str, str]:
    return {"category": vocabulary.categories[catalog.category[item]],
            "colour": vocabulary.colours[catalog.colour[item]],
            "material": vocabulary.materials[catalog.material[item]], "brand": BRANDS[catalog.brand[item]],
            "style": vocabulary.styles[catalog.style[item]], "room": vocabulary.rooms[catalog.room[item]]}


def _choose(options: tuple[str, ...], uniform: float) -> str:
    return options[int(uniform * len(options))]


def _board_titles(vocabulary: LocaleVocabulary, words: dict[str, str], how_many: float, which: float) -> str:
    # A pin is saved to one to three boards; distinct board names, taken round the template list.
    count = 1 + int(how_many * 3)
    start = int(which * len(vocabulary.board_titles))
    names = [vocabulary.board_titles[(start + k) % len(vocabulary.board_titles)].format(**words)
             for k in range(count)]
    return " | ".join(names)


def render_items(catalog: Catalog, seed: int) -> pa.Table:
    """The items table: every field rendered from the latent attributes, then blanked per ``FIELD_COVERAGE``."""
    rng = np.random.default_rng([seed, _ITEMS_STREAM, 1])
    n = len(catalog)
    u = rng.random((n, 8))
    present = rng.random((n, len(TEXT_FIELDS))) < np.array([FIELD_COVERAGE[name] for name in TEXT_FIELDS])
    # An item nobody can read cannot be judged: keep the title when every field came out missing.
    present[~present.any(axis=1), TEXT_FIELDS.index("title")] = True
    engagement_intents = sample_intents(rng, catalog, np.repeat(np.arange(n), 3))
    engagement_queries = render_queries(rng, catalog, engagement_intents)

    columns: dict[str, list[str]] = {name: [] for name in TEXT_FIELDS}
    for i in range(n):
        vocabulary = VOCABULARIES[catalog.locales[catalog.locale[i]]]
        words = _item_words(vocabulary, catalog, i)
        filler = _choose(vocabulary.description_fillers, u[i, 3])
        rendered = {
            "title": _choose(vocabulary.titles, u[i, 0]).format(**words),
            "description": _choose(vocabulary.descriptions, u[i, 1]).format(filler=filler, **words),
            "caption": _choose(vocabulary.captions, u[i, 2]).format(**words),
            "board_titles": _board_titles(vocabulary, words, u[i, 4], u[i, 5]),
            "engagement_queries": " | ".join(dict.fromkeys(engagement_queries[3 * i: 3 * i + 1 + int(u[i, 6] * 3)])),
            "link_titles": _choose(vocabulary.link_titles, u[i, 7]).format(**words),
        }
        for column, name in enumerate(TEXT_FIELDS):
            columns[name].append(rendered[name] if present[i, column] else "")
    locale_names = np.array(catalog.locales, dtype=object)[catalog.locale]
    return pa.table({"item_id": catalog.item_ids, "locale": pa.array(locale_names, pa.string()),
                     **{name: pa.array(columns[name], pa.string()) for name in TEXT_FIELDS},
                     "price": pa.array(catalog.price), "popularity": pa.array(catalog.popularity)},
                    schema=ITEMS_SCHEMA)


def sample_judged_queries(rng: np.random.Generator, catalog: Catalog, count: int) -> tuple[Intents, list[str]]:
    """``count`` intents whose rendered queries are pairwise distinct (after normalisation), with their text."""
    no_item = np.zeros(0, dtype=np.int64)
    kept_intents = [Intents(*(no_item,) * len(fields(Intents)))]
    texts: list[str] = []
    seen: set[str] = set()
    for _ in range(50):
        missing = count - len(texts)
        if missing <= 0:
            break
        intents = sample_intents(rng, catalog, sample_anchors(rng, catalog, 2 * missing + 10))
        fresh = []
        for i, text in enumerate(render_queries(rng, catalog, intents)):
            key = normalize_query(text)
            if key not in seen and len(fresh) < missing:
                seen.add(key)
                fresh.append(i)
                texts.append(text)
        kept_intents.append(intents.take(np.array(fresh, dtype=np.int64)))
    if len(texts) < count:
        raise ValueError(f"could only make {len(texts)} distinct judged queries, asked for {count}; "
                         f"use more items or locales, or fewer judged queries")
    return Intents.concatenate(kept_intents), texts


def make_judgments(catalog: Catalog, num_queries: int, per_query: int, annotator_noise: float,
                   seed: int) -> tuple[pa.Table, pa.Table]:
    """The judged queries and their graded candidates (rubric, then annotator noise), split by query text."""
    rng = np.random.default_rng([seed, _JUDGED_STREAM])
    intents, texts = sample_judged_queries(rng, catalog, num_queries)
    rows, items = sample_candidates(rng, catalog, intents, np.full(len(intents), per_query))
    clean = np.array([rubric_grade(intents.query_intent(r), catalog.attributes(i)) for r, i in zip(rows, items)],
                     dtype=np.int64)
    # Noise has its own stream, so that changing annotator_noise changes grades but not which pairs are judged.
    grades = apply_annotator_noise(clean, annotator_noise, np.random.default_rng([seed, _NOISE_STREAM]))

    query_ids = [f"qj{index:06d}" for index in range(len(texts))]
    locale_names = np.array(catalog.locales, dtype=object)
    queries = pa.table({"query_id": query_ids, "query": texts, "locale": list(locale_names[intents.locale])},
                       schema=QUERIES_SCHEMA)
    split_per_query = assign_splits(pd.Series(texts)).to_numpy()
    judgments = pa.table({"query_id": pa.array(query_ids).take(pa.array(rows)),
                          "item_id": catalog.item_ids.take(pa.array(items)),
                          "grade": pa.array(grades, pa.int64()),
                          "split": pa.array(split_per_query[rows].tolist(), pa.string())},
                         schema=JUDGMENTS_SCHEMA)
    return queries, judgments


def impression_block(catalog: Catalog, block_index: int, rows: int, judged_texts: frozenset[str],
                     seed: int) -> tuple[pa.Table, pa.Table]:
    """One block of ``rows`` impressions and the queries they use; a pure function of its arguments.

    Queries whose text is a judged query's are redrawn, so that the unlabelled pool holds no evaluation query.
    """
    rng = np.random.default_rng([seed, _IMPRESSIONS_STREAM, block_index])
    low, high = IMPRESSIONS_PER_QUERY
    texts: list[str] = []
    locales: list[np.ndarray] = []
    pair_rows: list[np.ndarray] = []
    pair_items: list[np.ndarray] = []
    total = 0
    for _ in range(1000):
        wanted = max(1, math.ceil((rows - total) / ((low + high) / 2)))
        intents = sample_intents(rng, catalog, sample_anchors(rng, catalog, wanted))
        rendered = render_queries(rng, catalog, intents)
        unjudged = np.array([normalize_query(t) not in judged_texts for t in rendered], dtype=bool)
        intents = intents.take(np.flatnonzero(unjudged))
        query_rows, items = sample_candidates(rng, catalog, intents, rng.integers(low, high + 1, len(intents)))
        pair_rows.append(query_rows + len(texts))
        pair_items.append(items)
        texts.extend(t for t, keep in zip(rendered, unjudged) if keep)
        locales.append(intents.locale)
        total += len(items)
        if total >= rows:
            break
    else:
        raise ValueError("almost every impression query repeats a judged query; use more items or locales, "
                         "or fewer judged queries")
    query_rows = np.concatenate(pair_rows)[:rows]
    items = np.concatenate(pair_items)[:rows]
    # The last query may have lost all its rows to the cut; keep only queries that have impressions.
    used = np.unique(query_rows)
    renumbered = np.searchsorted(used, query_rows)
    query_ids = pa.array([f"qi{block_index:06d}_{k:05d}" for k in range(len(used))], pa.string())
    locale_names = np.array(catalog.locales, dtype=object)[np.concatenate(locales)[used]]
    queries = pa.table({"query_id": query_ids, "query": pa.array([texts[q] for q in used], pa.string()),
                        "locale": pa.array(locale_names, pa.string())}, schema=QUERIES_SCHEMA)
    impressions = pa.table({"query_id": query_ids.take(pa.array(renumbered)),
                            "item_id": catalog.item_ids.take(pa.array(items))}, schema=IMPRESSIONS_SCHEMA)
    return queries, impressions


class RowGroupWriter:
    """A ParquetWriter that writes row groups of exactly ``rows_per_group`` rows, whatever sizes it is fed."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int):
        self._writer = pq.ParquetWriter(path, schema)
        self._rows_per_group = rows_per_group
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._rows_per_group:
            buffered = pa.concat_tables(self._pending)
            self._writer.write_table(buffered.slice(0, self._rows_per_group), row_group_size=self._rows_per_group)
            rest = buffered.slice(self._rows_per_group)
            self._pending, self._pending_rows = [rest], rest.num_rows

    def close(self) -> None:
        if self._pending_rows:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._rows_per_group)
        self._writer.close()


def _check_arguments(num_items: int, num_judged_queries: int, judgments_per_query: int, num_impressions: int,
                     locales: tuple[str, ...], chunk_rows: int, annotator_noise: float) -> None:
    unknown = [locale for locale in locales if locale not in VOCABULARIES]
    if not locales or unknown or len(set(locales)) != len(locales):
        raise ValueError(f"locales must be distinct and among {list(SUPPORTED_LOCALES)}, got {list(locales)}")
    if num_items < 1 or judgments_per_query < 1 or num_judged_queries < 0 or num_impressions < 0:
        raise ValueError(f"expected num_items >= 1, judgments_per_query >= 1 and non-negative query and impression "
                         f"counts, got {num_items}, {judgments_per_query}, {num_judged_queries}, {num_impressions}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not 0.0 <= annotator_noise <= 1.0:
        raise ValueError(f"annotator_noise is a probability, got {annotator_noise}")


def _description(num_items: int, locales: tuple[str, ...], annotator_noise: float, seed: int) -> str:
    return (f"SYNTHETIC data, not real users, products or annotators: a generated home-and-tools shop of "
            f"{num_items} items in {', '.join(locales)}, with queries templated from intents and grades from a "
            f"fixed rubric (exact / close / substitute / complement / irrelevant) plus annotator noise "
            f"{annotator_noise}. Made by relevance.data.synthetic.generate(seed={seed}); see docs/synthetic_shop.md.")


def generate(out_dir: Path | str, *, num_items: int = 2000, num_judged_queries: int = 300,
             judgments_per_query: int = 12, num_impressions: int = 20_000,
             locales: tuple[str, ...] = SUPPORTED_LOCALES, seed: int = 0, chunk_rows: int = 100_000,
             annotator_noise: float = 0.1, info_fields: dict | None = None) -> Path:
    """Write the synthetic shop as a canonical dataset directory and return its path. ``info_fields``: more
    dataset.json fields (the judge's slices, relevance.data.judge_slices).

    The directory appears atomically (written to a sibling ``.tmp`` and renamed), replacing any earlier one.
    Impressions and the queries they use are streamed in row groups of ``chunk_rows``; the tables do not depend
    on ``chunk_rows``, and the same arguments give byte-identical files.
    """
    locales = tuple(locales)
    _check_arguments(num_items, num_judged_queries, judgments_per_query, num_impressions, locales, chunk_rows,
                     annotator_noise)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        catalog = sample_catalog(num_items, locales, seed)
        pq.write_table(render_items(catalog, seed), tmp / "items.parquet")
        judged_queries, judgments = make_judgments(catalog, num_judged_queries, judgments_per_query, annotator_noise,
                                                   seed)
        pq.write_table(judgments, tmp / "judgments.parquet")

        judged_texts = frozenset(normalize_query(text) for text in judged_queries.column("query").to_pylist())
        queries_writer = RowGroupWriter(tmp / "queries.parquet", QUERIES_SCHEMA, chunk_rows)
        impressions_writer = RowGroupWriter(tmp / "impressions.parquet", IMPRESSIONS_SCHEMA, chunk_rows)
        queries_writer.write(judged_queries)
        for block_index, start in enumerate(range(0, num_impressions, BLOCK_ROWS)):
            queries, impressions = impression_block(catalog, block_index, min(BLOCK_ROWS, num_impressions - start),
                                                    judged_texts, seed)
            queries_writer.write(queries)
            impressions_writer.write(impressions)
        queries_writer.close()
        impressions_writer.close()

        DatasetInfo(name=NAME, num_grades=len(GRADE_NAMES), grade_names=list(GRADE_NAMES), synthetic=True,
                    description=_description(num_items, locales, annotator_noise, seed), **(info_fields or {})
                    ).save(tmp)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """Generate a shop from the command line and print its throughput (used for the numbers in the docs)."""
    parser = argparse.ArgumentParser(description="Generate the SYNTHETIC shop dataset.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-items", type=int, default=2000)
    parser.add_argument("--num-judged-queries", type=int, default=300)
    parser.add_argument("--num-impressions", type=int, default=20_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    generate(args.out_dir, num_items=args.num_items, num_judged_queries=args.num_judged_queries,
             num_impressions=args.num_impressions, chunk_rows=args.chunk_rows, seed=args.seed)
    seconds = time.perf_counter() - started
    print(f"wrote {args.out_dir}: {args.num_impressions:,} impressions in {seconds:.1f} s "
          f"({args.num_impressions / seconds:,.0f} impression rows/s, whole dataset included)")


if __name__ == "__main__":
    main()
