"""The attribution target: probability (default) or log-probability of the gold token, fp32 softmax."""

from __future__ import annotations

import torch

from knrecall.errors import KnrecallError

TARGETS = ("prob", "logprob")


def target_values(logits: torch.Tensor, gold: int, target: str) -> torch.Tensor:
    """`logits` [rows, vocab] at the predicting position -> f per row, computed in float32."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)[:, gold]
    if target == "prob":
        return logprobs.exp()
    if target == "logprob":
        return logprobs
    raise KnrecallError(f"unknown attribution target '{target}' (known: {', '.join(TARGETS)})")
