"""Tests of the medi-sim Hydra configs: presets, overrides and the checks before a run starts."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from medi_core.config import DiffusionConfig
from medi_core.errors import ConfigError
from medi_core.evaluation.encoders import EncoderConfig
from medi_sim.config import QUICK_LR, EncoderSimConfig, SimConfig, register_configs
from medi_sim.pipeline import baseline_scheduler, baseline_steps, check_config, describe, federation_settings
from medi_sim.sites import SiteSplit
from medi_sim.tcga_split import plan_sites


def compose_config(*overrides: str) -> SimConfig:
    register_configs()
    with initialize_config_module(config_module="medi_sim.conf", version_base=None):
        config = compose(config_name="medi_sim", overrides=list(overrides))
    return OmegaConf.to_object(config)


def test_defaults_brca_split_by_tss() -> None:
    config = compose_config()
    assert config.data.name == "brca-m2c"
    assert config.data.grouping == "top_k"
    assert config.data.top_k == 3
    assert config.data.holdout_tss == ["OL", "PE", "S3", "WT", "XX"]


def test_defaults_quick_federation() -> None:
    config = compose_config()
    assert config.model.preset == "tiny"
    assert config.federation.num_server_rounds == 10
    assert config.federation.local_steps == 10
    assert config.federation.lr == QUICK_LR
    assert config.federation.sample_steps == 20
    assert config.baselines.workers == 2
    assert config.evaluation.encoder.kind == "cnn"


def test_quick_federation_trains_v_prediction() -> None:
    assert compose_config().federation.prediction_type == "v_prediction"


def test_quick_federation_uses_cosine_schedule() -> None:
    assert compose_config().federation.beta_schedule == "squaredcos_cap_v2"


def test_beta_schedule_override() -> None:
    assert compose_config("federation.beta_schedule=linear").federation.beta_schedule == "linear"


def test_invalid_beta_schedule_names_key() -> None:
    with pytest.raises(ConfigError, match="run config beta-schedule = 'cosine' is invalid"):
        compose_config("federation.beta_schedule=cosine")


def test_prediction_type_override() -> None:
    config = compose_config("federation.prediction_type=epsilon")
    assert config.federation.prediction_type == "epsilon"


def test_invalid_sample_scheduler_names_key() -> None:
    with pytest.raises(ConfigError, match="run config sample-scheduler = 'dpm' is invalid"):
        compose_config("federation.sample_scheduler=dpm")


def test_baseline_scheduler_follows_federation() -> None:
    config = compose_config("federation.sample_scheduler=dpmsolver++")
    assert config.baselines.scheduler is None
    assert baseline_scheduler(config) == "dpmsolver++"


def test_baseline_scheduler_override() -> None:
    config = compose_config("federation.sample_scheduler=dpmsolver++", "baselines.scheduler=ddim")
    assert baseline_scheduler(config) == "ddim"


def test_check_rejects_unknown_baseline_scheduler() -> None:
    config = compose_config("baselines.scheduler=dpm-solver++")
    with pytest.raises(ConfigError, match="baselines.scheduler='dpm-solver\\+\\+' is invalid"):
        check_config(config)


def test_model_override_reaches_federation() -> None:
    config = compose_config("model=small")
    assert config.federation.model_preset == "small"
    assert config.model.sample_size == 64


def test_seed_override_reaches_federation() -> None:
    config = compose_config("seed=7")
    assert config.federation.seed == 7


def test_field_override_and_presets() -> None:
    config = compose_config("data=toy", "evaluation=full", "privacy=dp", "federation.local_steps=9")
    assert config.data.kind == "toy"
    assert config.evaluation.sweeps["num_train_sites"] == [1, 2, 3]
    assert config.privacy.max_epsilon == 8.0
    assert config.federation.local_steps == 9


def test_encoder_mirror_matches_core() -> None:
    assert [f.name for f in fields(EncoderSimConfig)] == [f.name for f in fields(EncoderConfig)]


def test_encoder_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="evaluation.encoder.kind='vit'"):
        EncoderSimConfig(kind="vit").to_encoder_config()


def test_check_rejects_model_field_override() -> None:
    config = compose_config("model.block_out_channels=[16,32,32]")
    with pytest.raises(ConfigError, match="differ from preset 'tiny'"):
        check_config(config)


def test_check_rejects_preset_mismatch() -> None:
    config = compose_config("federation.model_preset=small")
    with pytest.raises(ConfigError, match="choose the model with model="):
        check_config(config)


def test_check_rejects_no_synthesis() -> None:
    config = compose_config("federation.synthesize=false")
    with pytest.raises(ConfigError, match="synthesize=false"):
        check_config(config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("baselines.steps=-5", "baselines.steps must be >= 1, or null"),
        ("baselines.workers=0", "baselines.workers must be >= 1, got 0"),
        ("baselines.torch_threads=0", "baselines.torch_threads must be >= 1, got 0"),
        ("evaluation.seeds=[]", "evaluation.seeds is empty"),
        ("evaluation.synthetic_ratio=-1", "evaluation.synthetic_ratio must be >= 0"),
        ("evaluation.real_per_class=0", "evaluation.real_per_class must be >= 1"),
        ("evaluation.num_train_sites=0", "evaluation.num_train_sites must be >= 1"),
        ("evaluation.max_real_per_cell=0", "evaluation.max_real_per_cell must be >= 1"),
        ("evaluation.encoder.kind=vit", "evaluation.encoder.kind='vit' is invalid"),
    ],
)
def test_check_rejects_invalid_later_stage_option(override: str, message: str) -> None:
    # These options are read only after the federation, so check_config must reject them before it starts.
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(override))


def test_check_accepts_quick_defaults() -> None:
    check_config(compose_config())
    check_config(compose_config("data=toy", "evaluation=full"))


def _split(tmp_path: Path, sites: list[str]) -> SiteSplit:
    plan = plan_sites(pd.Series({site: 5 for site in [*sites, "H"]}), holdout_tss=["H"])
    manifests = {site: tmp_path / site / "patches.csv" for site in sites}
    outputs = {site: tmp_path / site / "output" for site in sites}
    counts = pd.DataFrame(columns=["split", "site", "class", "count"])
    return SiteSplit(plan, manifests, outputs, tmp_path / "holdout.csv", tmp_path / "site-table.json", counts)


def test_federation_settings_run_paths(tmp_path: Path) -> None:
    settings = federation_settings(compose_config(), _split(tmp_path, ["A", "B", "C"]), tmp_path)
    assert settings.run_dir == str(tmp_path / "federation")
    assert settings.site_table == str(tmp_path / "site-table.json")


def test_federation_settings_lowers_min_clients(tmp_path: Path) -> None:
    config = compose_config("federation.min_clients=5")
    settings = federation_settings(config, _split(tmp_path, ["A", "B", "C"]), tmp_path)
    assert settings.min_clients == 3


def test_baseline_steps_match_federation_total() -> None:
    # 10 rounds x 10 local steps x 4 sites = 400 optimiser steps.
    assert baseline_steps(compose_config(), 4) == 400


def test_baseline_steps_explicit() -> None:
    assert baseline_steps(compose_config("baselines.steps=5"), 4) == 5


def test_describe_states_run_seed(tmp_path: Path) -> None:
    config = compose_config("seed=7")
    split = _split(tmp_path, ["A", "B", "C"])
    settings = federation_settings(config, split, tmp_path)
    lines = describe(config, split, settings, "cnn", 400, DiffusionConfig())
    seed_lines = [line for line in lines if line.startswith("Seed: ")]
    assert len(seed_lines) == 1
    assert seed_lines[0].startswith("Seed: 7 for the federation")
    assert "data.split_seed (0)" in seed_lines[0]


def test_check_rejects_added_unknown_key() -> None:
    # Hydra suggests '+key=value' for a misspelt key, and the structured config then keeps the key unread.
    config = compose_config("+federation.num_server_round=3")
    assert config.federation.num_server_rounds == 10
    expected = "unknown option federation.num_server_round, .* Did you mean federation.num_server_rounds\\?"
    with pytest.raises(ConfigError, match=expected):
        check_config(config)


def test_check_rejects_added_top_level_key() -> None:
    with pytest.raises(ConfigError, match="unknown option sead, .* Did you mean seed\\?"):
        check_config(compose_config("+sead=1"))


def test_check_accepts_documented_plus_keys() -> None:
    check_config(compose_config("+privacy.site_max_epsilon={AC:2.0}"))
    check_config(compose_config("+evaluation.encoder.timm_kwargs={init_values:1e-5}"))


def test_describe_counts_held_out_sites(tmp_path: Path) -> None:
    config = compose_config()
    rows = [
        ["train", "A", "tumour", 4],
        ["holdout", "H", "tumour", 2],
        ["holdout", "G", "tumour", 1],
        ["holdout", "G", "stroma", 3],
    ]
    counts = pd.DataFrame(rows, columns=["split", "site", "class", "count"])
    split = replace(_split(tmp_path, ["A", "B", "C"]), counts=counts)
    settings = federation_settings(config, split, tmp_path)
    lines = describe(config, split, settings, "cnn", 400, DiffusionConfig())
    assert "Held-out TSS codes: G (4 patches, 2 classes), H (2 patches, 1 class) (6 patches in all" in lines[1]


def test_check_rejects_timm_without_weights(tmp_path: Path) -> None:
    missing = tmp_path / "uni.bin"
    timm = ["evaluation.encoder.kind=timm", "evaluation.encoder.timm_model=vit_large_patch16_224"]
    with pytest.raises(ConfigError, match="needs evaluation.encoder.timm_model"):
        check_config(compose_config("evaluation.encoder.kind=timm", f"evaluation.encoder.weights_path={missing}"))
    with pytest.raises(ConfigError, match=f"evaluation.encoder.weights_path='{missing}' is not a file"):
        check_config(compose_config(*timm, f"evaluation.encoder.weights_path={missing}"))
    missing.write_bytes(b"")
    check_config(compose_config(*timm, f"evaluation.encoder.weights_path={missing}"))
