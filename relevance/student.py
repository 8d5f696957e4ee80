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
from relevance.files import atomic_directory, sha256_of_files
from relevance.runtime import progress_bar, seed_everything, set_threads


class StudentMLP(nn.Module):
    """Standardise → [Linear → GELU → Dropout]* → Linear(K) → calibration. Standardisation and calibration are part
    of the model, so the exported graph takes raw featurizer output and serves calibrated probabilities.

    The output is calibrated log-probabilities, scale ⊙ log_softmax(z) + bias (relevance.calibration; the identity
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
        from relevance.files import read_manifest

        manifest = read_manifest(Path(directory), expected_kind="student")
        model = StudentMLP(manifest["num_features"], manifest["num_grades"], manifest["config"]["hidden"], 0.0)
        state = load_file(Path(directory) / "model.safetensors")
        # Students saved before calibration was part of the model have no calibration buffers: the identity.
        missing = set(model.state_dict()) - set(state) - {"calibration_scale", "calibration_bias"}
        if missing:
            raise ValueError(f"{directory}: model.safetensors lacks {sorted(missing)}; not a student of this code")
        model.load_state_dict(state, strict=False)
        return cls(model.eval(), manifest)


def train_student(train_features: np.ndarray, train_targets: np.ndarray, valid_features: np.ndarray,
                  valid_grades: np.ndarray, num_grades: int, config: StudentConfig,
                  train_grades: np.ndarray | None = None, human_only: bool = False,
                  log=print) -> tuple[StudentMLP, dict]:
    """Fit the MLP; early stopping on human-graded valid cross-entropy.

    ``train_targets`` are teacher probabilities [N, K] (distillation) or, with ``human_only``, grades [N].
    ``train_grades`` (−1 where unknown) feeds the optional CE term of distillation.
    """
    if len(train_features) == 0 or len(valid_features) == 0:
        raise ValueError(f"student: need non-empty train and valid sets, got {len(train_features)} train and "
                         f"{len(valid_features)} valid rows")
    if human_only:
        targets = torch.from_numpy(np.asarray(train_targets, dtype=np.int64))
    else:
        if train_targets.ndim != 2 or train_targets.shape[1] != num_grades:
            raise ValueError(f"student: teacher labels have {train_targets.shape[-1]} classes, the data has "
                             f"K={num_grades}")
        targets = torch.from_numpy(train_targets.astype(np.float32))
    set_threads()
    seed_everything(config.seed)
    x = torch.from_numpy(train_features.astype(np.float32))
    vx = torch.from_numpy(valid_features.astype(np.float32))
    vy = torch.from_numpy(np.asarray(valid_grades, dtype=np.int64))
    grades = torch.from_numpy(np.asarray(train_grades, dtype=np.int64)) if train_grades is not None else None

    model = StudentMLP(x.shape[1], num_grades, config.hidden, config.dropout)
    model.feature_mean.copy_(x.mean(0))
    model.feature_std.copy_(x.std(0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    generator = torch.Generator().manual_seed(config.seed)
    best_loss, best_state, stale, history = float("inf"), None, 0, []
    with progress_bar(transient=True) as bar:
        task = bar.add_task("student", total=config.epochs)
        for epoch in range(config.epochs):
            model.train()
            for index in torch.randperm(len(x), generator=generator).split(config.batch_size):
                logits = model(x[index])
                if human_only:
                    loss = nn.functional.cross_entropy(logits, targets[index])
                else:
                    loss = distillation_loss(logits, targets[index], config.temperature,
                                             grades[index] if grades is not None else None, config.ce_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()
            model.eval()
            with torch.no_grad():
                valid_logits = model(vx)
                valid_loss = nn.functional.cross_entropy(valid_logits, vy).item()
                valid_accuracy = (valid_logits.argmax(-1) == vy).float().mean().item()
            history.append({"epoch": epoch + 1, "valid_loss": valid_loss, "valid_accuracy": valid_accuracy})
            bar.update(task, advance=1, description=f"student epoch {epoch + 1} valid loss {valid_loss:.4f}")
            if valid_loss < best_loss - 1e-4:
                best_loss, stale = valid_loss, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= config.early_stopping_patience:
                    break
    model.load_state_dict(best_state)
    best = min(history, key=lambda h: h["valid_loss"])
    log(f"student ({'human labels' if human_only else 'distilled'}): best valid loss {best['valid_loss']:.4f}, "
        f"accuracy {best['valid_accuracy']:.3f} at epoch {best['epoch']}")
    metrics = {"best": best, "history": history}
    if config.calibration != "none":
        from relevance.calibration import fit_calibrator

        model.eval()
        with torch.no_grad():
            valid_probs = torch.softmax(model(vx), -1).numpy()
        calibrator = fit_calibrator(valid_probs, vy.numpy(), config.calibration)
        model.set_calibration(calibrator)
        metrics["calibration"] = calibrator.to_dict()
    return model.eval(), metrics
