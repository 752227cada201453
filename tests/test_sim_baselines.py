"""Tests of the central baselines: synthesis counts, noise seeds, class-only conditioning, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from medi_core.artifact import MediSampler
from medi_core.config import DiffusionConfig, model_preset
from medi_core.errors import FederationError
from medi_core.metadata import CategoricalField, MetadataSpec
from medi_core.model import build_model
from medi_server.settings import FederationSettings
from medi_sim.baselines import cell_seed, class_only_spec, generate_cells, synthesis_counts

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
