"""Fine-tuning the teacher: the training run (one process, DDP or FSDP; checkpointed), calibration, and the run
step. What it is trained towards is relevance.teacher.targets."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from relevance.common.runtime import autocast, device, progress_bar, resolve_precision, seed_everything, set_threads
from relevance.config import RunConfig, TeacherConfig, TextConfig
from relevance.models import distributed, training
from relevance.models.training import Hooks, LoopState, Schedule
from relevance.models.text import assemble_item_texts
from relevance.teacher.targets import class_weights, grade_targets, pair_loss
from relevance.teacher.model import (
    CrossEncoder,
    Teacher,
    _merged_backbone,
    _pairs,
    build_cross_encoder,
    collate,
    encode_pairs,
    length_batches,
)


def train_teacher(train: pd.DataFrame, valid: pd.DataFrame, query_text: pd.Series, items: pd.DataFrame,
                  num_grades: int, config: TeacherConfig, text: TextConfig, data_hash: str = "",
                  log: Callable[[str], None] = print, raw_scale: tuple[float, float] | None = None,
                  checkpoint: str | Path | None = None) -> Teacher | None:
    """Fine-tune on ``train`` (query_id, item_id, grade[, raw_score]) with early stopping on the ``valid`` loss.

    With ``checkpoint`` (a file path), the trainable weights, optimiser, schedule, shuffling and random state are
    saved after every evaluation and every epoch, and a run started again on the same inputs and settings resumes
    from there (one process: exactly as an uninterrupted run; under DDP rank 0 writes and every rank reads it, so
    it must be on storage they share; FSDP's shards are not checkpointed).

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
                          log if ctx.is_main else (lambda _: None), raw_scale, checkpoint)


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


@dataclass
class _Encoded:
    """Judged pairs as the cross-encoder reads them: token ids (unpadded), targets [N, K], lengths, grades."""

    encodings: list[dict]
    targets: torch.Tensor
    lengths: np.ndarray
    grades: torch.Tensor

    @classmethod
    def of(cls, frame: pd.DataFrame, query_text: pd.Series, item_text: pd.Series, tokenizer, text: TextConfig,
           num_grades: int, targets: str, raw_scale: tuple[float, float] | None) -> "_Encoded":
        encodings = encode_pairs(tokenizer, *_pairs(frame, query_text, item_text), text)
        return cls(encodings, torch.from_numpy(grade_targets(frame, num_grades, targets, raw_scale)),
                   np.array([len(e["input_ids"]) for e in encodings]),
                   torch.tensor(frame["grade"].to_numpy(), dtype=torch.long))


def _fine_tune(ctx: distributed.Context, train: pd.DataFrame, valid: pd.DataFrame, query_text: pd.Series,
               items: pd.DataFrame, num_grades: int, config: TeacherConfig, text: TextConfig, data_hash: str,
               log: Callable[[str], None], raw_scale: tuple[float, float] | None,
               checkpoint: str | Path | None = None) -> Teacher | None:
    set_threads()
    distributed.share_cpu_threads(ctx)
    seed_everything(config.seed)
    dev = ctx.device if ctx.distributed else device()
    if config.max_train_pairs and len(train) > config.max_train_pairs:
        train = train.sample(config.max_train_pairs, random_state=config.seed)
    run = _TeacherRun(ctx, config, num_grades, dev, log)
    run.prepare(train, valid, query_text, items, text, raw_scale)
    schedule = Schedule(epochs=config.epochs, patience=config.early_stopping_patience,
                        eval_every_steps=config.eval_every_steps or run.steps_per_epoch, total_steps=run.total_steps)
    state = run.resume(checkpoint, _checkpoint_key(train, valid, num_grades, config, text, data_hash, ctx))
    run.model.train()
    log(f"teacher: {len(run.train.encodings)} train / {len(run.valid.encodings)} valid pairs, "
        f"finetune={config.finetune}, precision={run.precision}, device={dev.type}"
        + (f", {ctx.world_size} processes ({config.distributed.strategy}, {ctx.backend})" if ctx.distributed else ""))
    with progress_bar(disable=not ctx.is_main) as bar:
        run.progress = (bar, bar.add_task("teacher fine-tune", total=run.total_steps))
        bar.update(run.progress[1], completed=state.step)
        state = training.train(run, schedule, state)
        if state.stopped:
            log(f"teacher: early stop at step {state.step}; best valid loss {state.best['valid_loss']:.4f} "
                f"at step {state.best['step']}")
    model = _trained_model(run, state)
    if model is None:
        return None  # a rank other than 0: rank 0's model is the one that gets merged, calibrated and saved
    return Teacher(model, run.tokenizer, _manifest(run, state, text, data_hash))


