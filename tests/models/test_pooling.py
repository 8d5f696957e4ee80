"""relevance.models.pooling: one vector per row from hidden states, whichever side the padding is on."""

import pytest
import torch

from relevance.config import TextConfig
from relevance.models.backbones import load_tokenizer
from relevance.models.pooling import pool_hidden
from relevance.teacher.model import CrossEncoder, encode_pairs


def test_pool_modes_on_hand_made_states():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(pool_hidden(hidden, right, "cls"), hidden[:, 0])
    assert torch.equal(pool_hidden(hidden, right, "last"), torch.stack([hidden[0, 2], hidden[1, 1]]))
    assert torch.equal(pool_hidden(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert torch.allclose(pool_hidden(hidden, right, "mean")[1], hidden[1, :2].mean(0))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_hidden(hidden, right, "max")


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_llama_pooling_is_the_same_with_left_and_right_padding(tiny_llama, pooling):
    from transformers import AutoModel

    tokenizer = load_tokenizer(str(tiny_llama), pooling)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token != tokenizer.eos_token
    backbone = AutoModel.from_pretrained(tiny_llama)
    backbone.resize_token_embeddings(len(tokenizer))
    model = CrossEncoder(backbone, 5, pooling, 16, 0.0, positions_from_mask=True).eval()
    encodings = encode_pairs(tokenizer, ["red sofa", "a much longer drill query"],
                             ["title: red leather sofa", "title: cordless drill with two batteries"],
                             TextConfig(fields=["title"]))
    # The decoder input ends with eos, and pooling must read it (pad is a distinct token).
    assert all(e["input_ids"][-1] == tokenizer.eos_token_id for e in encodings)
    outputs = {}
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer.pad(encodings, return_tensors="pt")
        assert (batch["attention_mask"] == 0).any(), "the two rows must differ in length"
        with torch.no_grad():
            outputs[side] = model(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(outputs["left"], outputs["right"], atol=1e-5)
    # And each padded row matches the row alone, unpadded.
    with torch.no_grad():
        alone = model(torch.tensor([encodings[0]["input_ids"]]), torch.tensor([encodings[0]["attention_mask"]]))
    assert torch.allclose(alone[0], outputs["left"][0], atol=1e-5)
