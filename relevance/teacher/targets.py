"""What the teacher is fine-tuned towards: the targets of judged pairs (one-hot, or the raters' mean score
two-hot on the grade axis), class weights, and the loss (cross-entropy plus the expected grade's squared error)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from relevance.config import TeacherConfig


def class_weights(config: TeacherConfig, grades: np.ndarray, num_grades: int) -> torch.Tensor | None:
    """The cross-entropy's per-grade weights (``teacher.class_weights``): none, balanced on ``grades``, or given."""
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


def pair_loss(logits: torch.Tensor, target: torch.Tensor, grade_values: torch.Tensor, mse_weight: float,
              reduction: str = "mean", weight: torch.Tensor | None = None, label_smoothing: float = 0.0
              ) -> torch.Tensor:
    """The teacher's loss on a batch: cross-entropy against the target distribution (class-``weight``ed and
    smoothed in training; plain on valid), plus ``mse_weight`` × the squared error of the expected grade
    (``grade_values`` = 0..K−1). ``reduction`` "mean" or "sum" applies to both terms."""
    loss = nn.functional.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing,
                                       reduction=reduction)
    if mse_weight > 0:
        expected = torch.softmax(logits, -1) @ grade_values
        loss = loss + mse_weight * nn.functional.mse_loss(expected, target @ grade_values, reduction=reduction)
    return loss
