"""Fine-tuning the teacher: targets, the training run (one process, DDP or FSDP), calibration, and the run step."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from relevance.common.runtime import autocast, device, progress_bar, resolve_precision, seed_everything, set_threads
from relevance.config import RunConfig, TeacherConfig, TextConfig
from relevance.models import distributed
from relevance.models.text import assemble_item_texts
from relevance.teacher.model import (
    Teacher,
    _merged_backbone,
    _pairs,
    build_cross_encoder,
    collate,
    encode_pairs,
    length_batches,
)


def _class_weights(config: TeacherConfig, grades: np.ndarray, num_grades: int) -> torch.Tensor | None:
    if config.class_weights == "none":
        return None
    if config.class_weights == "balanced":
        counts = np.bincount(grades, minlength=num_grades).astype(np.float64)
        return torch.tensor(len(grades) / (num_grades * np.maximum(counts, 1)), dtype=torch.float32)
    if len(config.class_weights) != num_grades:
        raise ValueError(f"teacher.class_weights: expected {num_grades} weights, got {len(config.class_weights)}")
    return torch.tensor(config.class_weights, dtype=torch.float32)


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
    global batch of ``config.batch_size`` pairs (relevance.models.distributed, ``config.distributed.strategy`` ddp or
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


def fit_teacher(config: RunConfig, dataset, out: str | Path) -> Path:
    """The run step: :func:`train_teacher` on the dataset's train split, early-stopped and calibrated
    (``teacher.calibration``) on valid minus its judge-check slice, saved to ``out`` with the dataset's description
    and that slice's fingerprint in its manifest (so judge-eval can tell its agreement with humans is measured on
    pairs it never touched).

    Under torchrun, rank 0 calibrates and saves while the other ranks wait for it, so that the job ends only when
    the teacher is on disk."""
    from relevance.common.console import log

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


def recalibrate_teacher(config: RunConfig, dataset, teacher_dir: str | Path) -> bool:
    """Refit a saved teacher's calibration when ``teacher.calibration`` asks for another method than it has (a
    teacher trained before calibration existed, or under another setting); saved in place, under a new version.
    Returns whether it changed anything."""
    from relevance.common.console import log

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
