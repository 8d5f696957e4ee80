"""One training loop for every model that trains by gradient steps (the teacher, the student): epochs of batches,
evaluation at a cadence, early stopping on a validation metric, a snapshot of the best state restored at the end,
and checkpoints from which a killed run resumes.

What is trained, and how, comes from a :class:`Hooks` object: its batches, its optimiser step, its evaluation,
how to snapshot and restore its state. A distributed run (relevance.models.distributed) plugs in through the same
hooks: the step trains this rank's share of a global batch, the evaluation sums over ranks, and
:meth:`Hooks.agree` makes every decision (keep this state, stop) rank 0's.

The loop draws nothing at random itself: the order of every random draw is the hooks'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Schedule:
    """How long to train, when to evaluate and when to give up.

    ``eval_every_steps``: evaluate after every that many optimiser steps, and after the last one
    (``total_steps``); None evaluates at the end of every epoch instead. Training stops early once
    ``patience`` evaluations in a row have not lowered ``metric`` by more than ``min_delta``, unless it was
    about to end anyway. ``checkpoint_every_batches``: also checkpoint every that many batches of an epoch."""

    epochs: int
    patience: int
    metric: str = "valid_loss"
    min_delta: float = 1e-4
    eval_every_steps: int | None = None
    total_steps: int | None = None
    checkpoint_every_batches: int | None = None

    def __post_init__(self) -> None:
        # A patience of 0 would stop before the first batch: refused here, not only by the configs that build one.
        for name in ("epochs", "patience", "eval_every_steps", "total_steps", "checkpoint_every_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Schedule.{name}: expected at least 1, got {value}")

    def evaluates_after(self, step: int) -> bool:
        return self.eval_every_steps is not None and (step % self.eval_every_steps == 0 or step == self.total_steps)

    def remains(self, state: "LoopState") -> bool:
        """Whether training would go on after this evaluation (an early stop at the very end is no stop)."""
        if self.total_steps is not None:
            return state.step < self.total_steps
        return self.eval_every_steps is not None or state.epoch + 1 < self.epochs


@dataclass
class LoopState:
    """Where training is: what a checkpoint records besides the model and its optimiser.

    ``epoch``: epochs finished; ``batch``: batches done in the current epoch; ``step``: optimiser steps in all;
    ``best``: the best evaluation so far; ``best_state``: the snapshot taken at it; ``stale``: evaluations since."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: dict = field(default_factory=dict)
    best_state: Any = None
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    stopped: bool = False  # stopped early (not recorded: a resumed run works it out from ``stale``)

    def best_value(self, metric: str) -> float:
        return self.best.get(metric, float("inf"))

    def to_dict(self, metric: str = "valid_loss") -> dict:
        """Plain values and tensors (torch.load(weights_only=True) reads them back without running code)."""
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "best": self.best,
                "best_loss": self.best_value(metric), "best_state": self.best_state, "stale": self.stale,
                "history": self.history}

    @classmethod
    def from_dict(cls, saved: dict, metric: str = "valid_loss") -> "LoopState":
        """A state :meth:`to_dict` wrote, or a checkpoint of the student's loop before this one (no ``step``,
        ``best`` only as ``best_loss``)."""
        best = saved.get("best") or ({metric: saved["best_loss"]} if saved.get("best_loss", float("inf"))
                                     != float("inf") else {})
        return cls(epoch=saved["epoch"], batch=saved["batch"], step=saved.get("step", 0), best=best,
                   best_state=saved["best_state"], stale=saved["stale"], history=saved["history"])


class Hooks:
    """What the loop trains. :meth:`batches`, :meth:`train_step` and :meth:`evaluate` are required; the others
    default to doing nothing (or, for :meth:`agree`, to the flag itself: one process)."""

    def batches(self, epoch: int, start_batch: int) -> Iterable:
        """Epoch ``epoch``'s batches (0-based), from its ``start_batch``-th on (a resumed run)."""
        raise NotImplementedError

    def train_step(self, batch) -> Any:
        """One optimiser step on ``batch``; returns its loss (handed to :meth:`after_step`)."""
        raise NotImplementedError

    def evaluate(self, state: LoopState) -> dict:
        """The evaluation recorded in the history, with the schedule's metric among its keys."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """The state to keep when the metric improves (None: nothing to keep on this rank)."""
        return None

    def restore(self, snapshot: Any) -> None:
        """Put the best snapshot back at the end."""

    def start_epoch(self, epoch: int) -> None:
        pass

    def end_epoch(self, epoch: int) -> None:
        """After the epoch's last batch, before an end-of-epoch evaluation (e.g. a per-epoch LR schedule)."""

    def after_step(self, state: LoopState, loss) -> None:
        """After each optimiser step (and its checkpoint, if one was due and the step is not evaluated: then the
        checkpoint follows the evaluation): progress, callbacks."""

    def after_evaluation(self, state: LoopState, result: dict) -> None:
        """After each evaluation is recorded, before the early-stopping decision: logging."""

    def agree(self, flag: bool) -> bool:
        """The decision every process takes (rank 0's, in a distributed run)."""
        return flag

    def checkpoint(self, state: LoopState) -> None:
        """Save what a resumed run needs (called every ``checkpoint_every_batches``, after every evaluation at the
        ``eval_every_steps`` cadence, and after every epoch)."""


