"""Tests of the central baselines: synthesis counts, noise seeds, class-only conditioning, generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medi_core.artifact import MediSampler
from medi_core.config import DiffusionConfig, model_preset
from medi_core.data import PatchDataset, open_patch_source
from medi_core.errors import ConfigError, FederationError
from medi_core.metadata import CategoricalField, MetadataSpec
from medi_core.model import build_model
from medi_server.settings import FederationSettings
from medi_sim.baselines import (
    CLASS_ONLY,
    MEDI_CENTRAL,
    cell_seed,
    class_only_spec,
    federated_diffusion_config,
    generate_cells,
    run_baselines,
    synthesis_counts,
)

SPEC = MetadataSpec((
    CategoricalField("class", ("lymphocyte", "stromal", "tumor_epithelial")),
    CategoricalField("site", ("A7", "AC")),
))


def _report(tmp_path: Path, synthesis: dict) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"synthesis": synthesis}))
    return path


def test_synthesis_counts_skip_empty_cells(tmp_path: Path) -> None:
    report = _report(tmp_path, {
        "AC": {"written": 3, "counts": {"AC": {"lymphocyte": 2, "tumor_epithelial": 1, "stromal": 0}}},
        "A7": {"written": 0, "counts": {"A7": {"stromal": 0}}},
    })
    assert synthesis_counts(report) == {"AC": {"lymphocyte": 2, "tumor_epithelial": 1}}


def test_synthesis_counts_site_error(tmp_path: Path) -> None:
    report = _report(tmp_path, {"AC": {"error": "no reply"}})
    with pytest.raises(FederationError, match="synthesis failed at site AC: no reply"):
        synthesis_counts(report)


def test_synthesis_counts_missing_report(tmp_path: Path) -> None:
    with pytest.raises(FederationError, match="did not finish"):
        synthesis_counts(tmp_path / "report.json")


def test_cell_seed_hand_computed() -> None:
    # crc32(b"AC/lymphocyte") = 4132875056; (4132875056 + 2) mod 2**31 = 1985391410.
    assert cell_seed(0, "AC", "lymphocyte", 2) == 1985391410


def test_class_only_spec_has_class_only() -> None:
    spec = class_only_spec(SPEC)
    assert spec.field_names == ["class"]
    assert spec.classes == SPEC.classes


def test_generate_cells_manifest(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sampler = MediSampler(build_model(model_preset("tiny"), SPEC), DiffusionConfig())
    settings = FederationSettings(sample_steps=2, sample_batch_size=4)
    manifest = generate_cells(sampler, {"AC": {"lymphocyte": 2, "tumor_epithelial": 1}}, tmp_path,
                              with_site=True, seed=0, scheduler="ddim", settings=settings)
    table = pd.read_csv(manifest)
    assert len(table) == 3
    assert table["site"].tolist() == ["AC", "AC", "AC"]
    assert table["class"].tolist() == ["lymphocyte", "lymphocyte", "tumor_epithelial"]
    assert table["seed"].tolist()[1] == cell_seed(0, "AC", "lymphocyte", 1)
    assert all((tmp_path / path).is_file() for path in table["path"])


@pytest.fixture(scope="module")
def brca_sites(shared_data: Path) -> tuple[dict[str, PatchDataset], MetadataSpec]:
    dataset = open_patch_source(shared_data / "patches" / "brca-m2c", image_size=32)
    spec = MetadataSpec.from_records(dataset.records.to_dict("records"))
    sites = dataset.records["site"].to_numpy()
    return {site: dataset.subset(np.flatnonzero(sites == site)) for site in ("A7", "AC")}, spec


def _baselines(sites: dict[str, PatchDataset], spec: MetadataSpec, out: Path, workers: int) -> dict:
    settings = FederationSettings(batch_size=4, sample_steps=2, sample_batch_size=4)
    return run_baselines(
        [CLASS_ONLY, MEDI_CENTRAL], sites, {"AC": {"lymphocyte": 2}}, out, federated_spec=spec,
        model_config=model_preset("tiny"), settings=settings, steps=2, seed=0, scheduler="ddim", workers=workers,
    )


def test_parallel_baselines_match_sequential(tmp_path: Path, brca_sites) -> None:
    sites, spec = brca_sites
    sequential = _baselines(sites, spec, tmp_path / "sequential", workers=1)
    parallel = _baselines(sites, spec, tmp_path / "parallel", workers=2)
    for name in (CLASS_ONLY, MEDI_CENTRAL):
        first = pd.read_csv(sequential[name].manifest)["path"].iloc[0]
        before = (sequential[name].manifest.parent / first).read_bytes()
        after = (parallel[name].manifest.parent / first).read_bytes()
        assert before == after, name


def test_baselines_reject_zero_workers(tmp_path: Path, brca_sites) -> None:
    sites, spec = brca_sites
    with pytest.raises(ConfigError, match="baselines.workers must be >= 1, got 0"):
        _baselines(sites, spec, tmp_path, workers=0)


def test_federated_diffusion_config_read(tmp_path: Path) -> None:
    MediSampler(build_model(model_preset("tiny"), SPEC), DiffusionConfig(prediction_type="v_prediction")).save_pretrained(tmp_path)
    assert federated_diffusion_config(tmp_path).prediction_type == "v_prediction"


def test_baseline_sampler_records_scheduler(tmp_path: Path, brca_sites) -> None:
    sites, spec = brca_sites
    settings = FederationSettings(batch_size=4, sample_steps=2, sample_batch_size=4)
    results = run_baselines(
        [MEDI_CENTRAL], sites, {"AC": {"lymphocyte": 1}}, tmp_path, federated_spec=spec,
        model_config=model_preset("tiny"), settings=settings, steps=1, seed=0, scheduler="dpmsolver++",
    )
    assert MediSampler.from_pretrained(results[MEDI_CENTRAL].sampler_dir).default_scheduler == "dpmsolver++"
