"""DDPM forward process and the per-sample training loss (Ho et al. 2020; v-target of Salimans & Ho 2022).

| code name        | paper symbol                 |
|------------------|------------------------------|
| ``alpha_bar``    | \\bar{alpha}_t                |
| ``x0``           | x_0, data in [-1, 1]          |
| ``noise``        | epsilon ~ N(0, I)             |
| ``x_t``          | sqrt(abar) x_0 + sqrt(1-abar) eps  (Ho et al., eq. 4) |
| ``v``            | sqrt(abar) eps - sqrt(1-abar) x_0  (Salimans & Ho, sec. 4) |

The loss is returned per sample and unreduced, shape ``(B,)``: the caller
reduces it, and DP-SGD needs it that way to clip each example's gradient.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from medi_core.config import DiffusionConfig
from medi_core.metadata import MetadataSpec
from medi_core.model import drop_conditions


class GaussianDiffusion:
    """Noise schedule plus the epsilon or v prediction objective."""

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        # diffusers' DDPMScheduler computes the same betas the samplers later use.
        scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type=config.prediction_type,
        )
        self.alpha_bar = scheduler.alphas_cumprod.to(torch.float32)  # (T,)

    def _coefficients(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.alpha_bar.to(like.device)[timesteps].to(like.dtype)  # (B,)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return alpha_bar.sqrt().view(shape), (1.0 - alpha_bar).sqrt().view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Return x_t for data x0 ``(B, 3, H, W)`` in [-1, 1] at integer timesteps ``(B,)``."""
        sqrt_ab, sqrt_one_minus_ab = self._coefficients(timesteps, x0)
        return sqrt_ab * x0 + sqrt_one_minus_ab * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.config.prediction_type == "epsilon":
            return noise
        sqrt_ab, sqrt_one_minus_ab = self._coefficients(timesteps, x0)
        return sqrt_ab * noise - sqrt_one_minus_ab * x0

    def sample_training_inputs(
        self, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw noise and timesteps for the actual batch size of ``x0`` (on CPU, then moved)."""
        batch = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        timesteps = torch.randint(
            0, self.config.num_train_timesteps, (batch,), generator=generator, dtype=torch.long
        ).to(x0.device)
        return noise, timesteps

    def per_sample_loss(
        self,
        model: torch.nn.Module,
        x0: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        spec: MetadataSpec | None = None,
        drop_conditions_for_cfg: bool = True,
    ) -> torch.Tensor:
        """Mean squared error of the prediction per example, shape ``(B,)``.

        ``spec`` defaults to ``model.spec``; condition dropout uses its per-field
        probabilities when ``drop_conditions_for_cfg`` is set.
        """
        if noise is None or timesteps is None:
            drawn_noise, drawn_t = self.sample_training_inputs(x0, generator)
            noise = drawn_noise if noise is None else noise
            timesteps = drawn_t if timesteps is None else timesteps
        if drop_conditions_for_cfg:
            cond = drop_conditions(cond, spec if spec is not None else model.spec, generator)
        x_t = self.add_noise(x0, noise, timesteps)  # (B, 3, H, W)
        prediction = model(x_t, timesteps, cond)  # (B, 3, H, W)
        error = (prediction.float() - self.target(x0, noise, timesteps).float()) ** 2
        return error.flatten(1).mean(dim=1)  # (B,)
