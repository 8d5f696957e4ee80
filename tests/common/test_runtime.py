"""relevance.common.runtime: precision resolution and seeding, which every training loop's determinism rests on."""

from __future__ import annotations

import numpy as np
import torch

from relevance.common.runtime import autocast, bf16_supported, resolve_precision, seed_everything


def test_auto_precision_is_fp32_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setenv("RELEVANCE_CPU_BF16", "0")
    cpu = torch.device("cpu")
    assert not bf16_supported(cpu)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("fp32", cpu) == "fp32"


def test_bf16_autocast_is_bf16_and_fp32_is_untouched():
    cpu = torch.device("cpu")
    a = torch.randn(4, 4)
    with autocast("bf16", cpu):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("fp32", cpu):
        assert (a @ a).dtype == torch.float32


def test_seed_everything_repeats_numpy_and_torch_draws():
    seed_everything(7)
    first = (np.random.rand(3), torch.rand(3))
    seed_everything(7)
    again = (np.random.rand(3), torch.rand(3))
    assert np.array_equal(first[0], again[0]) and torch.equal(first[1], again[1])
