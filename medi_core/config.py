"""Structured configs of the diffusion core (model, noise schedule, training), with presets.

The dataclasses are the one source of options: Hydra reads them through the
ConfigStore, the CLIs fill them from their flags, and every checkpoint and
sampler folder stores them as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from hydra.core.config_store import ConfigStore

from medi_core.errors import ConfigError

Conditioning = Literal["additive", "concat"]
PredictionType = Literal["epsilon", "v_prediction"]
# Noise schedules of diffusers' DDPM, DDIM and DPM-Solver schedulers: the linear betas of DDPM (Ho et al. 2020),
# Stable Diffusion's scaled linear betas, and the cosine schedule of Nichol & Dhariwal (2021).
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
PresetName = Literal["tiny", "small", "medi-paper"]


@dataclass
class ModelConfig:
    """A diffusers `UNet2DModel` plus the conditioning encoder on top of it."""

    preset: str = "tiny"
    sample_size: int = 32  # patch side in pixels
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    down_block_types: list[str] = field(
        default_factory=lambda: ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    )
    up_block_types: list[str] = field(default_factory=lambda: ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    add_attention: bool = True  # self-attention in the mid block
    conditioning: str = "additive"  # "additive": sum of field embeddings; "concat": concatenate, project
    concat_field_dim: int = 64  # per-field embedding width in "concat" mode

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ConfigError(
                f"model preset {self.preset!r}: block_out_channels ({n} levels), down_block_types "
                f"({len(self.down_block_types)}) and up_block_types ({len(self.up_block_types)}) "
                "must have the same length"
            )
        if self.conditioning not in ("additive", "concat"):
            raise ConfigError(f"conditioning must be 'additive' or 'concat', got {self.conditioning!r}")
        if self.sample_size % (2 ** (n - 1)) != 0:
            raise ConfigError(
                f"sample_size {self.sample_size} must be divisible by 2**{n - 1} for {n} UNet levels"
            )
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups != 0:
                raise ConfigError(
                    f"block channel count {channels} is not divisible by norm_num_groups {self.norm_num_groups}"
                )

    @property
    def time_embed_dim(self) -> int:
        # diffusers' UNet2DModel uses 4x the first block width for positional time embeddings.
        return self.block_out_channels[0] * 4


def model_preset(name: str) -> ModelConfig:
    """Return the `ModelConfig` of a named preset: ``tiny``, ``small`` or ``medi-paper``."""
    if name == "tiny":
        # For CPU tests: 32 px, one attention level so the DP checks cover attention blocks.
        return ModelConfig(preset="tiny")
    if name == "small":
        return ModelConfig(
            preset="small",
            sample_size=64,
            block_out_channels=[64, 128, 128, 256],
            down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
            up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            layers_per_block=2,
            norm_num_groups=32,
        )
    if name == "medi-paper":
        # MeDi reference (Drexlin et al., MICCAI 2025): 128 px, six plain levels, mid-block
        # attention as in diffusers' default; about 415 M parameters.
        return ModelConfig(
            preset="medi-paper",
            sample_size=128,
            block_out_channels=[128, 256, 512, 512, 1024, 1024],
            down_block_types=["DownBlock2D"] * 6,
            up_block_types=["UpBlock2D"] * 6,
            layers_per_block=2,
            norm_num_groups=32,
        )
    raise ConfigError(f"unknown model preset {name!r}; choose one of 'tiny', 'small', 'medi-paper'")


@dataclass
class DiffusionConfig:
    """The DDPM forward process and training target (Ho et al. 2020)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # one of BetaSchedule; beta_start and beta_end apply to the linear ones
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # or "v_prediction" (Salimans & Ho 2022)

    def __post_init__(self) -> None:
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}"
            )
        if self.beta_schedule not in get_args(BetaSchedule):
            raise ConfigError(
                f"beta_schedule must be one of {list(get_args(BetaSchedule))}, got {self.beta_schedule!r}"
            )


@dataclass
class TrainConfig:
    """Optimiser and loop settings; defaults follow the MeDi reference."""

    lr: float = 1e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 1e-6
    warmup_fraction: float = 0.01  # share of total_steps spent in linear warm-up
    total_steps: int = 1000  # length of the cosine schedule; federated runs use rounds x local steps
    ema_decay: float = 0.999
    use_ema: bool = True  # off for federated local steps, where the server keeps the EMA instead
    grad_clip_norm: float = 1.0  # max global gradient L2 norm (non-DP training)
    batch_size: int = 32
    mixed_precision: str = "auto"  # "auto": bf16 on a GPU that supports it, else fp32
    channels_last: bool = True  # applied on CUDA devices only (slower on CPU)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ConfigError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be auto/no/fp16/bf16, got {self.mixed_precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys by name."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}; valid keys are {sorted(names)}")
    return cls(**dict(data))


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def register_configs() -> None:
    """Register the core dataclasses in Hydra's ConfigStore (group names match the fields)."""
    store = ConfigStore.instance()
    for name in ("tiny", "small", "medi-paper"):
        store.store(group="model", name=name, node=model_preset(name))
    store.store(group="diffusion", name="ddpm", node=DiffusionConfig())
    store.store(group="train", name="default", node=TrainConfig())
