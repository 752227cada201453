"""Turn the server's EMA weights into a model: sample grids during the run, the sampler folder at the end."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medi_core.artifact import CARD_NAME, CONFIG_NAME, README_NAME, MediSampler, render_model_card
from medi_core.config import DiffusionConfig, ModelConfig
from medi_core.imaging import labelled_grid, save_png
from medi_core.metadata import SITE_FIELD, MetadataSpec
from medi_core.model import MediUNet, build_model
from medi_core.sampling import generate, to_uint8_images

logger = logging.getLogger(__name__)


def model_from_weights(weights: Mapping[str, np.ndarray], model_config: ModelConfig, spec: MetadataSpec) -> MediUNet:
    """Build the model in eval mode straight from fp32 weights (every floating-point entry must be present).

    The tensors share memory with ``weights`` (no copy of a 415 M-parameter
    model), so the model must only be used for inference: sampling never
    writes to its weights.
    """
    state = {name: torch.from_numpy(np.asarray(value, dtype=np.float32)) for name, value in weights.items()}
    model = build_model(model_config, spec, weights=state)
    model.eval()
    return model


def write_sample_grid(
    path: Path,
    weights: Mapping[str, np.ndarray],
    *,
    model_config: ModelConfig,
    diffusion_config: DiffusionConfig,
    spec: MetadataSpec,
    scheduler: str,
    num_steps: int,
    guidance_scale: float,
    seed: int,
) -> Path:
    """One image per (class, site) from the EMA weights, as a labelled grid PNG (rows: classes)."""
    model = model_from_weights(weights, model_config, spec)
    classes = list(spec.classes)
    sites = list(spec.categorical_field(SITE_FIELD).known_values) if SITE_FIELD in spec.field_names else [""]
    cells = [(c, s) for c in classes for s in sites]
    conditions = [{spec.class_field: c, **({SITE_FIELD: s} if s else {})} for c, s in cells]
    # Same seed in every cell, so the grid shows the conditioning, not different noise.
    images = generate(
        model, conditions, [seed] * len(conditions), diffusion_config=diffusion_config,
        scheduler=scheduler, num_steps=num_steps, guidance_scale=guidance_scale, progress=False,
    )  # (N, 3, H, W) in [-1, 1]
    pictures = to_uint8_images(images)
    grid = labelled_grid({cell: [img] for cell, img in zip(cells, pictures, strict=True)}, classes, sites)
    save_png(grid, path)
    logger.info("wrote sample grid %s (%d classes x %d sites)", path, len(classes), len(sites))
    return path


def write_sampler(
    folder: Path,
    weights: Mapping[str, np.ndarray],
    *,
    model_config: ModelConfig,
    diffusion_config: DiffusionConfig,
    spec: MetadataSpec,
    card: Mapping[str, Any],
    scheduler: str,
    num_steps: int,
) -> Path:
    """Save the global sampler (EMA weights, configs, model card) with `MediSampler.save_pretrained`.

    ``scheduler`` and ``num_steps`` become the sampler's defaults, which `medi-sample` uses unless its
    ``--scheduler`` or ``--steps`` option overrides them.
    """
    model = model_from_weights(weights, model_config, spec)
    sampler = MediSampler(model, diffusion_config, card, default_scheduler=scheduler, default_steps=num_steps)
    return sampler.save_pretrained(folder)


def update_card(folder: Path, card: Mapping[str, Any]) -> None:
    """Rewrite the model card (``card.json`` and ``README.md``) of a saved sampler, leaving its weights alone."""
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CARD_NAME).write_text(json.dumps(dict(card), indent=2, default=str) + "\n")
    (folder / README_NAME).write_text(render_model_card(card, config))
    logger.info("updated the model card of %s", folder)