def train(hooks: Hooks, schedule: Schedule, state: LoopState | None = None) -> LoopState:
    """Run ``hooks`` through ``schedule`` from ``state`` (a fresh start by default, or a checkpoint's), restore
    the best snapshot, and return the final state (its history, best evaluation, and whether it stopped early)."""
    state = state or LoopState()
    state.stopped = state.stale >= schedule.patience and schedule.remains(state)
    while state.epoch < schedule.epochs and not state.stopped:
        epoch = state.epoch
        hooks.start_epoch(epoch)
        for batch in hooks.batches(epoch, state.batch):
            loss = hooks.train_step(batch)
            state.batch += 1
            state.step += 1
            evaluates = schedule.evaluates_after(state.step)
            # A checkpoint due at an evaluation's step is written after it: one written before would make a run
            # killed during the evaluation resume past it, and never evaluate that step.
            if (schedule.checkpoint_every_batches and state.batch % schedule.checkpoint_every_batches == 0
                    and not evaluates):
                hooks.checkpoint(state)
            hooks.after_step(state, loss)
            if evaluates:
                stop = _evaluate(hooks, schedule, state)
                hooks.checkpoint(state)
                if stop:
                    break
        if state.stopped:
            break
        hooks.end_epoch(epoch)
        if schedule.eval_every_steps is None:
            _evaluate(hooks, schedule, state)
        state.epoch, state.batch = epoch + 1, 0
        hooks.checkpoint(state)
    if state.best_state is not None:
        hooks.restore(state.best_state)
    return state


def _evaluate(hooks: Hooks, schedule: Schedule, state: LoopState) -> bool:
    """Evaluate, record, keep the state if it is the best so far; returns whether training stops here."""
    result = hooks.evaluate(state)
    state.history.append(result)
    hooks.after_evaluation(state, result)
    if hooks.agree(result[schedule.metric] < state.best_value(schedule.metric) - schedule.min_delta):
        state.best, state.stale = result, 0
        state.best_state = hooks.snapshot()
    else:
        state.stale += 1
        state.stopped = state.stale >= schedule.patience and schedule.remains(state)
    return state.stopped


def save_checkpoint(path: Path, key: str, state: LoopState, parts: dict[str, Any], cuda: bool = False) -> None:
    """Write a checkpoint atomically: ``key`` (what was trained, from what: a resumed run must match it), the
    loop's state, torch's random state (dropout; the GPU's too when ``cuda``) and each of ``parts`` (an object with
    ``state_dict()``: model, optimiser, schedule; or plain values)."""
    import torch

    from relevance.common.files import atomic_write

    payload = {"key": key, "state": state.to_dict(), "torch_rng": torch.get_rng_state(),
               "cuda_rng": torch.cuda.get_rng_state_all() if cuda else []}
    payload.update({name: part.state_dict() if hasattr(part, "state_dict") else part for name, part in parts.items()})
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | None, key: str, parts: dict[str, Any], log: Callable[[str], None], what: str,
                    device=None) -> LoopState:
    """The state :func:`save_checkpoint` wrote at ``path``, with ``parts`` (objects with ``load_state_dict``, or
    callables taking the saved value) and the random state restored; a fresh state when there is no checkpoint or
    it was written for another ``key``."""
    import torch

    if path is None or not Path(path).exists():
        return LoopState()
    saved = torch.load(path, weights_only=True, map_location=device)  # tensors, numbers, strings: no code runs
    if saved.get("key") != key:
        log(f"{what}: {path} is of other inputs or settings; starting afresh")
        return LoopState()
    for name, part in parts.items():
        (part.load_state_dict if hasattr(part, "load_state_dict") else part)(saved[name])
    torch.set_rng_state(saved["torch_rng"].cpu())
    if saved.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng.cpu() for rng in saved["cuda_rng"]])
    state = LoopState.from_dict(saved["state"])
    log(f"{what}: resuming from {path} at epoch {state.epoch + 1}, batch {state.batch}")
    return state
