"""Tests of the run report folder (tables, plots, markdown summary) built from a real BRCA-M2C evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from eval_support import require_brca_dataset
from PIL import Image

from medi_core.evaluation import (
    ALL_SITES,
    EvaluationConfig,
    RandomConvEncoder,
    fidelity_table,
    run_configurations,
    run_sweep,
    site_fidelity,
    stain_augment,
)
from medi_core.report import downstream_overview, markdown_table, read_metrics, write_report
from medi_sim.tcga_split import evaluation_patches, plan_sites_for_records

HOLDOUT = ["OL", "PE", "S3", "WT", "XX"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset = require_brca_dataset()
    plan = plan_sites_for_records(dataset.records, grouping="top_k", top_k=3, holdout_tss=HOLDOUT)
    train, test = evaluation_patches(dataset, plan)
    synthetic = {"jitter": stain_augment(train, 40, rng=np.random.default_rng(0))}
    encoder = RandomConvEncoder()
    config = EvaluationConfig(seeds=(0, 1))
    folder = tmp_path_factory.mktemp("report")
    metrics = folder / "sites.jsonl"
    rows = [
        {"round": r, "site": s, "train_loss": 1.0 / r, "epsilon": 0.5 * r if s == "AC" else None}
        for r in (1, 2) for s in ("A7", "AC")
    ]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_report(
        folder,
        title="BRCA-M2C test run",
        config={"data": "brca-m2c", "seeds": [0, 1]},
        results=run_configurations(train, test, synthetic, encoder=encoder, config=config),
        sweeps={"synthetic_ratio": run_sweep(
            train, test, synthetic, encoder=encoder, parameter="synthetic_ratio", values=[0.1, 0.3],
            config=EvaluationConfig(seeds=(0, 1), include_stain=False),
        )},
        fidelity=fidelity_table(train, synthetic, encoder=encoder, num_subsets=5),
        site_fidelity=site_fidelity(train, synthetic["jitter"], encoder=encoder),
        metrics=metrics,
        samples=synthetic,
        description=["data: BRCA-M2C, 4 training sites", f"encoder: {encoder.name}"],
    )
    return folder


@pytest.mark.parametrize("name", [
    "summary.md", "config.json", "downstream_results.csv", "downstream_summary.csv", "per_site_accuracy.png",
    "sweep_synthetic_ratio.csv", "sweep_synthetic_ratio.png", "fidelity.csv", "site_fidelity.csv",
    "training_rounds.png", "samples_jitter.png",
])
def test_report_writes_file(report: Path, name: str) -> None:
    assert (report / name).is_file()


def test_report_plots_are_images(report: Path) -> None:
    for name in ("per_site_accuracy.png", "training_rounds.png", "samples_jitter.png", "sweep_synthetic_ratio.png"):
        with Image.open(report / name) as image:
            assert image.width > 100, name


def test_report_summary_lists_configurations(report: Path) -> None:
    text = (report / "summary.md").read_text()
    for configuration in ("| real |", "| real+stain |", "| real+jitter |"):
        assert configuration in text


def test_report_summary_names_test_sites(report: Path) -> None:
    assert "Held-out test sites: OL, PE, S3, WT, XX." in (report / "summary.md").read_text()


def test_report_summary_explains_metrics(report: Path) -> None:
    text = (report / "summary.md").read_text()
    assert "Worst-site balanced accuracy" in text
    assert "standard error of the mean over seeds" in text


def test_report_overview_matches_results(report: Path) -> None:
    results = pd.read_csv(report / "downstream_results.csv")
    values = results[(results["configuration"] == "real+stain") & (results["site"] == ALL_SITES) & (results["metric"] == "mcc")]
    mean = values["value"].mean()
    sem = values["value"].std(ddof=1) / math.sqrt(2)
    summary = pd.read_csv(report / "downstream_summary.csv")
    overview = downstream_overview(summary).set_index("configuration")
    assert overview.loc["real+stain", "MCC"] == f"{mean:.3f} ± {sem:.3f}"


def test_markdown_table_format() -> None:
    table = pd.DataFrame({"a": ["x|y", "z"], "b": [0.12345, math.nan]})
    assert markdown_table(table) == "| a | b |\n|---|---|\n| x\\|y | 0.123 |\n| z | – |"


def test_read_metrics_jsonl(report: Path) -> None:
    table = read_metrics(report / "sites.jsonl")
    assert len(table) == 4
    assert table["epsilon"].isna().sum() == 2


def test_report_without_privacy(tmp_path: Path) -> None:
    metrics = pd.DataFrame({"round": [1, 2], "train_loss": [0.9, 0.7]})
    summary = write_report(tmp_path, metrics=metrics, description=["training only"])
    assert (tmp_path / "training_rounds.png").is_file()
    assert "training only" in summary.read_text()