def _checkpoint_key(train: pd.DataFrame, valid: pd.DataFrame, num_grades: int, config: TeacherConfig,
                    text: TextConfig, data_hash: str, ctx: distributed.Context) -> str:
    """What a teacher checkpoint was trained from and how: a resumed run must match it."""
    digest = hashlib.sha256()
    for frame in (train, valid):  # in order: the shuffle draws positions
        digest.update(pd.util.hash_pandas_object(frame[["query_id", "item_id", "grade"]], index=False).to_numpy())
    # Calibration comes after training, and how the processes are launched (timeouts, backend, TrainJob) does not
    # change what they train: neither should throw a fine-tune away. The world size and strategy do.
    settings = {"config": config.model_dump(exclude={"calibration", "distributed"}), "text": text.model_dump(),
                "data": data_hash, "grades": num_grades, "pairs": digest.hexdigest(), "world_size": ctx.world_size,
                "strategy": config.distributed.strategy if ctx.distributed else None}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _TeacherRun(Hooks):
    """The teacher's side of relevance.models.training, on one process or as one rank of DDP / FSDP: each step
    trains this rank's share of a global batch of length-bucketed pairs; evaluation sums over ranks; the best
    snapshot holds the trainable tensors (each rank's own shard under FSDP).

    Forward/backward go through ``wrapped`` (DDP's replica, or ``model`` itself: one process, or FSDP, which
    shards in place); evaluation, snapshots and saving read ``model``."""

    def __init__(self, ctx: distributed.Context, config: TeacherConfig, num_grades: int, dev: torch.device,
                 log: Callable[[str], None]):
        self.ctx, self.config, self.num_grades, self.dev, self.log = ctx, config, num_grades, dev, log
        self.precision = resolve_precision(config.precision, dev)
        # FSDP exists for a model that may not fit one device whole: build it in host memory, and let sharding
        # move each rank's shard to the device.
        self.sharded = ctx.distributed and config.distributed.strategy == "fsdp"
        self.grade_values = torch.arange(num_grades, dtype=torch.float32, device=dev)
        self.trained_pairs, self.train_seconds = 0, 0.0
        self.progress = None  # (rich progress, task)
        self.checkpoint_path, self.key, self.epoch_shuffle, self.last_checkpoint_step = None, "", "", -1

    def prepare(self, train: pd.DataFrame, valid: pd.DataFrame, query_text: pd.Series, items: pd.DataFrame,
                text: TextConfig, raw_scale: tuple[float, float] | None) -> None:
        """Build the model, encode the pairs, wrap the model for its strategy, and set up the optimiser, the
        schedule, the loss and the shuffling."""
        ctx, config, dev = self.ctx, self.config, self.dev
        self.model, self.tokenizer, self.backbone_path = build_cross_encoder(
            config, self.num_grades, torch.device("cpu") if self.sharded else dev)
        item_text = assemble_item_texts(items, text, self.tokenizer)
        self.train = _Encoded.of(train, query_text, item_text, self.tokenizer, text, self.num_grades,
                                 config.targets, raw_scale)
        self.valid = _Encoded.of(valid, query_text, item_text, self.tokenizer, text, self.num_grades,
                                 config.targets, raw_scale)
        self.wrapped = distributed.wrap(self.model, ctx, config.distributed.strategy, lambda: collate(
            self.tokenizer, self.train.encodings, np.arange(min(2, len(self.train.encodings))), dev), self.log)
        if ctx.distributed:
            # Same seed on every rank built identical models; from here each rank draws its own dropout masks.
            torch.manual_seed(config.seed + ctx.rank)
        self.optimizer = torch.optim.AdamW([
            {"params": [p for p in self.model.backbone.parameters() if p.requires_grad], "lr": config.learning_rate},
            {"params": list(self.model.head.parameters()), "lr": config.head_learning_rate},
        ], weight_decay=config.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train.encodings) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, int(config.warmup_fraction * self.total_steps),
                                                         self.total_steps)
        weights = class_weights(config, train["grade"].to_numpy(), self.num_grades)
        self.class_weights = weights.to(dev) if weights is not None else None
        self.rng = np.random.default_rng(config.seed)

    def resume(self, path: str | Path | None, key: str) -> LoopState:
        """The checkpoint's state (weights, optimiser, schedule, shuffling restored), or a fresh one."""
        if path is not None and self.sharded:
            self.log("teacher: no mid-training checkpoints under FSDP (each rank holds a shard); a killed run restarts")
            path = None
        self.checkpoint_path, self.key = (Path(path) if path else None), key
        state = training.load_checkpoint(self.checkpoint_path, key, {
            "model": self.restore, "optimizer": self.optimizer, "scheduler": self.scheduler,
            "shuffle": lambda saved: setattr(self.rng.bit_generator, "state", json.loads(saved)),
            "throughput": self._set_throughput}, self.log, "teacher", self.dev)
        self.last_checkpoint_step = state.step
        if self.ctx.distributed:
            total, squares = self.ctx.sum([state.step, state.step ** 2])
            if squares * self.ctx.world_size != total ** 2:  # not every rank at the same step: all of them raise
                raise RuntimeError(f"teacher: the ranks resumed at different steps from {path}: it must be on storage "
                                   "every rank reads (a volume shared by the job's pods); delete it to start afresh")
            if state.step:  # rank 0's random state came back on every rank: each draws its own dropout again
                torch.manual_seed(self.config.seed + self.ctx.rank + self.ctx.world_size * state.step)
            if not self.ctx.is_main:
                state.best_state = None  # only rank 0's snapshot is ever restored and saved
        return state

    def _set_throughput(self, saved: list[float]) -> None:
        self.trained_pairs, self.train_seconds = int(saved[0]), float(saved[1])

    def start_epoch(self, epoch: int) -> None:
        # The shuffle an epoch draws in batches(): a checkpoint taken mid-epoch resumes from the epoch's start.
        self.epoch_shuffle = json.dumps(self.rng.bit_generator.state)

    def checkpoint(self, state: LoopState) -> None:
        # An evaluation at an epoch's last batch is followed by the epoch's own checkpoint: one write is enough
        # (resumed from the first, the epoch ends with no batch left and the next one shuffles as it would).
        if self.checkpoint_path is None or not self.ctx.is_main or state.step == self.last_checkpoint_step:
            return
        shuffle = self.epoch_shuffle if state.batch else json.dumps(self.rng.bit_generator.state)
        training.save_checkpoint(self.checkpoint_path, self.key, state, {
            "model": self._trainable(), "optimizer": self.optimizer, "scheduler": self.scheduler,
            "shuffle": shuffle, "throughput": [self.trained_pairs, self.train_seconds]}, cuda=self.dev.type == "cuda")
        self.last_checkpoint_step = state.step

    def my_rows(self, index: np.ndarray) -> tuple[np.ndarray, bool]:
        """This rank's slice of a global batch. A rank whose slice is empty (a last batch smaller than the world)
        runs one row it then ignores: every rank must take part in the same collectives."""
        rows = self.ctx.shard(index)
        return (rows, True) if len(rows) else (index[:1], False)

    def batches(self, epoch: int, start_batch: int) -> list[np.ndarray]:
        return length_batches(self.train.lengths, self.config.batch_size, self.rng)[start_batch:]

    def train_step(self, index: np.ndarray) -> torch.Tensor:
        started = time.perf_counter()
        ctx, config, dev = self.ctx, self.config, self.dev
        if ctx.distributed:
            # This rank's part of the global batch's mean loss, scaled by the world size that DDP's (and FSDP's)
            # gradient averaging divides by: the gradients then equal one process's on the whole batch. (With
            # probability targets, the weighted, smoothed cross-entropy's mean is its sum over rows / rows.)
            rows, counted = self.my_rows(index)
            with autocast(self.precision, dev):
                logits = self.wrapped(**collate(self.tokenizer, self.train.encodings, rows, dev))
            loss = pair_loss(logits.float(), self.train.targets[rows].to(dev), self.grade_values,
                             config.expected_grade_mse_weight, "sum", self.class_weights, config.label_smoothing
                             ) * (ctx.world_size / len(index)) * float(counted)
        else:
            with autocast(self.precision, dev):
                logits = self.model(**collate(self.tokenizer, self.train.encodings, index, dev))
            loss = pair_loss(logits.float(), self.train.targets[index].to(dev), self.grade_values,
                             config.expected_grade_mse_weight, "mean", self.class_weights, config.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.train_seconds += time.perf_counter() - started
        self.trained_pairs += len(index)
        return loss

    def after_step(self, state: LoopState, loss: torch.Tensor) -> None:
        distributed.inject_fault(self.ctx, state.step)
        if self.progress is not None:
            # Rank 0's share only: averaging it over ranks would cost a collective per step for a label.
            bar, task = self.progress
            bar.update(task, advance=1, description=f"teacher epoch {state.epoch + 1} loss {loss.item():.3f}")

    def evaluate(self, state: LoopState) -> dict:
        model, dev, valid = self.model, self.dev, self.valid
        model.eval()
        loss_sum, squared_error, correct = 0.0, 0.0, 0
        with torch.no_grad():
            for index in length_batches(valid.lengths, self.config.batch_size * 2):
                rows, counted = self.my_rows(index)
                with autocast(self.precision, dev):
                    logits = model(**collate(self.tokenizer, valid.encodings, rows, dev)).float()
                if not counted:
                    continue
                target, grades = valid.targets[rows].to(dev), valid.grades[rows].to(dev)
                loss_sum += pair_loss(logits, target, self.grade_values, self.config.expected_grade_mse_weight,
                                      "sum").item()
                squared_error += float(((torch.softmax(logits, -1) @ self.grade_values - grades) ** 2).sum())
                correct += int((logits.argmax(-1) == grades).sum())
        model.train()
        loss_sum, squared_error, correct = self.ctx.sum([loss_sum, squared_error, correct])
        n = len(valid.encodings)
        return {"step": state.step, "epoch": state.epoch + 1, "valid_loss": loss_sum / n, "valid_accuracy": correct / n,
                "valid_rmse_grade": (squared_error / n) ** 0.5}

    def after_evaluation(self, state: LoopState, result: dict) -> None:
        self.log(f"teacher: step {result['step']}/{self.total_steps} valid loss {result['valid_loss']:.4f} "
                 f"accuracy {result['valid_accuracy']:.4f} rmse(grade) {result['valid_rmse_grade']:.4f}")

    def agree(self, flag: bool) -> bool:
        return self.ctx.agree(flag)

    def snapshot(self) -> dict | None:
        if not (self.ctx.is_main or self.sharded):  # a DDP replica other than rank 0's is never saved
            return None
        return {k: v.clone() for k, v in self._trainable().items()}

    def _trainable(self) -> dict[str, torch.Tensor]:
        """The tensors training changes (a LoRA's adapters and the head, not its frozen base)."""
        return {k: v.detach() for k, v in self.model.named_parameters() if v.requires_grad}

    def restore(self, snapshot: dict) -> None:
        if self.sharded:  # each rank restores its own shard, in place
            with torch.no_grad():
                for name, parameter in self.model.named_parameters():
                    if name in snapshot:
                        parameter.copy_(snapshot[name])
        else:
            self.model.load_state_dict(snapshot, strict=False)  # only trainable tensors were snapshotted


def _trained_model(run: _TeacherRun, state: LoopState) -> CrossEncoder | None:
    """The trained cross-encoder, whole, merged and on the device, on rank 0 (None on the other ranks)."""
    ctx, config, dev, model = run.ctx, run.config, run.dev, run.model
    if run.sharded:
        # The full weights, gathered on rank 0 into a fresh unsharded cross-encoder (in host memory: only the
        # inference copy has to fit the device, as it must for labelling anyway).
        full = distributed.full_state_dict(model, ctx)
        del model
        run.wrapped = run.model = run.optimizer = run.scheduler = state.best_state = None
        if not ctx.is_main:
            return None
        model = build_cross_encoder(config, run.num_grades, torch.device("cpu"))[0]
        model.load_state_dict(full)
        del full
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    elif not ctx.is_main:
        return None  # the replicas are identical
    if config.finetune in ("lora", "qlora"):
        model.backbone = _merged_backbone(model.backbone, config, run.backbone_path, len(run.tokenizer))
    if config.gradient_checkpointing:
        model.backbone.activation_checkpointing_disable()
    return model.to(dev).eval()


def _manifest(run: _TeacherRun, state: LoopState, text: TextConfig, data_hash: str) -> dict:
    config, ctx = run.config, run.ctx
    best = state.best or {"valid_loss": float("inf")}
    manifest = {
        "kind": "teacher",
        "backbone": config.backbone,
        "backbone_path": run.backbone_path,
        "num_grades": run.num_grades,
        "pooling": config.pooling,
        "head_hidden": config.head_hidden,
        "finetune": config.finetune,
        "precision": run.precision,
        "text": text.model_dump(),
        "config": config.model_dump(),
        "train_data_hash": data_hash,
        "metrics": {**{k: v for k, v in best.items() if k != "step"}, "best_step": best.get("step"),
                    "train_pairs_per_s": run.trained_pairs / max(run.train_seconds, 1e-9), "history": state.history},
    }
    if ctx.distributed:
        manifest["distributed"] = {"world_size": ctx.world_size, "strategy": config.distributed.strategy,
                                   "backend": ctx.backend}
    return manifest


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
        where = Path(out).absolute()  # (".": a name to put the checkpoint's beside)
        checkpoint = where.with_name(where.name + ".checkpoint.pt")  # beside the output, where a rerun looks
        teacher = train_teacher(dataset.split("train"), dataset.teacher_valid(), dataset.query_text, dataset.items,
                                dataset.num_grades, config.teacher, config.text,
                                data_hash=dataset.training_data_hash(), log=log, raw_scale=raw_scale,
                                checkpoint=checkpoint)
        if teacher is not None:
            teacher.manifest["dataset"] = info.__dict__
            teacher.manifest["judge_check"] = judge_check_record(dataset)
            _calibrate(teacher, config, dataset, log)
            teacher.save(out)
            checkpoint.unlink(missing_ok=True)
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
