"""The student: an MLP over the featurizer's vector, distilled from the teacher's soft labels.

Loss: T²·KL(p_teacher^(T) ‖ p_student^(T)) on temperature-softened distributions (Hinton, Vinyals & Dean, 2015,
"Distilling the Knowledge in a Neural Network"), plus an optional cross-entropy on human grades where a pair has
one. With ``human_only`` training the same student learns from human grades alone: the baseline distillation
must beat.

Saved layout: student/model.safetensors (MLP with its input standardisation), student/manifest.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from relevance.common.runtime import progress_bar, seed_everything, set_threads
from relevance.config import StudentConfig
from relevance.models.calibration import Calibrator
from relevance.models.saved import SavedModel
from relevance.models import training
from relevance.models.training import Hooks, LoopState, Schedule


class StudentMLP(nn.Module):
    """Standardise → [Linear → GELU → Dropout]* → Linear(K) → calibration. Standardisation and calibration are part
    of the model, so the exported graph takes raw featurizer output and serves calibrated probabilities.

    The output is calibrated log-probabilities, scale ⊙ log_softmax(z) + bias (relevance.models.calibration; the
    identity while training, fitted on valid afterwards): a softmax of it is the calibrated distribution."""

    def __init__(self, num_features: int, num_grades: int, hidden: list[int], dropout: float):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))
        self.register_buffer("calibration_scale", torch.ones(num_grades))
        self.register_buffer("calibration_bias", torch.zeros(num_grades))
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_grades))
        self.layers = nn.Sequential(*layers)

    def uncalibrated(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers((features - self.feature_mean) / self.feature_std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.calibration_scale * torch.log_softmax(self.uncalibrated(features), dim=-1) + self.calibration_bias

    def set_calibration(self, calibrator) -> None:
        self.calibration_scale.copy_(torch.tensor(calibrator.scale, dtype=torch.float32))
        self.calibration_bias.copy_(torch.tensor(calibrator.bias, dtype=torch.float32))


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0,
                      human_grades: torch.Tensor | None = None, ce_weight: float = 0.0) -> torch.Tensor:
    """T²·KL(teacher ‖ student) at temperature T, plus ``ce_weight`` × CE on rows with a human grade (≥ 0)."""
    if temperature != 1.0:
        # Soften the teacher by re-tempering its log-probabilities: p^(1/T), renormalised.
        teacher_probs = torch.softmax(torch.log(teacher_probs.clamp_min(1e-8)) / temperature, dim=-1)
    log_student = torch.log_softmax(student_logits / temperature, dim=-1)
    loss = nn.functional.kl_div(log_student, teacher_probs, reduction="batchmean") * temperature**2
    if human_grades is not None and ce_weight > 0:
        labelled = human_grades >= 0
        if labelled.any():
            loss = loss + ce_weight * nn.functional.cross_entropy(student_logits[labelled], human_grades[labelled])
    return loss


@dataclass
class Student(SavedModel):
    """A saved-model kind (relevance.models.saved): its version hashes model.safetensors, which holds the
    calibration too (buffers of the MLP)."""

    kind = "student"
    model: StudentMLP
    manifest: dict

    @property
    def calibrator(self) -> Calibrator:
        """The calibration fitted on valid, already part of the model's output (recorded in the metrics)."""
        return Calibrator.from_dict(self.manifest.get("metrics", {}).get("calibration"), self.num_grades)

    @torch.no_grad()
    def predict_proba(self, features: np.ndarray, batch_size: int = 8192, calibrated: bool = True) -> np.ndarray:
        expected = self.model.feature_mean.shape[0]
        if features.ndim != 2 or features.shape[1] != expected:
            raise ValueError(f"student expects features of shape [N, {expected}], got {list(features.shape)}")
        self.model.eval()
        forward = self.model if calibrated else self.model.uncalibrated
        out = [torch.softmax(forward(torch.from_numpy(features[s:s + batch_size]).float()), -1).numpy()
               for s in range(0, len(features), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_grades), dtype=np.float32)

    def write_files(self, directory: Path) -> list[Path]:
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, directory / "model.safetensors")
        return [directory / "model.safetensors"]

    @classmethod
    def from_files(cls, directory: Path, manifest: dict) -> "Student":
        model = StudentMLP(manifest["num_features"], manifest["num_grades"], manifest["config"]["hidden"], 0.0)
        state = load_file(directory / "model.safetensors")
        # Students saved before calibration was part of the model have no calibration buffers: the identity.
        missing = set(model.state_dict()) - set(state) - {"calibration_scale", "calibration_bias"}
        if missing:
            raise ValueError(f"{directory}: model.safetensors lacks {sorted(missing)}; not a student of this code")
        model.load_state_dict(state, strict=False)
        return cls(model.eval(), manifest)


