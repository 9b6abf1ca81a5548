"""Matrix-Based Entropy (MBE) of hidden representations (docs/algorithm.md §2-3).

For Z (n rows = token vectors, D columns), K = Z Zᵀ and P = K / tr K. MBE_α is the Rényi entropy of
P's eigenvalues, in nats. The training path uses α = 2, which needs no eigendecomposition:

    MBE₂(Z) = log((tr K)² / ‖K‖_F²) = 2·log ‖Z‖_F² − log ‖ZᵀZ‖_F²

Everything here is pure tensor math (no torch.distributed); sharded forms live in ``distributed.py``.
All functions compute in float32 (float64 inputs stay float64), whatever the input dtype.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

EPS = 1e-12  # guards log(0) for all-zero inputs, whose entropy is defined as 0

TailPolicy = Literal["error", "drop"]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _renyi2_from_trace_and_frob(trace: torch.Tensor, frob_sq: torch.Tensor) -> torch.Tensor:
    """α = 2 entropy from tr K and ‖K‖_F²: log(tr² / ‖K‖²), ε-guarded and clamped at ≥ 0."""
    return (2.0 * torch.log(trace + EPS) - torch.log(frob_sq + EPS * EPS)).clamp_min(0.0)


def matrix_entropy(z: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Rényi MBE of one 2-D matrix ``z`` (rows = token vectors), in nats, as a 0-dim tensor.

    ``alpha == 2`` uses the closed form (differentiable, no eigendecomposition); any other ``alpha > 0``
    uses the eigenvalues of the smaller Gram matrix, and ``alpha == 1`` is the von Neumann entropy
    ``-Σ λ log λ``. An all-zero matrix has entropy 0.
    """
    if z.dim() != 2:
        raise ValueError(f"matrix_entropy expects a 2-D matrix (rows = tokens), got shape {tuple(z.shape)}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    # α ≠ 2 is for analysis: float64 eigenvalues, since α < 1 amplifies float32 round-off of zero ones.
    out_dtype = _compute_dtype(z)
    z = z.to(out_dtype if alpha == 2.0 else torch.float64)
    gram = z.T @ z if z.shape[1] <= z.shape[0] else z @ z.T
    trace = torch.diagonal(gram).sum()
    if alpha == 2.0:
        return _renyi2_from_trace_and_frob(trace, gram.square().sum())
    if trace <= 0:
        return trace.new_zeros((), dtype=out_dtype)
    eig = torch.linalg.eigvalsh(gram / trace).clamp_min(0.0)
    if alpha == 1.0:
        eig = eig[eig > 0]
        out = -(eig * eig.log()).sum()
    else:
        out = (torch.log(eig.pow(alpha).sum()) / (1.0 - alpha)).clamp_min(0.0)
    return out.to(out_dtype)


def _windows(hidden: torch.Tensor, patch_size: int, tail: TailPolicy) -> torch.Tensor:
    """(B, S, D) -> (B·⌊S/P⌋, P, D) non-overlapping windows that never cross sequences."""
    if hidden.dim() != 3:
        raise ValueError(f"expected hidden states of shape (batch, seq, dim), got {tuple(hidden.shape)}")
    if patch_size < 2:
        raise ValueError(f"patch_size must be >= 2 (a 1-token window always has MBE 0), got {patch_size}")
    b, s, d = hidden.shape
    n = s // patch_size
    if s % patch_size:
        if tail == "error":
            raise ValueError(
                f"sequence length {s} is not divisible by patch_size {patch_size}; "
                f"use a multiple of {patch_size} or tail='drop' (drops the last {s % patch_size} tokens)"
            )
        if tail != "drop":
            raise ValueError(f"tail must be 'error' or 'drop', got {tail!r}")
    if n == 0:
        raise ValueError(f"sequence length {s} is shorter than patch_size {patch_size}: no window to measure")
    return hidden[:, : n * patch_size].reshape(b * n, patch_size, d)


class _WindowRenyi2(torch.autograd.Function):
    """α = 2 MBE of (N, P, D) windows via the P×P Grams, with the analytic gradient
    ∂/∂W = (4/t)·W − (4/s)·K·W (one batched matmul, instead of autograd's two transposed ones)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        k = torch.bmm(w, w.transpose(1, 2))
        t = torch.diagonal(k, dim1=1, dim2=2).sum(-1) + EPS
        s = k.square().sum((1, 2)) + EPS * EPS
        raw = 2.0 * torch.log(t) - torch.log(s)
        ctx.save_for_backward(w, k, t, s, raw > 0)
        return raw.clamp_min(0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        w, k, t, s, active = ctx.saved_tensors
        g = grad * active
        a = (4.0 * g / t).view(-1, 1, 1)
        b = (4.0 * g / s).view(-1, 1, 1)
        return torch.baddbmm(w * a, k * b, w, alpha=-1.0)


def patch_mbe_per_window(hidden: torch.Tensor, patch_size: int = 8, tail: TailPolicy = "error") -> torch.Tensor:
    """α = 2 MBE of every window of ``patch_size`` consecutive tokens: (B, S, D) -> (B·⌊S/P⌋,) float32.

    Uses the P×P Gram when P ≤ D (the usual case), else the D×D one; both give the same value.
    ``tail="drop"`` ignores the last S mod P tokens of each sequence instead of raising.
    """
    w = _windows(hidden, patch_size, tail).to(_compute_dtype(hidden))
    if patch_size <= w.shape[2]:
        return _WindowRenyi2.apply(w)
    gram = w.transpose(1, 2) @ w
    trace = torch.diagonal(gram, dim1=1, dim2=2).sum(-1)
    return _renyi2_from_trace_and_frob(trace, gram.square().sum((1, 2)))


def patch_mbe(hidden: torch.Tensor, patch_size: int = 8, tail: TailPolicy = "error") -> torch.Tensor:
    """Mean α = 2 MBE over all windows of a (B, S, D) tensor (0-dim float32 tensor, differentiable)."""
    return patch_mbe_per_window(hidden, patch_size, tail).mean()


def gram(z: torch.Tensor) -> torch.Tensor:
    """D×D Gram ZᵀZ (float32) of token vectors; ``z`` is (..., D) and all leading dims are tokens."""
    z = z.reshape(-1, z.shape[-1]).to(_compute_dtype(z))
    return z.T @ z


def global_mbe(z: torch.Tensor) -> torch.Tensor:
    """α = 2 MBE over all tokens of ``z`` (..., D) at once, from the D×D Gram (the form that shards)."""
    g = gram(z)
    return _renyi2_from_trace_and_frob(torch.diagonal(g).sum(), g.square().sum())


def mbe_from_gram(g: torch.Tensor) -> torch.Tensor:
    """α = 2 MBE from an (all-reduced) D×D Gram matrix G = Σ_r Z_rᵀ Z_r."""
    return _renyi2_from_trace_and_frob(torch.diagonal(g).sum(), g.square().sum())


def global_mbe_surrogate(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Loss whose gradient w.r.t. this shard ``z`` equals ∂MBE₂(G)/∂z, with G = Σ shards' Grams.

    ``g`` is the full (all-reduced, detached) Gram. With t = tr G and s = ‖G‖_F², the gradient of
    (2/t)·‖Z‖_F² − (2/s)·tr(Z G Zᵀ) is (4/t)·Z − (4/s)·Z·G, the exact shard gradient (docs/algorithm.md §3).
    Its value is meaningless: pair it with ``mbe_from_gram`` via ``value + (sur - sur.detach())``.
    """
    z = z.reshape(-1, z.shape[-1]).to(_compute_dtype(z))
    g = g.detach()
    t = torch.diagonal(g).sum() + EPS
    s = g.square().sum() + EPS * EPS
    return (2.0 / t) * z.square().sum() - (2.0 / s) * ((z @ g) * z).sum()
