"""The attribution target: probability (default) or log-probability of the gold token, fp32 softmax."""

from __future__ import annotations

import torch

from knrecall.errors import KnrecallError

TARGETS = ("prob", "logprob")


def target_values(logits: torch.Tensor, gold: int | torch.Tensor, target: str) -> torch.Tensor:
    """`logits` [rows, vocab] at the predicting position -> f per row, computed in float32. `gold` is one token id
    for every row, or a tensor [rows] of one id per row."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if isinstance(gold, torch.Tensor):
        logprobs = logprobs.gather(1, gold.to(logprobs.device)[:, None]).squeeze(1)
    else:
        logprobs = logprobs[:, gold]
    if target == "prob":
        return logprobs.exp()
    if target == "logprob":
        return logprobs
    raise KnrecallError(f"unknown attribution target '{target}' (known: {', '.join(TARGETS)})")
