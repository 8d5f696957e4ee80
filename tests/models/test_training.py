"""The training loop (relevance.models.training): evaluation cadence, early stopping at the right evaluation, the best
state restored, agreement between ranks, and a killed run resumed from its checkpoint."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from relevance.models.training import Hooks, LoopState, Schedule, train


class Scripted(Hooks):
    """A "model" whose state is the list of batches it trained on; the valid losses are scripted per evaluation."""

    def __init__(self, losses: list[float], batches_per_epoch: int = 3, agree_with=None):
        self.losses, self.batches_per_epoch, self.agree_with = list(losses), batches_per_epoch, agree_with
        self.seen: list[tuple[int, int]] = []
        self.restored = None
        self.events: list[str] = []

    def batches(self, epoch, start_batch):
        return [(epoch, b) for b in range(start_batch, self.batches_per_epoch)]

    def train_step(self, batch):
        self.seen.append(batch)
        return float(len(self.seen))

    def evaluate(self, state):
        self.events.append(f"evaluate@{state.step}")
        return {"step": state.step, "epoch": state.epoch + 1, "valid_loss": self.losses.pop(0)}

    def end_epoch(self, epoch):
        self.events.append(f"end_epoch {epoch}")

    def snapshot(self):
        return list(self.seen)

    def restore(self, snapshot):
        self.restored = snapshot

    def agree(self, flag):
        return flag if self.agree_with is None else self.agree_with


def test_early_stopping_stops_after_patience_evaluations_and_restores_the_best():
    hooks = Scripted([1.0, 0.8, 0.85, 0.79995, 0.9, 0.1])  # 0.79995 is not better by more than min_delta
    state = train(hooks, Schedule(epochs=10, patience=3))
    assert state.stopped and state.epoch == 5, "stops after the 5th epoch: 3 evaluations without improvement"
    assert [h["epoch"] for h in state.history] == [1, 2, 3, 4, 5]
    assert state.best["epoch"] == 2 and state.best["valid_loss"] == 0.8
    assert hooks.restored == [(e, b) for e in range(2) for b in range(3)], "the state after epoch 2 comes back"
    assert hooks.events[:2] == ["end_epoch 0", "evaluate@3"], "the epoch ends (its schedule steps) before it is judged"


def test_without_improvement_late_in_training_it_runs_every_epoch():
    hooks = Scripted([1.0, 0.9, 0.95, 0.97])
    state = train(hooks, Schedule(epochs=4, patience=2))
    assert not state.stopped and state.epoch == 4 and state.best["epoch"] == 2
    assert len(hooks.seen) == 12


def test_step_cadence_evaluates_every_n_steps_and_at_the_last_step():
    hooks = Scripted([1.0, 0.9, 0.8], batches_per_epoch=4)
    state = train(hooks, Schedule(epochs=2, patience=1, eval_every_steps=3, total_steps=8))
    assert [h["step"] for h in state.history] == [3, 6, 8]
    assert [h["epoch"] for h in state.history] == [1, 2, 2]
    assert state.best["step"] == 8 and not state.stopped


def test_step_cadence_stops_mid_epoch_but_not_at_the_last_step():
    hooks = Scripted([1.0, 1.5, 0.1], batches_per_epoch=4)
    state = train(hooks, Schedule(epochs=3, patience=1, eval_every_steps=3, total_steps=12))
    assert state.stopped and state.step == 6 and len(hooks.seen) == 6 and state.best["step"] == 3
    assert hooks.events == ["evaluate@3", "end_epoch 0", "evaluate@6"], "stopped in epoch 2, which never ends"
    hooks = Scripted([1.0, 1.5], batches_per_epoch=2)
    state = train(hooks, Schedule(epochs=2, patience=1, eval_every_steps=2, total_steps=4))
    assert not state.stopped, "no steps remain: the last evaluation is no early stop"


def test_rank_zeros_decision_is_everyones():
    """A rank whose own metric improved still takes rank 0's decision (here: never an improvement)."""
    hooks = Scripted([1.0, 0.5, 0.25], agree_with=False)
    state = train(hooks, Schedule(epochs=3, patience=2))
    assert state.stopped and state.best == {} and state.best_state is None and hooks.restored is None


class Interrupted(Exception):
    pass


