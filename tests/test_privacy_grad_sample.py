"""Per-sample gradients of the private trainer against per-sample autograd, on the real model presets."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from medi_core.privacy import per_sample_gradients_autograd, relative_errors
from privacy_support import brca, brca_spec, private_trainer, real_batch

MAX_RELATIVE_ERROR = 1e-5
BATCH = 2  # examples per check; per-sample autograd runs one backward pass per example
# Presets small enough for CPU; "medi-paper" (415 M parameters) needs a GPU.
PRESETS = {"tiny": 32, "small": 64}


def _fixed_inputs(preset: str, k: int = 1):
    dataset = brca(PRESETS[preset])
    spec = brca_spec(dataset)
    x, cond = real_batch(dataset, spec, [0, 50, 100, 119][:BATCH])
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn((BATCH * k, *x.shape[1:]), generator=generator, dtype=torch.float64)
    timesteps = torch.tensor([10, 990, 400, 700][: BATCH * k])
    return dataset, spec, x.double(), cond, noise, timesteps


def _reference(private, x, cond, noise, timesteps, k: int = 1):
    """Per-example gradients with plain autograd, batch of one, averaged over the k draws."""
    trainer = private.trainer

    def loss_of_row(row: int) -> torch.Tensor:
        b = row // k
        one_cond = {name: value[b : b + 1] for name, value in cond.items()}
        return trainer.diffusion.per_sample_loss(
            trainer.model,
            x[b : b + 1].contiguous(memory_format=torch.channels_last),
            one_cond,
            noise=noise[row : row + 1],
            timesteps=timesteps[row : row + 1],
            drop_conditions_for_cfg=False,
        )[0]

    private.grad_sampler.module.disable_hooks()
    try:
        rows = per_sample_gradients_autograd(trainer.model, loss_of_row, x.shape[0] * k)
    finally:
        private.grad_sampler.module.enable_hooks()
    return {name: g.view(x.shape[0], k, *g.shape[1:]).mean(dim=1) for name, g in rows.items()}


@pytest.mark.parametrize("mode", ["functorch", "hooks"])
@pytest.mark.parametrize("preset", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
def test_grad_sample_exact_every_parameter(preset, mode):
    dataset, spec, x, cond, noise, timesteps = _fixed_inputs(preset)
    private = private_trainer(preset, spec, num_examples=len(dataset), dtype=torch.float64, grad_sample_mode=mode)
    reference = _reference(private, x, cond, noise, timesteps)
    computed = private.per_sample_gradients(
        private.trainer.to_device((x, cond))[0], cond, noise=noise, timesteps=timesteps
    )
    errors = relative_errors(computed, reference)
    trainable = [n for n, p in private.trainer.model.named_parameters() if p.requires_grad]
    worst = {name: err for name, err in errors.items() if err > MAX_RELATIVE_ERROR}
    assert sorted(errors) == sorted(trainable)
    assert worst == {}
    private.close()


def test_grad_sample_noise_multiplicity_averages_draws():
    k = 2
    dataset, spec, x, cond, noise, timesteps = _fixed_inputs("tiny", k=k)
    private = private_trainer(
        "tiny", spec, num_examples=len(dataset), dtype=torch.float64, noise_multiplicity=k
    )
    reference = _reference(private, x, cond, noise, timesteps, k=k)
    computed = private.per_sample_gradients(x, cond, noise=noise, timesteps=timesteps)
    worst = {n: e for n, e in relative_errors(computed, reference).items() if e > MAX_RELATIVE_ERROR}
    assert computed["unet.conv_out.weight"].shape[0] == BATCH
    assert worst == {}
    private.close()


def test_grad_sample_check_detects_unfixed_hooks():
    """Opacus hooks without the contiguous-input fix are wrong here, so the check above can fail."""
    dataset, spec, x, cond, noise, timesteps = _fixed_inputs("tiny")
    private = private_trainer("tiny", spec, num_examples=len(dataset), dtype=torch.float64)
    reference = _reference(private, x, cond, noise, timesteps)
    model = private.trainer.model
    private.close()
    unfixed = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    x_t = x.contiguous(memory_format=torch.channels_last)
    rows = private.trainer.diffusion.per_sample_loss(
        model, x_t, cond, noise=noise, timesteps=timesteps, drop_conditions_for_cfg=False
    )
    rows.sum().backward()
    computed = {name: p.grad_sample for name, p in model.named_parameters()}
    errors = relative_errors(computed, reference)
    assert max(errors.values()) > 1e-2
    unfixed._close()
