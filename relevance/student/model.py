"""The student: an MLP over the featurizer's vector, distilled from the teacher's soft labels.

Loss: T²·KL(p_teacher^(T) ‖ p_student^(T)) on temperature-softened distributions (Hinton, Vinyals & Dean, 2015,
"Distilling the Knowledge in a Neural Network"), plus an optional cross-entropy on human grades where a pair has
one. With ``human_only`` training the same student learns from human grades alone: the baseline distillation
must beat.

Saved layout: student/model.safetensors (MLP with its input standardisation), student/manifest.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from relevance.config import StudentConfig
from relevance.common.files import atomic_directory, sha256_of_files
from relevance.common.runtime import progress_bar, seed_everything, set_threads


class StudentMLP(nn.Module):
    """Standardise → [Linear → GELU → Dropout]* → Linear(K) → calibration. Standardisation and calibration are part
    of the model, so the exported graph takes raw featurizer output and serves calibrated probabilities.

    The output is calibrated log-probabilities, scale ⊙ log_softmax(z) + bias (relevance.models.calibration; the identity
    while training, fitted on valid afterwards): a softmax of it is the calibrated distribution."""

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
class Student:
    model: StudentMLP
    manifest: dict

    @property
    def num_grades(self) -> int:
        return int(self.manifest["num_grades"])

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

    def save(self, directory: str | Path) -> Path:
        with atomic_directory(directory) as tmp:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, tmp / "model.safetensors")
            self.manifest["student_version"] = "student-" + sha256_of_files([tmp / "model.safetensors"])[:12]
            (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "Student":
        from relevance.common.files import read_manifest

        manifest = read_manifest(Path(directory), expected_kind="student")
        model = StudentMLP(manifest["num_features"], manifest["num_grades"], manifest["config"]["hidden"], 0.0)
        state = load_file(Path(directory) / "model.safetensors")
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
    early stopping on human-graded valid cross-entropy.

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
    mean, std = feature_statistics(batches.sample_features())
    if len(mean) != vx.shape[1]:
        raise ValueError(f"student: training vectors have {len(mean)} features, valid ones {vx.shape[1]}")

    model = StudentMLP(len(mean), num_grades, config.hidden, config.dropout)
    model.feature_mean.copy_(torch.from_numpy(mean))
    model.feature_std.copy_(torch.from_numpy(standardising_std(mean, std)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    state = {"epoch": 0, "batch": 0, "best_loss": float("inf"), "best_state": None, "stale": 0, "history": []}
    key = _checkpoint_key(batches, config, human_only)
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)  # tensors, numbers and lists only: no code runs
        if saved.get("key") == key:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["torch_rng"])
            state = saved["state"]
            log(f"student: resuming from {checkpoint} at epoch {state['epoch'] + 1}, batch {state['batch']}")
        else:
            log(f"student: {checkpoint} is of another training set or settings; starting afresh")

    def save_checkpoint() -> None:
        from relevance.common.files import atomic_write

        with atomic_write(checkpoint) as tmp:
            torch.save({"key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "state": state}, tmp)

    def loss_of(logits, targets, grades):
        if human_only:
            return nn.functional.cross_entropy(logits, torch.from_numpy(np.asarray(targets, dtype=np.int64)))
        return distillation_loss(logits, torch.from_numpy(np.asarray(targets, dtype=np.float32)), config.temperature,
                                 torch.from_numpy(grades), config.ce_weight)

    done = state["stale"] >= config.early_stopping_patience
    with progress_bar(transient=True) as bar:
        task = bar.add_task("student", total=config.epochs, completed=state["epoch"])
        while state["epoch"] < config.epochs and not done:
            epoch = state["epoch"]
            model.train()
            for x, targets, grades in batches.epoch(epoch, state["batch"]):
                loss = loss_of(model(torch.from_numpy(x)), targets, grades)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                state["batch"] += 1
                if checkpoint is not None and state["batch"] % checkpoint_every == 0:
                    save_checkpoint()
                if on_batch:
                    on_batch(epoch, state["batch"])
            scheduler.step()
            model.eval()
            with torch.no_grad():
                valid_logits = model(vx)
                valid_loss = nn.functional.cross_entropy(valid_logits, vy).item()
                valid_accuracy = (valid_logits.argmax(-1) == vy).float().mean().item()
            state["history"].append({"epoch": epoch + 1, "valid_loss": valid_loss, "valid_accuracy": valid_accuracy})
            bar.update(task, advance=1, description=f"student epoch {epoch + 1} valid loss {valid_loss:.4f}")
            if valid_loss < state["best_loss"] - 1e-4:
                state["best_loss"], state["stale"] = valid_loss, 0
                state["best_state"] = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                state["stale"] += 1
                done = state["stale"] >= config.early_stopping_patience
            state["epoch"], state["batch"] = epoch + 1, 0
            if checkpoint is not None:
                save_checkpoint()
    model.load_state_dict(state["best_state"])
    history = state["history"]
    best = min(history, key=lambda h: h["valid_loss"])
    log(f"student ({'human labels' if human_only else 'distilled'}): best valid loss {best['valid_loss']:.4f}, "
        f"accuracy {best['valid_accuracy']:.3f} at epoch {best['epoch']}")
    metrics = {"best": best, "history": history}
    if config.calibration != "none":
        from relevance.models.calibration import fit_calibrator

        model.eval()
        with torch.no_grad():
            valid_probs = torch.softmax(model(vx), -1).numpy()
        calibrator = fit_calibrator(valid_probs, vy.numpy(), config.calibration)
        model.set_calibration(calibrator)
        metrics["calibration"] = calibrator.to_dict()
    return model.eval(), metrics