class Checkpointed(Scripted):
    """Checkpoints (the trained batches and the loop state) every 2 batches and after every epoch; killed, if
    asked, after a given number of steps."""

    def __init__(self, kill_after: int | None = None, **options):
        super().__init__([1.0, 0.9, 0.95, 0.8, 0.85, 0.7], batches_per_epoch=5, **options)
        self.kill_after, self.saved = kill_after, None

    def evaluate(self, state):  # the valid loss follows the model, so a resumed run evaluates what it trained
        return {"epoch": state.epoch + 1, "valid_loss": [1.0, 0.9, 0.95, 0.8, 0.85, 0.7][len(self.seen) // 5 - 1]}

    def checkpoint(self, state):
        self.saved = {"seen": list(self.seen), "state": copy.deepcopy(state.to_dict())}

    def after_step(self, state, loss):
        if self.kill_after is not None and len(self.seen) == self.kill_after:
            raise Interrupted


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does():
    schedule = Schedule(epochs=6, patience=2, checkpoint_every_batches=2)
    whole = Checkpointed()
    reference = train(whole, schedule)
    killed = Checkpointed(kill_after=13)  # mid epoch 3, one batch after the checkpoint at its 2nd batch
    with pytest.raises(Interrupted):
        train(killed, schedule)
    assert killed.saved["state"]["epoch"] == 2 and killed.saved["state"]["batch"] == 2
    resumed = Checkpointed()
    resumed.seen = list(killed.saved["seen"])
    state = train(resumed, schedule, LoopState.from_dict(killed.saved["state"]))
    assert resumed.seen == whole.seen, "no batch lost, none seen twice"
    assert state.history == reference.history and state.best == reference.best
    assert resumed.restored == whole.restored and state.stopped == reference.stopped


def test_a_finished_checkpoint_resumes_to_its_end_without_training():
    hooks = Scripted([1.0, 1.1])
    saved = LoopState(epoch=2, batch=0, step=6, best={"valid_loss": 1.0, "epoch": 1}, best_state=["snapshot"],
                      stale=2, history=[{"valid_loss": 1.0}, {"valid_loss": 1.1}])
    state = train(hooks, Schedule(epochs=5, patience=2), LoopState.from_dict(saved.to_dict()))
    assert state.stopped and hooks.seen == [] and hooks.restored == ["snapshot"]


def test_a_checkpoint_of_the_students_loop_before_this_one_still_loads():
    old = {"epoch": 1, "batch": 4, "best_loss": 0.5, "best_state": {"w": torch.zeros(2)}, "stale": 0,
           "history": [{"epoch": 1, "valid_loss": 0.5, "valid_accuracy": 0.7}]}
    state = LoopState.from_dict(old)
    assert (state.epoch, state.batch, state.step, state.stale) == (1, 4, 0, 0)
    assert state.best_value("valid_loss") == 0.5 and state.to_dict()["best_loss"] == 0.5
    fresh = LoopState.from_dict({**old, "best_loss": float("inf"), "best_state": None})
    assert fresh.best == {} and fresh.best_value("valid_loss") == float("inf")


def test_the_student_resumes_a_killed_fit_bit_for_bit(tmp_path):
    """The student's hooks (relevance.student.model): killed mid-epoch, resumed from the checkpoint, the weights
    equal those of an uninterrupted fit."""
    from relevance.config import StudentConfig
    from relevance.student.model import ArrayBatches, fit_student

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    probs = np.full((300, 3), 1 / 3, np.float32)
    probs[np.arange(300), (x[:, 0] > 0).astype(int)] += 0.5
    probs /= probs.sum(1, keepdims=True)
    config = StudentConfig(hidden=[8], epochs=4, batch_size=32, dropout=0.1, early_stopping_patience=4)
    batches = ArrayBatches(x[:250], probs[:250], None, config.batch_size, config.seed)

    def kill(epoch, batch):
        if epoch == 1 and batch == 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        fit_student(batches, x[250:], probs[250:].argmax(1), 3, config, log=lambda _: None,
                    checkpoint=tmp_path / "ckpt.pt", checkpoint_every=4, on_batch=kill)
    messages: list[str] = []
    resumed, metrics = fit_student(batches, x[250:], probs[250:].argmax(1), 3, config, log=messages.append,
                                   checkpoint=tmp_path / "ckpt.pt", checkpoint_every=4)
    assert any("resuming" in m and "epoch 2, batch 4" in m for m in messages), messages
    whole, whole_metrics = fit_student(batches, x[250:], probs[250:].argmax(1), 3, config, log=lambda _: None)
    assert metrics == whole_metrics
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_schedule_that_would_train_nothing_is_refused():
    import pytest

    from relevance.models.training import Schedule

    with pytest.raises(ValueError, match="Schedule.patience: expected at least 1, got 0"):
        Schedule(epochs=3, patience=0)
    with pytest.raises(ValueError, match="Schedule.epochs"):
        Schedule(epochs=0, patience=2)


class KilledInEvaluation(Checkpointed):
    """Evaluates every 3 steps; killed, if asked, while evaluating a given step."""

    def __init__(self, kill_in_evaluation_at: int | None = None):
        super().__init__()
        self.kill_at = kill_in_evaluation_at

    def evaluate(self, state):
        if state.step == self.kill_at:
            raise Interrupted
        return {"step": state.step, "valid_loss": 1.0 / state.step}


def test_a_checkpoint_due_at_an_evaluation_is_written_after_it():
    """Killed while evaluating step 6, a run resumes from the checkpoint at the end of epoch 1 (step 5), not from
    one written before step 6 was evaluated (which would skip that evaluation), and evaluates every step an
    uninterrupted run does."""
    schedule = Schedule(epochs=2, patience=5, eval_every_steps=3, total_steps=10, checkpoint_every_batches=1)
    whole = KilledInEvaluation()
    reference = train(whole, schedule)
    killed = KilledInEvaluation(kill_in_evaluation_at=6)
    with pytest.raises(Interrupted):
        train(killed, schedule)
    assert killed.saved["state"]["step"] == 5, "a checkpoint is due at every step, but step 6's comes after its evaluation"
    resumed = KilledInEvaluation()
    resumed.seen = list(killed.saved["seen"])
    state = train(resumed, schedule, LoopState.from_dict(killed.saved["state"]))
    assert [h["step"] for h in state.history] == [h["step"] for h in reference.history] == [3, 6, 9, 10]
    assert resumed.seen == whole.seen
