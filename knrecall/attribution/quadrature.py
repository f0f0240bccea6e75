"""Quadrature rules for the IG path integral over α ∈ [0, 1]: nodes and weights that sum to 1.

`gauss_legendre` (default) is exact for polynomials of degree 2m−1; `midpoint`, `left`, `right` are Riemann sums
(`left`/`right` as Dai et al.); `linspace` is m evenly spaced nodes including both ends with equal weights
(EleutherAI's knowledge-neurons). One step is not integrated gradients, so m ≥ 2.
"""

from __future__ import annotations

import torch

from knrecall.errors import KnrecallError

RULES = ("gauss_legendre", "midpoint", "left", "right", "linspace")


def gauss_legendre(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Golub–Welsch: nodes are the eigenvalues of the Jacobi matrix, weights the squared first eigenvector entries."""
    k = torch.arange(1, steps, dtype=torch.float64)
    off = k / torch.sqrt(4 * k * k - 1)
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    weights = 2 * vectors[0] ** 2
    return (nodes + 1) / 2, weights / 2


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights), float64, shape [steps]; weights sum to 1."""
    if steps < 2:
        raise KnrecallError(f"IG steps must be at least 2 (got {steps}); one step is not integrated gradients")
    m = steps
    k = torch.arange(m, dtype=torch.float64)
    if rule == "gauss_legendre":
        return gauss_legendre(m)
    if rule == "midpoint":
        alphas = (k + 0.5) / m
    elif rule == "left":
        alphas = k / m
    elif rule == "right":
        alphas = (k + 1) / m
    elif rule == "linspace":
        alphas = torch.linspace(0, 1, m, dtype=torch.float64)
    else:
        raise KnrecallError(f"unknown quadrature rule '{rule}' (known: {', '.join(RULES)})")
    return alphas, torch.full((m,), 1.0 / m, dtype=torch.float64)
