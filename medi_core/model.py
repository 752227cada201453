"""The MeDi denoiser: a diffusers `UNet2DModel` with a metadata encoder added to its time embedding.

MeDi (Drexlin et al., MICCAI 2025) conditions on the tumour class *and* on
site metadata by adding one learned embedding per field to the timestep
embedding. diffusers supports this without a fork: with
``class_embed_type="identity"`` the UNet adds whatever ``(B, D_t)`` tensor it
receives as ``class_labels`` to its time embedding, so the encoder below only
has to produce that tensor.

| code name      | meaning                                              |
|----------------|------------------------------------------------------|
| ``D_t``        | time-embedding width, 4 x first block width          |
| ``c_k``        | embedding of categorical field k (null row = CFG)    |
| ``m_j``        | MLP of the sinusoidal encoding of continuous field j |
| additive       | ``c = sum_k c_k + sum_j m_j``                        |
| concat         | ``c = W [c_1; ...; m_1; ...]``                       |
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from medi_core.config import ModelConfig
from medi_core.metadata import NULL_INDEX, MetadataSpec

# Continuous values in [0, 1] are stretched to [0, 1000] before the sinusoidal
# encoding so they span the same frequencies as diffusion timesteps.
_CONTINUOUS_SCALE = 1000.0


class ContinuousEmbedding(nn.Module):
    """Sinusoidal encoding + MLP for one continuous field, with a learned null value."""

    def __init__(self, out_dim: int, freq_dim: int = 64) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        # Row 0 is a bias for "specified", row 1 the null embedding. An Embedding (not a bare
        # Parameter) keeps Opacus able to compute per-sample gradients for it.
        self.presence = nn.Embedding(2, out_dim)

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        # value: (B,) in [0, 1], NaN = unspecified
        is_null = torch.isnan(value)
        safe = torch.where(is_null, torch.zeros_like(value), value)
        freqs = get_timestep_embedding(safe * _CONTINUOUS_SCALE, self.freq_dim)  # (B, freq_dim), float32
        freqs = freqs.to(self.mlp[0].weight.dtype)  # float64 models are used by the DP exactness tests
        keep = (~is_null).to(freqs.dtype).unsqueeze(1)  # (B, 1)
        return self.mlp(freqs) * keep + self.presence(is_null.long())  # (B, out_dim)


class ConditionEncoder(nn.Module):
    """Maps encoded metadata (see `MetadataSpec.encode`) to a ``(B, D_t)`` conditioning vector."""

    def __init__(self, spec: MetadataSpec, time_embed_dim: int, mode: str = "additive", field_dim: int = 64):
        super().__init__()
        self.spec = spec
        self.mode = mode
        width = time_embed_dim if mode == "additive" else field_dim
        # One extra row per table: the last row is the learned null ("unspecified") embedding.
        self.categorical = nn.ModuleDict(
            {f.name: nn.Embedding(len(f.values) + 1, width) for f in spec.categorical}
        )
        self.continuous = nn.ModuleDict({f.name: ContinuousEmbedding(width) for f in spec.continuous})
        n_fields = len(spec.categorical) + len(spec.continuous)
        self.project = nn.Linear(n_fields * field_dim, time_embed_dim) if mode == "concat" else None

    def forward(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for f in self.spec.categorical:
            codes = cond[f.name]  # (B,) int64, NULL_INDEX = unspecified
            null_row = len(f.values)
            codes = torch.where(codes == NULL_INDEX, torch.full_like(codes, null_row), codes)
            parts.append(self.categorical[f.name](codes))  # (B, width)
        for f in self.spec.continuous:
            parts.append(self.continuous[f.name](cond[f.name]))  # (B, width)
        if self.project is None:
            return torch.stack(parts, dim=0).sum(dim=0)  # (B, D_t)
        return self.project(torch.cat(parts, dim=1))  # (B, D_t)


class MediUNet(nn.Module):
    """Noise-prediction network: ``forward(x_t, t, cond) -> eps`` (or v)."""

    def __init__(self, config: ModelConfig, spec: MetadataSpec) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.unet = UNet2DModel(
            sample_size=config.sample_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=tuple(config.block_out_channels),
            down_block_types=tuple(config.down_block_types),
            up_block_types=tuple(config.up_block_types),
            layers_per_block=config.layers_per_block,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=config.norm_num_groups,
            add_attention=config.add_attention,
            class_embed_type="identity",
        )
        self.encoder = ConditionEncoder(
            spec, config.time_embed_dim, mode=config.conditioning, field_dim=config.concat_field_dim
        )

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        # sample: (B, 3, H, W) noisy image; timesteps: (B,) int64
        emb = self.encoder(cond)  # (B, D_t)
        return self.unet(sample, timesteps, class_labels=emb).sample  # (B, 3, H, W)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(
    model_config: ModelConfig,
    spec: MetadataSpec,
    weights: dict[str, torch.Tensor] | None = None,
) -> MediUNet:
    """Build the denoiser for a config and a metadata spec; the one place models are made.

    With ``weights`` the model is built on the meta device and the tensors are
    assigned directly, which skips the random initialisation (seconds for the
    415 M-parameter preset) and a second copy of the weights in memory.
    """
    if weights is None:
        return MediUNet(model_config, spec)
    with torch.device("meta"):
        model = MediUNet(model_config, spec)
    model.load_state_dict(weights, strict=True, assign=True)
    return model


def drop_conditions(
    cond: dict[str, torch.Tensor], spec: MetadataSpec, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Replace each field by "unspecified" with its own dropout probability (trains CFG)."""
    out = {}
    for f in spec.categorical:
        codes = cond[f.name]
        drop = torch.rand(codes.shape, generator=generator, device="cpu").to(codes.device) < f.dropout
        out[f.name] = torch.where(drop, torch.full_like(codes, NULL_INDEX), codes)
    for f in spec.continuous:
        vals = cond[f.name]
        drop = torch.rand(vals.shape, generator=generator, device="cpu").to(vals.device) < f.dropout
        out[f.name] = torch.where(drop, torch.full_like(vals, float("nan")), vals)
    return out


def null_conditions(batch_size: int, spec: MetadataSpec, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Every field unspecified: the unconditional branch of classifier-free guidance."""
    out = {f.name: torch.full((batch_size,), NULL_INDEX, dtype=torch.long, device=device) for f in spec.categorical}
    for f in spec.continuous:
        out[f.name] = torch.full((batch_size,), float("nan"), device=device)
    return out
