"""Clipping of per-example gradients as the private optimiser applies it, before noise."""

from __future__ import annotations

import pytest
import torch

from privacy_support import brca, brca_spec, private_trainer, real_batch

MAX_GRAD_NORM = 1e-3  # far below the raw per-example norms (order 1), so every example is clipped
INDICES = [3, 40, 77, 118]


def _norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads.values())))


@pytest.mark.parametrize("mode", ["functorch", "hooks"])
def test_clipping_each_example_within_bound(mode):
    dataset = brca(32)
    spec = brca_spec(dataset)
    private = private_trainer(
        "tiny", spec, num_examples=len(dataset), max_grad_norm=MAX_GRAD_NORM, grad_sample_mode=mode
    )
    x, cond = real_batch(dataset, spec, INDICES)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    timesteps = torch.tensor([5, 250, 600, 950])
    for b in range(2):  # two examples keep the test short; each needs its own passes
        one = {name: value[b : b + 1] for name, value in cond.items()}
        args = dict(noise=noise[b : b + 1], timesteps=timesteps[b : b + 1])
        raw = _norm({n: g[0] for n, g in private.per_sample_gradients(x[b : b + 1], one, **args).items()})
        clipped = _norm(private.clipped_gradient_sum(x[b : b + 1], one, **args))
        assert raw > MAX_GRAD_NORM
        assert clipped <= MAX_GRAD_NORM * (1 + 1e-6)
        assert clipped == pytest.approx(MAX_GRAD_NORM, rel=1e-3)
    private.close()


def test_clipping_sum_matches_clipped_examples():
    dataset = brca(32)
    spec = brca_spec(dataset)
    bound = 4.0  # between the raw norms of these examples (about 2.4 to 6.7), so two pass unclipped
    private = private_trainer("tiny", spec, num_examples=len(dataset), max_grad_norm=bound)
    x, cond = real_batch(dataset, spec, INDICES)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    timesteps = torch.tensor([5, 250, 600, 950])
    per_example = private.per_sample_gradients(x, cond, noise=noise, timesteps=timesteps)
    norms = torch.sqrt(sum(g.flatten(1).double().pow(2).sum(1) for g in per_example.values()))  # (B,)
    factors = (bound / norms).clamp(max=1.0)  # (B,)
    expected = {n: torch.einsum("b,b...->...", factors.to(g.dtype), g) for n, g in per_example.items()}
    summed = private.clipped_gradient_sum(x, cond, noise=noise, timesteps=timesteps)
    difference = _norm({n: summed[n] - expected[n] for n in expected})
    assert bool((norms < bound).any())
    assert bool((norms > bound).any())
    assert difference <= 1e-5 * _norm(expected)
    private.close()
