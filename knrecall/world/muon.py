"""Muon (Jordan et al. 2024, https://kellerjordan.github.io/posts/muon/): SGD momentum whose update of each 2-D weight
matrix is orthogonalised by a Newton–Schulz iteration, for the world model's decoder matrices.

The same algorithm as `torch.optim.Muon` (Nesterov momentum 0.95, the quintic iteration's coefficients, 5 steps,
decoupled weight decay, the learning rate scaled by 0.2·sqrt(max(rows, cols)) so that one rate suits Muon and AdamW
alike, Moonlight's "match_rms_adamw"), with one difference: the iteration runs in float32 instead of bfloat16.
bfloat16 matrix multiplies are fast only on CPUs with bf16 units (AMX, AVX512-BF16); elsewhere they are emulated and
several times slower, and float32 gives the same result on every CPU kind to float rounding.

Why Muon here: the world model must memorise ~900 facts (associations between rare name tokens and entities), and
Muon learns such associative memories in far fewer steps than AdamW (measured: benchmarks/training.py).
"""

from __future__ import annotations

import math

import torch

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrices: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """≈ U·Vᵀ of the SVD U·S·Vᵀ of each matrix of the batch `matrices` [n, rows, cols] (singular values pushed to
    ~[0.5, 1.5]), in float32; one batched multiply per step for all n."""
    a, b, c = COEFFICIENTS
    x = matrices.float()
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if transposed else x).to(matrices.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters (weight matrices); use AdamW for embeddings, norms and biases."""

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.1, ns_steps: int = 5):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "ns_steps": ns_steps})
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.ndim != 2:
                    raise ValueError(f"Muon takes 2-D weight matrices only, got a parameter of shape "
                                     f"{tuple(parameter.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad = parameter.grad
                buffer = self.state[parameter].setdefault("momentum", torch.zeros_like(grad))
                buffer.lerp_(grad, 1 - momentum)
                by_shape.setdefault(parameter.shape, []).append((parameter, grad.lerp(buffer, momentum)))  # Nesterov
            for shape, pairs in by_shape.items():  # matrices of one shape are orthogonalised together
                updates = orthogonalize(torch.stack([update for _, update in pairs]), group["ns_steps"])
                for (parameter, _), update in zip(pairs, updates):
                    parameter.mul_(1 - lr * group["weight_decay"])
                    parameter.add_(update, alpha=-lr * 0.2 * math.sqrt(max(shape)))
        return None
