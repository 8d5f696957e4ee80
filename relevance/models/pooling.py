"""Reducing a transformer's hidden states [B, L, H] to one vector per row: what the teacher's head and the student's encoder read."""

from __future__ import annotations

import torch


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce [B, L, H] hidden states to [B, H]. Works with left or right padding."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if mode == "last":
        length = attention_mask.shape[1]
        # Index of the last 1 in each row: found from the right, so it is right for either padding side.
        last = length - 1 - attention_mask.flip(dims=[1]).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}; expected cls, mean or last")
