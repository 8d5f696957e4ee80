"""Shared fixtures: tiny random backbones (BERT and Llama) with tokenizers trained on the fly, and a tiny
synthetic shop. Nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "red leather sofa for the living room", "cordless drill with two batteries", "drill bits set titanium",
    "blue ceramic coffee mug", "wooden dining table oak", "modern floor lamp brass", "wool rug grey",
    "garden hose 50 ft", "paint roller kit", "angle bracket galvanized steel", "shower faucet chrome",
    "rote ledercouch", "canapé en cuir rouge", "lampe de sol moderne", "ceramic tile white 12x12",
] * 4


def _save_tiny_bert(directory: Path) -> Path:
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1)
    vocab_file = wordpiece.save_model(str(directory))[0]
    tokenizer = BertTokenizerFast(vocab_file=vocab_file, do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _save_tiny_llama(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def tiny_run_settings(tiny_bert: Path, items: int = 300, judged_queries: int = 60, impressions: int = 1500,
                      top_k: int = 10, shard_rows: int = 400, teacher_epochs: int = 2, student_epochs: int = 4,
                      max_length: int = 64, student_hidden: int = 32) -> dict:
    """RunConfig overrides for a whole run in seconds: tiny BERT as teacher and student encoder, a small shop."""
    return {
        "data": {"source": "synthetic", "synthetic_items": items, "synthetic_judged_queries": judged_queries,
                 "synthetic_impressions": impressions},
        "text": {"max_length": max_length},
        "candidates": {"top_k": top_k},
        "teacher": {"backbone": str(tiny_bert), "finetune": "full", "epochs": teacher_epochs, "batch_size": 16,
                    "learning_rate": 1e-3, "head_hidden": 16, "precision": "fp32"},
        "labeling": {"shard_rows": shard_rows, "batch_size": 64, "precision": "fp32"},
        "student": {"encoder": str(tiny_bert), "hidden": [student_hidden],
                    "epochs": student_epochs, "batch_size": 256},
    }
