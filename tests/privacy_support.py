"""Helpers of the privacy tests: real BRCA-M2C patches and a small private trainer (test helper)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from medi_core.config import TrainConfig, model_preset
from medi_core.data import PatchDataset, collate_patches, open_patch_source
from medi_core.metadata import ContinuousField, MetadataSpec
from medi_core.privacy import PrivacyConfig, PrivateTrainer, make_private
from medi_core.training import Trainer, build_trainer

BRCA = Path(__file__).resolve().parents[2] / "shared" / "data" / "patches" / "brca-m2c"
AGES = (34.0, math.nan, 61.0, 78.0)  # generated ages, one unspecified, to exercise the continuous encoder


@functools.cache
def _open(image_size: int) -> PatchDataset:
    return open_patch_source(BRCA, image_size=image_size)


def brca(image_size: int) -> PatchDataset:
    """The 120 real BRCA-M2C patches at ``image_size`` px, or skip when the data is absent."""
    if not (BRCA / "metadata.csv").is_file():
        pytest.skip(f"real test data not found at {BRCA}; the shared data folder is missing")
    return _open(image_size)


def brca_spec(dataset: PatchDataset) -> MetadataSpec:
    """class and site vocabularies of the real patches plus a continuous age field."""
    base = MetadataSpec.from_records(dataset.records.to_dict("records"))
    return MetadataSpec(base.categorical, (ContinuousField("age", 20.0, 90.0),))


def real_batch(
    dataset: PatchDataset, spec: MetadataSpec, indices: list[int]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Real patches ``(B, 3, S, S)`` in [-1, 1] with their class/site codes and generated ages."""
    items = []
    for n, i in enumerate(indices):
        image, metadata = dataset[i]
        items.append((image, {**metadata, "age": AGES[n % len(AGES)]}))
    return collate_patches(items, spec)


def randomise(trainer: Trainer, scale: float = 0.05, seed: int = 0) -> None:
    """Perturb every weight: a fresh UNet has a zero output conv, which zeroes most gradients."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator).to(p.dtype))


def _cast_continuous_features(trainer: Trainer, dtype: torch.dtype) -> None:
    # The continuous encoder builds its sinusoidal features in float32 (diffusers'
    # get_timestep_embedding); a float64 model needs them cast at the MLP input.
    for embedding in trainer.model.encoder.continuous.values():
        embedding.mlp.register_forward_pre_hook(lambda module, args: tuple(a.to(dtype) for a in args))


def private_trainer(
    preset: str,
    spec: MetadataSpec,
    *,
    num_examples: int,
    batch_size: int = 4,
    dtype: torch.dtype = torch.float32,
    state_path: Path | None = None,
    max_epsilon: float | None = None,
    planned_steps: int | None = None,
    seed: int = 0,
    **privacy: object,
) -> PrivateTrainer:
    """A CPU trainer of ``preset`` (channels-last, as in training) made private with ``privacy`` options."""
    # No warm-up: the first step then has the full learning rate, so one step changes the weights.
    config = TrainConfig(
        batch_size=batch_size, total_steps=100, warmup_fraction=0.0, channels_last=True, seed=seed
    )
    trainer = build_trainer(model_preset(preset), spec, config, device="cpu")
    trainer.model.to(dtype)
    if dtype != torch.float32:
        _cast_continuous_features(trainer, dtype)
    randomise(trainer, seed=seed)
    options = {"enabled": True, "noise_multiplier": 1.0, **privacy}
    if "target_epsilon" in options:
        options.pop("noise_multiplier")
    return make_private(
        trainer,
        privacy=PrivacyConfig(**options),
        num_examples=num_examples,
        state_path=state_path,
        planned_steps=planned_steps,
        max_epsilon=max_epsilon,
        site="A7",
        seed=seed,
    )
