"""Calibration of grade probabilities, and how far from calibrated they are.

A calibrator maps K probabilities p to softmax(a ⊙ log p + b), fitted on the valid split by negative
log-likelihood:

- ``temperature``: a = 1/T for every grade, b = 0 (Guo et al., 2017, "On Calibration of Modern Neural Networks").
  On a softmax model it is exactly softmax(z / T) of its logits z, so it never changes the argmax: accuracy stays.
- ``vector``: a and b per grade (ibid.; on log-probabilities it is Dirichlet calibration with a diagonal matrix,
  Kull et al., 2019, "Beyond temperature scaling"), with a small L2 pull towards the identity map.

Working on log-probabilities makes one calibrator fit any model that outputs probabilities (the teacher, the
student, a GBDT, a soft-label table) and apply it inside an exported graph.

Errors (lower is better), with equal-width bins:

- top-label ECE: |confidence − accuracy| of the predicted grade, weighted by bin size (Naeini et al., 2015;
  Guo et al., 2017);
- K-class (classwise) ECE: the same for every grade's probability against "is this grade", averaged over grades
  (Kull et al., 2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METHODS = ("none", "temperature", "vector")
DEFAULT_BINS = 15
_FLOOR = 1e-7  # log of a zero probability


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _FLOOR, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class Calibrator:
    """softmax(scale ⊙ log p + bias); the identity when scale is all ones and bias all zeros."""

    method: str = "none"
    scale: list[float] = field(default_factory=list)
    bias: list[float] = field(default_factory=list)
    fitted_on: dict = field(default_factory=dict)  # what it was fitted on, and NLL/ECE before and after

    @classmethod
    def identity(cls, num_grades: int) -> "Calibrator":
        return cls("none", [1.0] * num_grades, [0.0] * num_grades)

    @property
    def temperature(self) -> float | None:
        """1/a for temperature scaling (None for the other methods)."""
        return 1.0 / self.scale[0] if self.method == "temperature" else None

    def apply(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs)
        if self.method == "none":
            return probs
        if probs.ndim != 2 or probs.shape[1] != len(self.scale):
            raise ValueError(f"calibrator: expected probabilities of shape [N, {len(self.scale)}], got "
                             f"{list(probs.shape)}")
        logits = _log(probs) * np.asarray(self.scale) + np.asarray(self.bias)
        return _softmax(logits).astype(probs.dtype if probs.dtype.kind == "f" else np.float32)

    def to_dict(self) -> dict:
        return {"method": self.method, "scale": [float(v) for v in self.scale],
                "bias": [float(v) for v in self.bias], "temperature": self.temperature, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, value: dict | None, num_grades: int) -> "Calibrator":
        if not value:
            return cls.identity(num_grades)
        if value.get("method") not in METHODS:
            raise ValueError(f"calibration.method: expected one of {METHODS}, got {value.get('method')!r}")
        scale, bias = list(value.get("scale") or []), list(value.get("bias") or [])
        if len(scale) != num_grades or len(bias) != num_grades:
            raise ValueError(f"calibration: expected {num_grades} scales and biases, got {len(scale)} and "
                             f"{len(bias)}")
        return cls(value["method"], scale, bias, value.get("fitted_on", {}))


def negative_log_likelihood(probs: np.ndarray, grades: np.ndarray) -> float:
    grades = np.asarray(grades, dtype=np.int64)
    return float(-_log(np.asarray(probs)[np.arange(len(grades)), grades]).mean())


def _nll_and_grad(params: np.ndarray, log_p: np.ndarray, onehot: np.ndarray, l2: float, vector: bool):
    k = log_p.shape[1]
    scale, bias = (params[:k], params[k:]) if vector else (np.full(k, params[0]), np.zeros(k))
    probs = _softmax(log_p * scale + bias)
    n = len(log_p)
    loss = -np.sum(onehot * np.log(np.clip(probs, 1e-12, 1.0))) / n
    residual = (probs - onehot) / n  # d loss / d logits
    grad_scale = np.sum(residual * log_p, axis=0)
    if not vector:
        return loss, np.array([grad_scale.sum()])
    loss += l2 * (np.sum((scale - 1) ** 2) + np.sum(bias ** 2))
    return loss, np.concatenate([grad_scale + 2 * l2 * (scale - 1), residual.sum(axis=0) + 2 * l2 * bias])


def fit_calibrator(probs: np.ndarray, grades: np.ndarray, method: str, l2: float = 1e-3) -> Calibrator:
    """The calibrator of ``method`` that minimises NLL of ``grades`` (ints in 0..K-1) under ``probs`` [N, K]."""
    from scipy.optimize import minimize

    probs = np.asarray(probs, dtype=np.float64)
    grades = np.asarray(grades, dtype=np.int64)
    if method not in METHODS:
        raise ValueError(f"calibration: expected one of {METHODS}, got {method!r}")
    if probs.ndim != 2 or len(probs) != len(grades) or len(probs) == 0:
        raise ValueError(f"calibration: expected probabilities [N, K] and N grades (N > 0), got {list(probs.shape)} "
                         f"and {len(grades)}")
    k = probs.shape[1]
    if grades.min() < 0 or grades.max() >= k:
        raise ValueError(f"calibration: grades must lie in 0..{k - 1}, got {grades.min()}..{grades.max()}")
    if method == "none":
        return Calibrator.identity(k)
    log_p, onehot = _log(probs), np.eye(k)[grades]
    vector = method == "vector"
    start = np.concatenate([np.ones(k), np.zeros(k)]) if vector else np.ones(1)
    bounds = [(1e-3, 1e3)] * (k if vector else 1) + ([(None, None)] * k if vector else [])
    result = minimize(_nll_and_grad, start, args=(log_p, onehot, l2, vector), jac=True, method="L-BFGS-B",
                      bounds=bounds)
    scale = result.x[:k] if vector else np.full(k, result.x[0])
    bias = result.x[k:] if vector else np.zeros(k)
    calibrator = Calibrator(method, scale.tolist(), bias.tolist())
    after = calibrator.apply(probs)
    calibrator.fitted_on = {
        "pairs": int(len(grades)),
        "nll_before": negative_log_likelihood(probs, grades), "nll_after": negative_log_likelihood(after, grades),
        "ece_top_before": ece_top_label(probs, grades), "ece_top_after": ece_top_label(after, grades),
        "ece_classwise_before": ece_classwise(probs, grades), "ece_classwise_after": ece_classwise(after, grades),
    }
    return calibrator


def _bin_gap(confidence: np.ndarray, hit: np.ndarray, bins: int) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            total += in_bin.sum() * abs(confidence[in_bin].mean() - hit[in_bin].mean())
    return float(total / max(len(confidence), 1))


def ece_top_label(probs: np.ndarray, grades: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    return _bin_gap(probs.max(axis=1), (predicted == np.asarray(grades)).astype(np.float64), bins)


def ece_classwise(probs: np.ndarray, grades: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    grades = np.asarray(grades)
    return float(np.mean([_bin_gap(probs[:, k], (grades == k).astype(np.float64), bins)
                          for k in range(probs.shape[1])]))


def reliability_curve(probs: np.ndarray, grades: np.ndarray, bins: int = DEFAULT_BINS) -> dict[str, list]:
    """Top-label reliability: per non-empty bin, mean confidence, accuracy and count."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, hit = probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(grades)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    curve = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            curve["confidence"].append(float(confidence[in_bin].mean()))
            curve["accuracy"].append(float(hit[in_bin].mean()))
            curve["count"].append(int(in_bin.sum()))
    return curve


def plot_reliability(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: str | Path,
                     bins: int = DEFAULT_BINS, columns: int | None = None) -> Path:
    """One panel per key of ``panels`` (e.g. a model, or a locale), ``columns`` to a row, each drawing its curves
    {label: (probs, grades)} against the diagonal, with the top-label ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns or len(panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.axis("off")
    for axis, (title, curves) in zip(axes.flat, panels.items()):
        axis.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        for label, (probs, grades) in curves.items():
            curve = reliability_curve(probs, grades, bins)
            axis.plot(curve["confidence"], curve["accuracy"], "o-", ms=3,
                      label=f"{label} (ECE {ece_top_label(probs, grades, bins):.3f})")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("confidence (top grade)")
        axis.set_ylabel("accuracy")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path
