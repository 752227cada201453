"""Hydra structured configs of ``medi-sim``: data, model, federation, privacy and evaluation presets.

Every option of a simulation is a field of `SimConfig`. The presets below are
registered in Hydra's ConfigStore, and ``simulations/conf/medi_sim.yaml``
picks the defaults, so a run is chosen and adjusted on the command line::

    medi-sim                                    # BRCA-M2C split by TSS, tiny model, quick federation
    medi-sim data=toy                           # the generated data set that ships with the code
    medi-sim federation.num_server_rounds=20 evaluation=full run_dir=runs/brca-20
    medi-sim data=tcga-ut data.path=/data/TCGA-UT model=small

| group | presets | what it sets |
|---|---|---|
| ``data`` | ``brca-m2c``, ``toy``, ``tcga-ut``, ``folder`` | patch source and the split by tissue source site |
| ``model`` | ``tiny``, ``small``, ``medi-paper`` | the UNet preset (`medi_core.config.model_preset`) |
| ``federation`` | ``quick``, ``default`` | Flower run config (`medi_server.settings.FederationSettings`) |
| ``privacy`` | ``none``, ``dp`` | each site's differential-privacy budget |
| ``evaluation`` | ``quick``, ``full`` | downstream encoder, seeds, sweeps, fidelity |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from medi_core.config import ModelConfig
from medi_core.config import register_configs as register_core_configs
from medi_core.errors import ConfigError
from medi_core.evaluation.encoders import EncoderConfig
from medi_server.settings import FederationSettings
from medi_server.settings import register_configs as register_federation_configs

BRCA_HOLDOUT_TSS = ["OL", "PE", "S3", "WT", "XX"]  # five small BRCA-M2C sites with 16 patches of all 3 classes


@dataclass
class DataConfig:
    """Patch source and its split into training sites and held-out sites."""

    name: str = "brca-m2c"
    path: str = "../shared/data/patches/brca-m2c"  # patch source; a relative path resolves from the working directory
    kind: str = "auto"  # "auto", "patch_store", "tcga_ut", "labelled_folder", "manifest" or "toy"
    class_name: str | None = None  # class of every patch of a TCGA-UT <slide>/*.jpg folder without class folders
    slide_metadata: str | None = None  # GDC slide CSV: plan the sites from its slide counts (real site sizes)
    class_column: str | None = None  # take each patch's class from this slide_metadata column (e.g. project_id)
    grouping: str = "top_k"  # "per_tss", "top_k" or "map" (see medi_sim.tcga_split)
    top_k: int | None = 3  # grouping top_k: the K largest TSS codes become sites, the rest merge into other_site
    institution_map: str | None = None  # grouping map: CSV with columns tss, institution
    on_unmapped: str = "merge"  # grouping map: "merge" unmapped codes into other_site, or "reject" them
    holdout_tss: list[str] | None = field(default_factory=lambda: list(BRCA_HOLDOUT_TSS))
    holdout_fraction: float | None = None  # or hold out this share of TSS codes (stratified by project)
    split_seed: int = 0  # seed of the holdout_fraction draw
    other_site: str = "other"
    min_site_patches: int = 1  # training sites with fewer patches are left out of the federation (logged)
    toy_patches_per_cell: int = 12  # data=toy: patches per (class, site) cell before the planned gaps


@dataclass
class PrivacySimConfig:
    """Differential privacy at the virtual sites (each site's local budget, as `medi-client start --max-epsilon`)."""

    name: str = "none"
    max_epsilon: float = 0.0  # privacy budget of every site for the whole run; 0 trains without DP
    site_max_epsilon: dict[str, float] = field(default_factory=dict)  # per-site budgets that replace max_epsilon


@dataclass
class EncoderSimConfig:
    """`medi_core.evaluation.EncoderConfig` for Hydra, which cannot type its ``Literal`` kind (a test keeps both in sync)."""

    kind: str = "cnn"  # "cnn" (trained on the real training patches), "random" or "timm" (local weights file)
    timm_model: str | None = None  # timm architecture name, e.g. "vit_large_patch16_224" for UNI
    weights_path: str | None = None  # local state-dict file for kind "timm"; nothing is downloaded
    input_size: int = 224  # px fed to the timm model
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"init_values": 1e-5} for UNI
    width: int = 16  # channels of the first conv layer of the "cnn" and "random" encoders
    epochs: int = 15  # passes over the real training patches for "cnn"
    learning_rate: float = 2e-3  # Adam step size for "cnn"
    seed: int = 0

    def to_encoder_config(self) -> EncoderConfig:
        if self.kind not in ("cnn", "random", "timm"):
            raise ConfigError(f"evaluation.encoder.kind={self.kind!r} is invalid; use cnn, random or timm")
        return EncoderConfig(**asdict(self))