class ArrayBatches:
    """Training batches from arrays in memory: the same interface as relevance.student.pairstore.StoreBatches (the
    out-of-core source), so one loop trains both. Epoch e's order is a function of (seed, e) alone."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, grades: np.ndarray | None, batch_size: int,
                 seed: int = 0):
        if len(features) != len(targets) or (grades is not None and len(grades) != len(features)):
            raise ValueError(f"student: {len(features)} feature rows but {len(targets)} targets"
                             + (f" and {len(grades)} grades" if grades is not None else ""))
        self.x, self.targets, self.batch_size, self.seed = features, targets, batch_size, seed
        self.grades = grades if grades is not None else np.full(len(features), -1, np.int64)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def fingerprint(self) -> str:
        return f"arrays-{self.x.shape}-{float(np.asarray(self.x[:1000], np.float64).sum()):.6g}"

    def epoch(self, epoch: int, start_batch: int = 0):
        order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.x))
        for first in range(start_batch * self.batch_size, len(order), self.batch_size):
            index = order[first:first + self.batch_size]
            yield self.x[index], self.targets[index], self.grades[index]

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.x) // self.batch_size)

    def sample_features(self, rows: int | None = None) -> np.ndarray:
        return self.x


def feature_statistics(parts) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) standard deviation per feature over an array or an iterable of arrays, accumulated
    in float64 a block at a time: the input standardisation, without a float64 copy of the training set."""
    parts = [parts] if isinstance(parts, np.ndarray) else parts
    count, total, squares = 0, None, None
    for part in parts:
        for first in range(0, len(part), 8192):
            block = np.asarray(part[first:first + 8192], dtype=np.float64)
            total = block.sum(0) if total is None else total + block.sum(0)
            squares = (block**2).sum(0) if squares is None else squares + (block**2).sum(0)
            count += len(block)
    if not count:
        raise ValueError("student: no training rows to standardise the features on")
    mean = total / count
    variance = np.maximum(squares - count * mean**2, 0.0) / max(count - 1, 1)
    return mean.astype(np.float32), np.sqrt(variance).astype(np.float32)


def train_student(train_features: np.ndarray, train_targets: np.ndarray, valid_features: np.ndarray,
                  valid_grades: np.ndarray, num_grades: int, config: StudentConfig,
                  train_grades: np.ndarray | None = None, human_only: bool = False,
                  log=print) -> tuple[StudentMLP, dict]:
    """Fit the MLP on arrays in memory (see :func:`fit_student`).

    ``train_targets`` are teacher probabilities [N, K] (distillation) or, with ``human_only``, grades [N].
    ``train_grades`` (−1 where unknown) feeds the optional CE term of distillation.
    """
    if human_only:
        targets = np.asarray(train_targets, dtype=np.int64)
    else:
        if train_targets.ndim != 2 or train_targets.shape[1] != num_grades:
            raise ValueError(f"student: teacher labels have {train_targets.shape[-1]} classes, the data has "
                             f"K={num_grades}")
        targets = np.asarray(train_targets, dtype=np.float32)
    grades = np.asarray(train_grades, dtype=np.int64) if train_grades is not None else None
    batches = ArrayBatches(np.asarray(train_features, dtype=np.float32), targets, grades, config.batch_size,
                           config.seed)
    return fit_student(batches, valid_features, valid_grades, num_grades, config, human_only=human_only, log=log)


