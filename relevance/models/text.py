"""Item text assembly: configured fields, in order, each cut to its own token budget.

Budgets are per field (as in Pinterest's teacher, where a long description must not crowd out the board titles
and engagement queries that carry most of the signal). A field is cut at a token boundary of the model's own
tokenizer but kept as the original string, so the same text can feed the cross-encoder, BM25 and the bi-encoder.
"""

from __future__ import annotations

import re

import pandas as pd

from relevance.config import TextConfig

FIELD_LABELS = {
    "title": "title",
    "description": "description",
    "caption": "image",
    "board_titles": "boards",
    "engagement_queries": "searches",
    "link_titles": "links",
}
_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize_words(text: str) -> list[str]:
    """The one lexical tokenizer (lower-cased unicode words) shared by BM25 and the term-match features."""
    return _WORD.findall(str(text).lower())


def cut_to_token_budget(values: list[str], budget: int, tokenizer=None) -> list[str]:
    """Each string cut after ``budget`` tokens of ``tokenizer`` (whitespace words without one)."""
    if tokenizer is None:
        return [" ".join(v.split()[:budget]) for v in values]
    encoded = tokenizer(values, add_special_tokens=False, truncation=True, max_length=budget,
                        return_offsets_mapping=True)
    cut = []
    for value, offsets in zip(values, encoded["offset_mapping"]):
        cut.append(value[: offsets[-1][1]] if offsets else "")
    return cut


def assemble_item_texts(items: pd.DataFrame, config: TextConfig, tokenizer=None,
                        with_labels: bool = True) -> pd.Series:
    """One string per item, indexed by item_id. Empty fields are skipped.

    With labels ("title: … ; image: …", for the cross-encoder, which benefits from knowing which field says
    what). Without labels for BM25 and term matching, where a label word ("image", "boards") would match every
    item that has the field."""
    parts: list[pd.Series] = []
    for field in config.fields:
        if field not in items.columns:
            continue
        values = items[field].fillna("").astype(str).str.strip().tolist()
        cut = cut_to_token_budget(values, config.budget(field), tokenizer)
        label = f"{FIELD_LABELS[field]}: " if with_labels else ""
        labelled = pd.Series([f"{label}{v}" if v else "" for v in cut], index=items.index)
        parts.append(labelled)
    if not parts:
        raise ValueError(f"none of the configured text fields {config.fields} is a column of items "
                         f"(got {list(items.columns)})")
    texts = parts[0]
    for part in parts[1:]:
        texts = texts.str.cat(part, sep=" ; ")
    texts = texts.str.replace(r"(\s;\s)+", " ; ", regex=True).str.strip(" ;")
    return pd.Series(texts.to_numpy(), index=items["item_id"].to_numpy(), name="item_text")