@dataclass
class EvaluationSimConfig:
    """The downstream experiment on held-out sites and the fidelity measures."""

    name: str = "quick"
    encoder: EncoderSimConfig = field(default_factory=EncoderSimConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    synthetic_ratio: float | None = 1.0  # added patches per real training patch; None adds every synthetic patch
    real_per_class: int | None = None  # keep at most this many real patches per class; None keeps all
    num_train_sites: int | None = None  # keep the patches of this many random training sites; None keeps all
    include_stain: bool = True  # configuration (b): real + HED stain jitter
    sweeps: dict[str, list[Any]] = field(default_factory=dict)  # parameter -> values, as medi_core run_sweep
    fidelity: bool = True  # Fréchet and kernel distances in the encoder's feature space
    site_fidelity: bool = True  # does a site classifier recognise the intended site of synthetic patches?
    grid_per_cell: int = 4  # patches per (class, site) cell in the report's sample grids
    # Real patches loaded per (site, class) cell for the probes; None loads all. The evaluation keeps
    # its patches in memory (about 12 KiB each at 32 px), so full TCGA-UT needs a cap.
    max_real_per_cell: int | None = None


@dataclass
class BaselineConfig:
    """Diffusion models trained centrally in this process for configurations (c) and (e)."""

    class_only: bool = True  # (c): a class-only diffusion model on the pooled training patches
    central: bool = True  # (e): MeDi (class and site) trained centrally on the pooled training patches
    steps: int | None = None  # optimiser steps; None: rounds x local steps x sites, the federation's total
    scheduler: str | None = None  # sampler of the baselines, "ddim" or "dpmsolver++"; None: federation.sample_scheduler
    # CPU threads for training and sampling the baselines. More threads than free cores slow the tiny
    # model down: 10 steps took 4.7 s with 1 thread and 15.7 s with 2 on a 2-core machine under load.
    torch_threads: int = 1
    # Processes training the baselines side by side, each with torch_threads threads. 2 trains both
    # baselines at once: on a 2-core machine their stage took 124 s instead of 255 s. 1 trains them in turn.
    workers: int = 2


@dataclass
class EngineConfig:
    """Flower's simulation engine: a local SuperLink in simulation mode running the Ray backend."""

    client_cpus: int = 1  # Ray CPUs per ClientApp; sites train in parallel up to ray_cpus / client_cpus
    ray_cpus: int | None = None  # CPUs Ray may use; None: all of this machine's
    timeout_s: float = 6 * 3600.0  # give up on the federated run after this many seconds
    startup_timeout_s: float = 120.0  # seconds for the SuperLink to open its port (Flower starts in 2-10 s)


@dataclass
class SimConfig:
    """Everything one ``medi-sim`` run needs; the resolved copy is saved as ``RUN_DIR/config.yaml``."""

    run_dir: str = "runs/medi-sim/${now:%Y%m%d-%H%M%S}"
    seed: int = 0  # seeds the federation, the baselines and their samplers
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    federation: FederationSettings = MISSING
    privacy: PrivacySimConfig = MISSING
    evaluation: EvaluationSimConfig = MISSING
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


def data_presets() -> dict[str, DataConfig]:
    """Return the data presets: BRCA-M2C, the generated toy set, TCGA-UT folders and any patch folder."""
    return {
        "brca-m2c": DataConfig(),
        "toy": DataConfig(
            name="toy", path="", kind="toy", grouping="top_k", top_k=3, holdout_tss=["H1", "H2"],
        ),
        "tcga-ut": DataConfig(
            name="tcga-ut",
            path="",  # the user's TCGA-UT folder, set with data.path=...
            kind="tcga_ut",
            slide_metadata="../shared/data/tcga/all_slide_metadata.csv",
            grouping="top_k",
            top_k=8,
            holdout_tss=None,
            holdout_fraction=0.2,
        ),
        "folder": DataConfig(
            name="folder", path="", kind="auto", grouping="per_tss", top_k=None, holdout_tss=None, holdout_fraction=0.2,
        ),
    }


# Learning rate of the quick preset: 10x the deployment default (1e-4, the MeDi reference for long runs).
# The tiny model's evaluation loss on BRCA-M2C falls from 1.15 to 0.13 in 50 steps at 1e-3, while 1e-4
# leaves it untrained within the quick preset's 100 steps per site.
QUICK_LR = 1e-3
# Training target of the quick preset, from two default BRCA-M2C runs (seed 0). Epsilon prediction gave RGB noise
# with a grey-mauve mean in every synthetic set, and v-prediction gave pink-purple patches without nuclei. The
# Fréchet distance of the federated set to the real patches fell from 21.3 to 11.8 (docs/SIMULATION.md).
QUICK_PREDICTION_TYPE = "v_prediction"
# Noise schedule of the quick preset, chosen against pixel speckle in its samples. Speckle here is the mean absolute
# difference between a sample and its 3 x 3 box blur, in grey levels (real 32 px patches: 8.6). Trained centrally on
# the default run's pooled BRCA-M2C sites (tiny model, v-prediction, lr 1e-3, batch 8, 20 DDIM steps), the cosine
# schedule gave 16.7 after 100 steps and 10.9 after 400. Linear betas gave 28.1 and 14.0 (docs/SIMULATION.md).
QUICK_BETA_SCHEDULE = "squaredcos_cap_v2"


def federation_presets() -> dict[str, FederationSettings]:
    """Return the federation presets; ``quick`` fits a CPU laptop, ``default`` is the deployment default."""
    quick = FederationSettings(
        num_server_rounds=10,
        local_steps=10,  # 100 optimiser steps per site; the baselines get 100 x the number of sites
        batch_size=8,
        lr=QUICK_LR,
        prediction_type=QUICK_PREDICTION_TYPE,
        beta_schedule=QUICK_BETA_SCHEDULE,
        sample_steps=20,  # sampler steps of the sites' synthesis; the baselines sample with the same number
        grid_every=0,  # the report draws class x site grids of every synthetic set instead
        max_synthetic_per_cell=8,  # caps each (site, class) quota, so synthesis takes seconds on a CPU
        k_anonymity=2,  # BRCA-M2C sites hold 1-38 patches per class; k=5 would hide most cells
    )
    return {"quick": quick, "default": FederationSettings()}


def evaluation_presets() -> dict[str, EvaluationSimConfig]:
    """Return the evaluation presets; ``full`` adds the sweeps of the MeDi experiment."""
    full = EvaluationSimConfig(
        name="full",
        encoder=EncoderSimConfig(epochs=30),
        seeds=[0, 1, 2, 3, 4],
        sweeps={
            "synthetic_ratio": [0.25, 0.5, 1.0, 2.0],
            "real_per_class": [2, 5, 10, None],
            "num_train_sites": [1, 2, 3],
        },
    )
    return {"quick": EvaluationSimConfig(), "full": full}


def register_configs() -> None:
    """Register `SimConfig` and every preset in Hydra's ConfigStore."""
    register_core_configs()  # model/tiny, model/small, model/medi-paper
    register_federation_configs()  # federation/default
    store = ConfigStore.instance()
    store.store(name="medi_sim_schema", node=SimConfig)
    for name, node in data_presets().items():
        store.store(group="data", name=name, node=node)
    for name, node in federation_presets().items():
        store.store(group="federation", name=name, node=node)
    store.store(group="privacy", name="none", node=PrivacySimConfig())
    store.store(group="privacy", name="dp", node=PrivacySimConfig(name="dp", max_epsilon=8.0))
    for name, node in evaluation_presets().items():
        store.store(group="evaluation", name=name, node=node)


__all__ = [
    "BaselineConfig",
    "DataConfig",
    "EncoderSimConfig",
    "EngineConfig",
    "EvaluationSimConfig",
    "PrivacySimConfig",
    "QUICK_LR",
    "QUICK_PREDICTION_TYPE",
    "SimConfig",
    "data_presets",
    "evaluation_presets",
    "federation_presets",
    "register_configs",
]