def _checkpoint_key(batches, config: StudentConfig, human_only: bool) -> str:
    import hashlib

    # How often checkpoints are written does not change what is trained: a resumed run may change it.
    settings = config.model_dump_json(exclude={"checkpoint_every_batches"})
    return hashlib.sha256(f"{batches.fingerprint}|{settings}|{human_only}".encode()).hexdigest()[:16]


def standardising_std(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The divisor of the input standardisation: the sample's std, but 1 for a feature (near-)constant in the
    sample. Dividing by a vanishing std would turn any other value it takes at serving time into ~1e6 at the
    MLP's input; with 1 such a value enters as its plain difference from the training mean."""
    constant = std <= 1e-6 * np.maximum(1.0, np.abs(mean))  # float64 sums leave ~1e-8·|mean| of noise
    return np.where(constant, 1.0, std).astype(np.float32)


def fit_student(batches, valid_features: np.ndarray, valid_grades: np.ndarray, num_grades: int,
                config: StudentConfig, human_only: bool = False, log=print, checkpoint: str | Path | None = None,
                checkpoint_every: int = 500, on_batch=None) -> tuple[StudentMLP, dict]:
    """Fit the MLP on a batch source (:class:`ArrayBatches`, or relevance.student.pairstore.StoreBatches out of core);
    early stopping on human-graded valid cross-entropy (relevance.models.training, evaluated once per epoch).

    With ``checkpoint`` (a file path), the model, optimiser, schedule, random state and position are saved
    every ``checkpoint_every`` batches and at the end of every epoch; a run started again with the same source
    and settings resumes from there, mid-epoch included, and sees exactly the batches the killed run had not.
    ``on_batch(epoch, batch)`` is called after each optimiser step.
    """
    if len(batches) == 0 or len(valid_features) == 0:
        raise ValueError(f"student: need non-empty train and valid sets, got {len(batches)} train and "
                         f"{len(valid_features)} valid rows")
    set_threads()
    seed_everything(config.seed)
    vx = torch.from_numpy(np.asarray(valid_features, dtype=np.float32))
    vy = torch.from_numpy(np.asarray(valid_grades, dtype=np.int64))
    model = _standardised_mlp(batches, int(vx.shape[1]), num_grades, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    run = _StudentRun(model, optimizer, scheduler, batches, vx, vy, config, human_only, on_batch)
    state = run.resume(Path(checkpoint) if checkpoint else None, log)
    schedule = Schedule(epochs=config.epochs, patience=config.early_stopping_patience,
                        checkpoint_every_batches=checkpoint_every if checkpoint else None)
    with progress_bar(transient=True) as bar:
        run.progress = (bar, bar.add_task("student", total=config.epochs, completed=state.epoch))
        state = training.train(run, schedule, state)
    if state.best_state is None:
        raise ValueError(f"student: the valid loss never improved on its start (history {state.history})")
    best = min(state.history, key=lambda h: h["valid_loss"])
    log(f"student ({'human labels' if human_only else 'distilled'}): best valid loss {best['valid_loss']:.4f}, "
        f"accuracy {best['valid_accuracy']:.3f} at epoch {best['epoch']}")
    metrics = {"best": best, "history": state.history}
    calibration = calibrate(model, vx, vy, config.calibration)
    if calibration is not None:
        metrics["calibration"] = calibration
    return model.eval(), metrics


def calibrate(model: StudentMLP, vx: torch.Tensor, vy: torch.Tensor, method: str) -> dict | None:
    """Fit ``method``'s calibration (relevance.models.calibration) on valid and make it part of ``model``; returns
    it as the metrics record it (None: ``method`` is "none")."""
    if method == "none":
        return None
    from relevance.models.calibration import fit_calibrator

    model.eval()
    with torch.no_grad():
        valid_probs = torch.softmax(model(vx), -1).numpy()
    calibrator = fit_calibrator(valid_probs, vy.numpy(), method)
    model.set_calibration(calibrator)
    return calibrator.to_dict()


def _standardised_mlp(batches, num_features: int, num_grades: int, config: StudentConfig) -> StudentMLP:
    """A fresh MLP whose input standardisation is fitted on the batch source's feature sample."""
    mean, std = feature_statistics(batches.sample_features())
    if len(mean) != num_features:
        raise ValueError(f"student: training vectors have {len(mean)} features, valid ones {num_features}")
    model = StudentMLP(len(mean), num_grades, config.hidden, config.dropout)
    model.feature_mean.copy_(torch.from_numpy(mean))
    model.feature_std.copy_(torch.from_numpy(standardising_std(mean, std)))
    return model


class _StudentRun(Hooks):
    """The student's side of relevance.models.training: one AdamW step per batch, a cosine schedule stepped per
    epoch, valid cross-entropy after every epoch, the whole state dict as the best snapshot, and checkpoints."""

    def __init__(self, model: StudentMLP, optimizer, scheduler, source, vx: torch.Tensor, vy: torch.Tensor,
                 config: StudentConfig, human_only: bool, on_batch=None):
        self.model, self.optimizer, self.scheduler, self.source = model, optimizer, scheduler, source
        self.vx, self.vy, self.config, self.human_only, self.on_batch = vx, vy, config, human_only, on_batch
        self.key = _checkpoint_key(source, config, human_only)
        self.path: Path | None = None
        self.progress = None  # (rich progress, task)

    def resume(self, path: Path | None, log) -> LoopState:
        """The state saved at ``path`` (model, optimiser, schedule and random state restored), or a fresh one."""
        self.path = path
        return training.load_checkpoint(path, self.key, self._parts(), log, "student")

    def _parts(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}

    def checkpoint(self, state: LoopState) -> None:
        if self.path is not None:
            training.save_checkpoint(self.path, self.key, state, self._parts())

    def batches(self, epoch: int, start_batch: int):
        return self.source.epoch(epoch, start_batch)

    def start_epoch(self, epoch: int) -> None:
        self.model.train()

    def train_step(self, batch) -> torch.Tensor:
        x, targets, grades = batch
        logits = self.model(torch.from_numpy(x))
        if self.human_only:
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(targets, dtype=np.int64)))
        else:
            loss = distillation_loss(logits, torch.from_numpy(np.asarray(targets, dtype=np.float32)),
                                     self.config.temperature, torch.from_numpy(grades), self.config.ce_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def after_step(self, state: LoopState, loss) -> None:
        if self.on_batch:
            self.on_batch(state.epoch, state.batch)

    def end_epoch(self, epoch: int) -> None:
        self.scheduler.step()

    def evaluate(self, state: LoopState) -> dict:
        self.model.eval()
        with torch.no_grad():
            valid_logits = self.model(self.vx)
            valid_loss = nn.functional.cross_entropy(valid_logits, self.vy).item()
            valid_accuracy = (valid_logits.argmax(-1) == self.vy).float().mean().item()
        return {"epoch": state.epoch + 1, "valid_loss": valid_loss, "valid_accuracy": valid_accuracy}

    def after_evaluation(self, state: LoopState, result: dict) -> None:
        if self.progress is not None:
            bar, task = self.progress
            bar.update(task, advance=1, description=f"student epoch {result['epoch']} valid loss "
                                                    f"{result['valid_loss']:.4f}")

    def snapshot(self) -> dict:
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot)
