"""H&E stain augmentation by random jitter in HED (haematoxylin, eosin, DAB) colour space.

Each image is converted from RGB to optical density and unmixed into HED
stain concentrations with the colour-deconvolution matrix of Ruifrok and
Johnston (Anal. Quant. Cytol. Histol. 23(4), 2001), as shipped in
scikit-image (``skimage.color.hed_from_rgb``). Each stain channel is then
scaled by ``alpha ~ U(1 - sigma, 1 + sigma)`` and shifted by
``beta ~ U(-bias, bias)``, with one draw per image and stain, and the result
is mixed back to RGB.

| code       | meaning                                                        |
|------------|----------------------------------------------------------------|
| ``od``     | optical density ``log(rgb) / log(1e-6)``, as in scikit-image    |
| ``stains`` | ``od @ hed_from_rgb``: (H, E, D) concentration per pixel        |
| ``alpha``  | per-image, per-stain scale                                      |
| ``beta``   | per-image, per-stain shift, in the same units as ``stains``     |

Unlike ``skimage.color.rgb2hed``, negative concentrations are not clipped, so
with ``alpha = 1`` and ``beta = 0`` an image comes back unchanged (to 1e-7).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.color import hed_from_rgb, rgb_from_hed

from medi_core.errors import EvaluationError
from medi_core.evaluation.patches import LabeledPatches

LOG_ADJUST = math.log(1e-6)  # scikit-image's optical-density scale: od = log(rgb) / log(1e-6)

# Defaults sized on the 120 BRCA-M2C patches (32 px). The mean RGB colours of
# sites A7, A8 and AC differ by 0.1-0.25 per channel on a [0, 1] scale. Sigma
# 0.2 with bias 0.02 moves an image's mean colour by 0.08 on average, so
# augmented copies cover a good part of the between-site range.
DEFAULT_SIGMA = 0.2  # stain scale jitter (relative)
DEFAULT_BIAS = 0.02  # stain shift jitter in scikit-image optical-density units


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """Unmix (..., 3) RGB in [0, 1] into (..., 3) HED stain concentrations (not clipped)."""
    od = np.log(np.clip(rgb, 1e-6, 1.0)) / LOG_ADJUST
    return od @ hed_from_rgb


def hed_to_rgb(stains: np.ndarray) -> np.ndarray:
    """Mix (..., 3) HED stain concentrations back into (..., 3) RGB in [0, 1]."""
    return np.clip(np.exp((stains @ rgb_from_hed) * LOG_ADJUST), 0.0, 1.0)


def hed_jitter(
    images: torch.Tensor,
    *,
    sigma: float = DEFAULT_SIGMA,
    bias: float = DEFAULT_BIAS,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Return stain-jittered copies of (N, 3, H, W) images in [-1, 1], same shape and range."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise EvaluationError(f"hed_jitter expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if not 0.0 <= sigma < 1.0 or bias < 0.0:
        raise EvaluationError(f"hed_jitter needs 0 <= sigma < 1 and bias >= 0, got sigma={sigma}, bias={bias}")
    n = images.shape[0]
    rgb = ((images.detach().cpu().double().permute(0, 2, 3, 1) + 1.0) / 2.0).numpy()  # (N, H, W, 3) in [0, 1]
    alpha = rng.uniform(1.0 - sigma, 1.0 + sigma, size=(n, 1, 1, 3))
    beta = rng.uniform(-bias, bias, size=(n, 1, 1, 3))
    jittered = hed_to_rgb(rgb_to_hed(rgb) * alpha + beta)  # (N, H, W, 3) in [0, 1]
    out = torch.from_numpy(jittered).permute(0, 3, 1, 2).float() * 2.0 - 1.0  # (N, 3, H, W) in [-1, 1]
    return out.to(images.device)


def stain_augment(
    patches: LabeledPatches,
    count: int,
    *,
    rng: np.random.Generator,
    sigma: float = DEFAULT_SIGMA,
    bias: float = DEFAULT_BIAS,
) -> LabeledPatches:
    """Return ``count`` stain-jittered copies of randomly chosen patches, keeping their class and site.

    Sources are drawn without replacement while ``count`` allows it, so every
    patch is augmented about equally often.
    """
    if count < 0:
        raise EvaluationError(f"stain_augment: count must be >= 0, got {count}")
    if len(patches) == 0:
        raise EvaluationError(f"stain_augment: patch set {patches.name!r} is empty")
    whole, rest = divmod(count, len(patches))
    sources = np.concatenate(
        [np.tile(np.arange(len(patches)), whole), rng.choice(len(patches), size=rest, replace=False)]
    ).astype(np.int64)
    chosen = patches.subset(sources)
    return LabeledPatches(
        hed_jitter(chosen.images, sigma=sigma, bias=bias, rng=rng),
        chosen.labels,
        chosen.sites,
        name=f"{patches.name}+stain",
    )


__all__ = ["DEFAULT_BIAS", "DEFAULT_SIGMA", "hed_jitter", "hed_to_rgb", "rgb_to_hed", "stain_augment"]
