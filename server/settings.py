"""Settings of a federated MeDi run, read from Flower's run config (``[tool.flwr.app.config]``).

Flower passes run settings as a flat ``key = value`` mapping
(``context.run_config``), the same under a real SuperLink and under the
simulation engine. `FederationSettings` is the one source of options. Its
field names are the run-config keys with ``_`` for ``-``, `DEFAULT_RUN_CONFIG`
lists every key for ``pyproject.toml``, and the dataclass is registered in
Hydra's ConfigStore (group ``federation``) for the simulation CLI.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from hydra.core.config_store import ConfigStore

from medi_core.balance import BALANCE_POLICIES
from medi_core.config import BetaSchedule, PredictionType
from medi_core.errors import ConfigError

logger = logging.getLogger(__name__)

StrategyName = Literal["fedavg", "fedprox", "fedadam"]
TransferPrecision = Literal["float32", "float16"]
UnseenValues = Literal["unknown", "reject"]

STRATEGIES = ("fedavg", "fedprox", "fedadam")
PRECISIONS = ("float32", "float16")
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)
# The names of `medi_core.sampling.make_scheduler`, spelled here so that reading the settings does not
# import diffusers (a test keeps both in sync).
SAMPLE_SCHEDULERS = ("ddim", "dpmsolver++")
# Prediction type and noise schedule of runs checkpointed before these keys existed: the federation then
# always trained with epsilon and linear betas.
CHECKPOINT_DEFAULT_PREDICTION_TYPE = "epsilon"
CHECKPOINT_DEFAULT_BETA_SCHEDULE = "linear"


@dataclass
class FederationSettings:
    """Every option of a federated run; units in the comments."""

    # -- run ------------------------------------------------------------------
    num_server_rounds: int = 2
    run_dir: str = "runs/medi"  # checkpoints, metrics, sampler; relative paths resolve from the ServerApp's cwd
    run_name: str = "medi"  # stable name of the run: names the sites' local state and outputs
    resume: bool = False  # continue from the last complete round in run_dir
    seed: int = 0

    # -- model and local training ---------------------------------------------
    model_preset: str = "tiny"  # "tiny", "small" or "medi-paper"
    local_steps: int = 5  # optimiser steps per site and round
    batch_size: int = 8
    lr: float = 1e-4
    condition_dropout: float = 0.1  # per-field probability of training the null condition (CFG)
    prediction_type: str = "epsilon"  # training target: "epsilon" (the noise) or "v_prediction" (Salimans & Ho 2022)
    # noise schedule: "linear" (DDPM), "scaled_linear" or "squaredcos_cap_v2" (cosine, Nichol & Dhariwal 2021)
    beta_schedule: str = "linear"
    mixed_precision: str = "auto"

    # -- aggregation ------------------------------------------------------------
    strategy: str = "fedavg"  # "fedavg", "fedprox" or "fedadam"
    proximal_mu: float = 0.01  # FedProx weight of 0.5 * ||w - w_global||^2
    server_lr: float = 1e-2  # FedAdam server step size (eta)
    server_tau: float = 1e-3  # FedAdam adaptivity (tau): larger is closer to plain averaging
    min_clients: int = 2  # a round needs this many accepted updates
    max_update_norm: float = 0.0  # reject an update whose L2 norm (all weights) exceeds this; 0: no bound
    server_ema_decay: float = 0.9  # per-round EMA of the global weights (the sampler uses the EMA)
    transfer_precision: str = "float32"  # "float16" halves the bytes on the wire
    round_timeout: float = 3600.0  # seconds to wait for a round's replies
    keep_checkpoints: int = 2  # complete round checkpoints kept in run_dir

    # -- handshake and balance --------------------------------------------------
    k_anonymity: int = 5  # counts under k are reported as "<k"
    summary_fields: str = "class,site"  # categorical fields counted and conditioned on
    unseen_values: str = "unknown"  # a late site's unseen value: map to "unknown" or reject the site
    handshake_timeout: float = 600.0  # seconds
    balance_policy: str = "max"  # "max", "median" or "fixed"
    balance_target: int = 0  # target per cell for the "fixed" policy
    max_synthetic_per_cell: int = 0  # cap of generated patches per (site, class); 0: no cap
    holdout_fraction: float = 0.1  # share of each site's patches kept out of training for the memorisation check; 0: no check

    # -- differential privacy (proposed; a site with max-epsilon 0 trains without DP) --
    dp_target_epsilon: float = 0.0  # epsilon per site over the whole run, capped at the site's max-epsilon; 0: that max
    dp_noise_multiplier: float = 0.0  # fixed noise std / clipping bound; 0: calibrate from the target epsilon
    dp_max_grad_norm: float = 1.0  # per-example clipping bound C (L2 norm); 1.0 matches non-private clipping
    dp_noise_multiplicity: int = 1  # noise/timestep draws averaged per example before clipping
    dp_delta: float = 0.0  # 0: 0.1 / (local training patches), well below 1 / N

    # -- sampling -----------------------------------------------------------------
    synthesize: bool = True  # send the sampler and quotas to the sites at the end
    sample_steps: int = 50  # sampler steps at the sites
    sample_scheduler: str = "ddim"  # sampler of the sites' synthesis and the sample grids: "ddim" or "dpmsolver++"
    guidance_scale: float = 0.0  # classifier-free guidance weight; 0: no guidance
    sample_batch_size: int = 16
    grid_every: int = 1  # sample grid (class x site) from the EMA every N rounds; 0: never
    grid_steps: int = 20  # sampler steps of the sample grid

    # -- simulation -----------------------------------------------------------------
    site_table: str = ""  # JSON file: simulated partition-id -> site node config (medi-sim); empty in deployments

    def __post_init__(self) -> None:
        checks = [
            (self.num_server_rounds >= 1, "num-server-rounds", "an integer >= 1"),
            (self.local_steps >= 1, "local-steps", "an integer >= 1"),
            (self.batch_size >= 1, "batch-size", "an integer >= 1"),
            (self.lr > 0, "lr", "a learning rate > 0"),
            (0.0 <= self.condition_dropout < 1.0, "condition-dropout", "a probability in [0, 1)"),
            (self.prediction_type in PREDICTION_TYPES, "prediction-type", f"one of {list(PREDICTION_TYPES)}"),
            (self.beta_schedule in BETA_SCHEDULES, "beta-schedule", f"one of {list(BETA_SCHEDULES)}"),
            (self.strategy in STRATEGIES, "strategy", f"one of {list(STRATEGIES)}"),
            (self.proximal_mu >= 0, "proximal-mu", "a weight >= 0"),
            (self.min_clients >= 1, "min-clients", "an integer >= 1"),
            (self.max_update_norm >= 0, "max-update-norm", "a norm >= 0 (0: no bound)"),
            (0.0 <= self.server_ema_decay < 1.0, "server-ema-decay", "a decay in [0, 1)"),
            (self.transfer_precision in PRECISIONS, "transfer-precision", f"one of {list(PRECISIONS)}"),
            (self.round_timeout > 0, "round-timeout", "seconds > 0"),
            (self.keep_checkpoints >= 1, "keep-checkpoints", "an integer >= 1"),
            (self.k_anonymity >= 1, "k-anonymity", "an integer >= 1"),
            (self.unseen_values in ("unknown", "reject"), "unseen-values", "'unknown' or 'reject'"),
            (self.balance_policy in BALANCE_POLICIES, "balance-policy", f"one of {list(BALANCE_POLICIES)}"),
            (self.balance_target >= 0, "balance-target", "a count >= 0"),
            (self.max_synthetic_per_cell >= 0, "max-synthetic-per-cell", "a count >= 0 (0: no cap)"),
            (0.0 <= self.holdout_fraction < 1.0, "holdout-fraction", "a share in [0, 1) (0: no memorisation check)"),
            (self.dp_target_epsilon >= 0, "dp-target-epsilon", "an epsilon >= 0 (0: each site's max-epsilon)"),
            (self.dp_noise_multiplier >= 0, "dp-noise-multiplier", "a multiplier >= 0 (0: calibrate)"),
            (self.dp_max_grad_norm > 0, "dp-max-grad-norm", "a clipping bound > 0"),
            (self.dp_noise_multiplicity >= 1, "dp-noise-multiplicity", "an integer >= 1"),
            (0.0 <= self.dp_delta < 1.0, "dp-delta", "a delta in [0, 1) (0: 0.1 / local patches)"),
            (self.sample_steps >= 1, "sample-steps", "an integer >= 1"),
            (self.sample_scheduler in SAMPLE_SCHEDULERS, "sample-scheduler", f"one of {list(SAMPLE_SCHEDULERS)}"),
            (self.guidance_scale >= 0, "guidance-scale", "a scale >= 0"),
            (self.sample_batch_size >= 1, "sample-batch-size", "an integer >= 1"),
            (self.grid_every >= 0, "grid-every", "an integer >= 0 (0: never)"),
            (self.grid_steps >= 1, "grid-steps", "an integer >= 1"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"run config {key} = {getattr(self, key.replace('-', '_'))!r} is invalid; expected {expected}")
        if self.dp_target_epsilon > 0 and self.dp_noise_multiplier > 0:
            raise ConfigError(
                f"run config sets both dp-target-epsilon = {self.dp_target_epsilon} and dp-noise-multiplier = "
                f"{self.dp_noise_multiplier}; set one of them to 0 (a fixed noise multiplier ignores the target)"
            )
        if "class" not in self.fields_list:
            raise ConfigError(f"run config summary-fields = {self.summary_fields!r} must include 'class'")

    @property
    def fields_list(self) -> list[str]:
        return [f.strip() for f in self.summary_fields.split(",") if f.strip()]

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).expanduser().resolve()

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationSettings:
        """Build settings from Flower's run config; unknown keys are rejected by name."""
        names = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            name = str(key).replace("-", "_")
            if name not in names:
                close = difflib.get_close_matches(str(key), DEFAULT_RUN_CONFIG, n=1)
                suggestion = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"unknown run config key {key!r}; {suggestion}valid keys are {sorted(DEFAULT_RUN_CONFIG)}")
            values[name] = _coerce(key, value, type(getattr(cls(), name)))
        return cls(**values)

    def to_run_config(self) -> dict[str, Any]:
        return {name.replace("_", "-"): value for name, value in asdict(self).items()}

    def summary_lines(self) -> list[str]:
        """Format the settings as one screen of text, logged when a run starts."""
        d = self.to_run_config()
        groups = [
            ("run", ["run-name", "run-dir", "num-server-rounds", "resume", "seed"]),
            ("model", ["model-preset", "prediction-type", "beta-schedule", "local-steps", "batch-size", "lr", "condition-dropout",
                       "mixed-precision"]),
            ("aggregation", ["strategy", "proximal-mu", "server-lr", "server-tau", "min-clients",
                             "max-update-norm", "server-ema-decay", "transfer-precision", "round-timeout"]),
            ("handshake", ["k-anonymity", "summary-fields", "unseen-values", "balance-policy",
                           "balance-target", "max-synthetic-per-cell", "holdout-fraction"]),
            ("privacy", ["dp-target-epsilon", "dp-noise-multiplier", "dp-max-grad-norm",
                         "dp-noise-multiplicity", "dp-delta"]),
            ("sampling", ["synthesize", "sample-scheduler", "sample-steps", "guidance-scale", "sample-batch-size",
                          "grid-every"]),
        ]
        return [f"{title:>12}: " + ", ".join(f"{k}={d[k]}" for k in keys) for title, keys in groups]


