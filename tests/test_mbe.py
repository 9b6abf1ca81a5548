"""MBE estimators against an independent numpy float64 eigendecomposition reference."""

import math

import numpy as np
import pytest
import torch

from gapt_ds.mbe import (
    global_mbe,
    global_mbe_surrogate,
    gram,
    matrix_entropy,
    mbe_from_gram,
    patch_mbe,
    patch_mbe_per_window,
)


def reference_entropy(z: np.ndarray, alpha: float) -> float:
    """Rényi entropy of eig(ZZᵀ / tr) in float64 via numpy (independent of gapt_ds.mbe)."""
    k = z.astype(np.float64) @ z.astype(np.float64).T
    tr = np.trace(k)
    if tr == 0:
        return 0.0
    lam = np.clip(np.linalg.eigvalsh(k / tr), 0, None)
    if alpha == 1:
        lam = lam[lam > 1e-15]
        return float(-(lam * np.log(lam)).sum())
    return float(np.log((lam**alpha).sum()) / (1 - alpha))


def make_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    random = torch.randn(16, 24, generator=g)
    wide = torch.randn(6, 40, generator=g)  # n < D: the n×n Gram is used
    low_rank = torch.randn(16, 3, generator=g) @ torch.randn(3, 24, generator=g)
    zero_rows = random.clone()
    zero_rows[::3] = 0
    return {"random": random, "wide": wide, "low_rank": low_rank, "zero_rows": zero_rows}


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("kind", ["random", "wide", "low_rank", "zero_rows"])
def test_matrix_entropy_matches_eigendecomposition(kind, alpha):
    z = make_inputs()[kind]
    got = matrix_entropy(z, alpha=alpha).item()
    assert got == pytest.approx(reference_entropy(z.numpy(), alpha), rel=1e-4, abs=1e-5)


def test_known_values():
    row = torch.randn(1, 32)
    rank1 = torch.tensor([[1.0], [2.0], [-3.0], [0.5]]) @ row
    assert matrix_entropy(rank1).item() == pytest.approx(0.0, abs=1e-5)
    assert matrix_entropy(rank1, alpha=1.0).item() == pytest.approx(0.0, abs=1e-5)
    p = 8
    q, _ = torch.linalg.qr(torch.randn(32, p, dtype=torch.float64))
    orthogonal = 3.0 * q.T  # p orthogonal rows of equal norm
    for alpha in (1.0, 2.0, 4.0):
        assert matrix_entropy(orthogonal, alpha=alpha).item() == pytest.approx(math.log(p), rel=1e-9)
    assert matrix_entropy(torch.zeros(5, 7)).item() == 0.0


def test_entropy_is_scale_invariant_and_bounded():
    z = torch.randn(8, 16)
    assert matrix_entropy(1000 * z).item() == pytest.approx(matrix_entropy(z).item(), rel=1e-5)
    assert 0 < matrix_entropy(z).item() <= math.log(8) + 1e-6


def test_patch_mbe_matches_per_window_reference():
    hidden = torch.randn(3, 32, 24)
    hidden[1, 8:16] = 0  # an all-zero window
    hidden[2, 16:24] = torch.randn(1, 24).expand(8, 24)  # a rank-1 window
    per_window = patch_mbe_per_window(hidden, patch_size=8)
    ref = [reference_entropy(hidden[b, i : i + 8].numpy(), 2) for b in range(3) for i in range(0, 32, 8)]
    np.testing.assert_allclose(per_window.numpy(), ref, rtol=1e-4, atol=1e-5)
    assert patch_mbe(hidden, 8).item() == pytest.approx(float(np.mean(ref)), rel=1e-5)
    assert per_window[5].item() == 0.0 and per_window[10].item() == pytest.approx(0.0, abs=1e-5)


def test_patch_larger_than_width_uses_dxd_gram():
    hidden = torch.randn(2, 32, 4)  # P = 16 > D = 4
    ref = [reference_entropy(hidden[b, i : i + 16].numpy(), 2) for b in range(2) for i in (0, 16)]
    np.testing.assert_allclose(patch_mbe_per_window(hidden, 16).numpy(), ref, rtol=1e-4)


def test_windows_do_not_cross_sequences():
    a, b = torch.randn(1, 8, 16), torch.randn(1, 8, 16)
    both = patch_mbe_per_window(torch.cat([a, b]), 8)
    assert torch.allclose(both, torch.cat([patch_mbe_per_window(a, 8), patch_mbe_per_window(b, 8)]))


def test_bf16_input_is_computed_in_fp32():
    hidden = torch.randn(2, 16, 32).to(torch.bfloat16)
    got = patch_mbe(hidden, 8)
    assert got.dtype == torch.float32
    ref = np.mean([reference_entropy(hidden[b, i : i + 8].float().numpy(), 2) for b in range(2) for i in (0, 8)])
    assert got.item() == pytest.approx(ref, rel=1e-5)


def test_tail_policy():
    hidden = torch.randn(2, 20, 8)
    with pytest.raises(ValueError, match="not divisible by patch_size 8"):
        patch_mbe(hidden, 8)
    assert patch_mbe(hidden, 8, tail="drop").item() == pytest.approx(patch_mbe(hidden[:, :16], 8).item())
    with pytest.raises(ValueError, match="shorter than patch_size"):
        patch_mbe(torch.randn(2, 5, 8), 8, tail="drop")
    with pytest.raises(ValueError, match="patch_size must be >= 2"):
        patch_mbe(hidden, 1)
    with pytest.raises(ValueError, match=r"\(batch, seq, dim\)"):
        patch_mbe(torch.randn(20, 8), 4)
    with pytest.raises(ValueError, match="2-D"):
        matrix_entropy(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="alpha"):
        matrix_entropy(torch.randn(2, 3), alpha=0)


def test_global_mbe_equals_entropy_of_all_tokens():
    hidden = torch.randn(3, 10, 6)
    ref = reference_entropy(hidden.reshape(30, 6).numpy(), 2)
    assert global_mbe(hidden).item() == pytest.approx(ref, rel=1e-5)
    shards = hidden.split(1)
    assert mbe_from_gram(sum(gram(s) for s in shards)).item() == pytest.approx(ref, rel=1e-5)


def test_gradcheck_float64():
    z = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: matrix_entropy(x), (z,))
    assert torch.autograd.gradcheck(lambda x: global_mbe(x), (z,))
    hidden = torch.randn(2, 8, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: patch_mbe(x, 4), (hidden,))


def test_surrogate_gives_exact_shard_gradients():
    full = torch.randn(20, 6, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(global_mbe(full), full)
    shards = [full.detach()[:7].clone().requires_grad_(), full.detach()[7:].clone().requires_grad_()]
    g = sum(gram(s) for s in shards).detach()
    grads = [torch.autograd.grad(global_mbe_surrogate(s, g), s)[0] for s in shards]
    torch.testing.assert_close(torch.cat(grads), expected, rtol=1e-9, atol=1e-12)
