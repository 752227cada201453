"""Private local training on real patches: Poisson batches, empty batches, multiplicity, EMA, options."""

from __future__ import annotations

import math

import pytest
import torch

from medi_core.errors import ConfigError, PrivacyError
from medi_core.privacy import PrivacyConfig, epsilon_of, poisson_batch_indices
from privacy_support import brca, brca_spec, private_trainer


def test_poisson_batch_mean_size():
    generator = torch.Generator().manual_seed(0)
    sizes = [len(poisson_batch_indices(120, 0.1, generator)) for _ in range(2000)]
    # Binomial(120, 0.1): mean 12, standard error of the mean sqrt(10.8 / 2000) = 0.073.
    assert sum(sizes) / len(sizes) == pytest.approx(12.0, abs=0.3)


def test_poisson_batch_can_be_empty():
    generator = torch.Generator().manual_seed(0)
    sizes = [len(poisson_batch_indices(120, 1 / 120, generator)) for _ in range(200)]
    # P(empty) = (1 - 1/120)^120 = 0.366, so about 73 of 200 batches are empty.
    assert 0 in sizes


def _seed_with_empty_first_batch(num_examples: int, rate: float) -> int:
    for seed in range(1000):
        if not poisson_batch_indices(num_examples, rate, torch.Generator().manual_seed(seed)):
            return seed
    raise AssertionError("no seed in 0..999 gives an empty first batch")


def test_private_step_empty_batch_releases_noise_only():
    dataset = brca(32)
    spec = brca_spec(dataset)
    seed = _seed_with_empty_first_batch(len(dataset), 1 / len(dataset))
    private = private_trainer("tiny", spec, num_examples=len(dataset), batch_size=1, seed=seed)
    before = {n: p.detach().clone() for n, p in private.trainer.model.named_parameters()}
    result = private.train_steps(dataset, 1, round_id=1)
    changed = any(not torch.equal(p, before[n]) for n, p in private.trainer.model.named_parameters())
    assert result.empty_batches == 1
    assert result.train.examples == 0
    assert math.isnan(result.train.mean_loss)
    assert changed
    assert private.accountant.steps == 1
    private.close()


def test_private_steps_update_ema_and_step():
    dataset = brca(32)
    spec = brca_spec(dataset)
    private = private_trainer("tiny", spec, num_examples=len(dataset), batch_size=4)
    trainer = private.trainer
    result = private.train_steps(dataset, 2, round_id=1)
    assert trainer.step == 2
    assert trainer.ema.num_updates == 2
    assert result.train.steps == 2
    assert math.isfinite(result.train.mean_loss)
    assert result.epsilon == pytest.approx(
        epsilon_of([(1.0, 4 / len(dataset), 2)], delta=0.1 / len(dataset), kind="rdp"), rel=1e-12
    )
    private.close()


def test_private_steps_noise_multiplicity_counts_examples_once():
    dataset = brca(32)
    spec = brca_spec(dataset)
    private = private_trainer("tiny", spec, num_examples=len(dataset), batch_size=4, noise_multiplicity=3)
    result = private.train_steps(dataset, 1, round_id=1)
    # Poisson batch sizes are random, so compare with the sampler's own draw for this seed.
    expected = len(poisson_batch_indices(len(dataset), 4 / len(dataset), torch.Generator().manual_seed(0)))
    assert result.train.examples == expected
    private.close()


def test_private_steps_proximal_pulls_to_anchor():
    dataset = brca(32)
    spec = brca_spec(dataset)
    plain = private_trainer("tiny", spec, num_examples=len(dataset), batch_size=2, seed=3)
    prox = private_trainer("tiny", spec, num_examples=len(dataset), batch_size=2, seed=3)
    anchor = {n: p.detach() + 1.0 for n, p in prox.trainer.model.named_parameters()}  # far from w
    plain.train_steps(dataset, 1)
    prox.train_steps(dataset, 1, proximal_mu=100.0, anchor_params=anchor)
    # AdamW moves each weight by about lr per step; a huge mu makes every move point at the anchor.
    name = "unet.conv_in.weight"
    w0 = anchor[name] - 1.0
    moved = prox.trainer.model.state_dict()[name] - w0
    assert bool((moved > 0).all())
    plain.close()
    prox.close()


def test_private_steps_reject_other_dataset_size():
    dataset = brca(32)
    spec = brca_spec(dataset)
    private = private_trainer("tiny", spec, num_examples=len(dataset) + 1)
    with pytest.raises(PrivacyError, match="num_examples=120"):
        private.train_steps(dataset, 1)
    private.close()


def test_make_private_calibrates_and_stores_noise(tmp_path):
    dataset = brca(32)
    spec = brca_spec(dataset)
    state = tmp_path / "acc.json"
    options = dict(num_examples=len(dataset), state_path=state, planned_steps=50, target_epsilon=4.0)
    first = private_trainer("tiny", spec, **options)
    second = private_trainer("tiny", spec, **options)
    planned = epsilon_of([(first.noise_multiplier, first.sample_rate, 50)], delta=first.accountant.delta, kind="rdp")
    assert planned <= 4.0
    assert planned >= 0.999 * 4.0
    assert second.noise_multiplier == first.noise_multiplier
    first.close()
    second.close()


def test_make_private_target_needs_planned_steps():
    dataset = brca(32)
    spec = brca_spec(dataset)
    with pytest.raises(ConfigError, match="needs planned_steps"):
        private_trainer("tiny", spec, num_examples=len(dataset), target_epsilon=4.0)


def test_config_requires_one_noise_source():
    with pytest.raises(ConfigError, match="exactly one of privacy.target_epsilon"):
        PrivacyConfig(enabled=True)


def test_config_rejects_ghost_mode():
    with pytest.raises(ConfigError, match="'ghost' and 'ew' are not supported"):
        PrivacyConfig(grad_sample_mode="ghost")


def test_config_rejects_zero_multiplicity():
    with pytest.raises(ConfigError, match="noise_multiplicity must be at least 1"):
        PrivacyConfig(noise_multiplicity=0)


def test_config_default_delta_below_one_over_n():
    assert PrivacyConfig().resolve_delta(120) == pytest.approx(0.1 / 120)


def test_config_large_delta_warns():
    with pytest.warns(UserWarning, match="is not below 1/N"):
        PrivacyConfig(delta=0.05).resolve_delta(120)