def check_resumed_settings(settings: FederationSettings, stored: Mapping[str, Any], *, checkpoint: str) -> None:
    """Raise `ConfigError` when the run config changes a setting that the checkpointed weights were trained for.

    ``stored`` is the run config saved in the checkpoint (``state.json``, key ``settings``).
    """
    trained_with = {
        "prediction-type": str(stored.get("prediction-type", CHECKPOINT_DEFAULT_PREDICTION_TYPE)),
        "beta-schedule": str(stored.get("beta-schedule", CHECKPOINT_DEFAULT_BETA_SCHEDULE)),
    }
    for key, trained in trained_with.items():
        value = getattr(settings, key.replace("-", "_"))
        if value != trained:
            raise ConfigError(
                f"run config {key} = {value!r} differs from {trained!r}, the value the weights in {checkpoint} "
                f"were trained with; set {key} = {trained!r} again (medi-server --resume reads the run config "
                "from the run folder's federation.json), or start a new run in another run-dir"
            )


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Flower parses TOML, so ints may arrive for floats and vice versa; convert without surprises."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"run config {key} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not float(value).is_integer():
            raise ConfigError(f"run config {key} must be an integer, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"run config {key} must be a number, got {value!r}")
        return float(value)
    return str(value)


DEFAULT_RUN_CONFIG: dict[str, Any] = FederationSettings().to_run_config()


def register_configs() -> None:
    """Register `FederationSettings` in Hydra's ConfigStore as ``federation/default``."""
    ConfigStore.instance().store(group="federation", name="default", node=FederationSettings())
