"""Item text assembly and the lexical tokenizer."""

from __future__ import annotations

import pandas as pd

from relevance.config import TextConfig
from relevance.models.text import assemble_item_texts, cut_to_token_budget, tokenize_words


def test_fields_are_assembled_in_order_with_per_field_budgets(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["red leather sofa for the living room", "lamp"],
                          "caption": ["a photo of a red sofa", ""], "board_titles": ["living room", None]})
    config = TextConfig(fields=["caption", "title", "board_titles"], field_token_budgets={"title": 2})
    texts = assemble_item_texts(items, config, tokenizer)
    assert texts["a"].startswith("image: a photo of a red sofa ; title: red leather")
    assert "living" not in texts["a"].split(" ; ")[1], "title is cut after 2 tokens"
    assert texts["b"] == "title: lamp", "empty fields leave no separators behind"
    assert cut_to_token_budget(["one two three"], 2) == ["one two"]


def test_lexical_tokenizer_is_unicode_and_lower_case():
    assert tokenize_words("Rote LEDERcouch, 2x4!") == ["rote", "ledercouch", "2x4"]
