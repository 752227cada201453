"""Tests of the run report folder (tables, plots, markdown summary) built from a real BRCA-M2C evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from eval_support import require_brca_dataset
from PIL import Image

from medi_core.evaluation import (
    ALL_SITES,
    SUMMARY_METRICS,
    EvaluationConfig,
    LabeledPatches,
    RandomConvEncoder,
    fidelity_table,
    run_configurations,
    run_sweep,
    site_fidelity,
    stain_augment,
)
from medi_core.report_plots import PLACEHOLDER_GREY, empty_cell_label, per_site_accuracy_figure, sample_grid
from medi_core.report import compare_with_real, downstream_overview, markdown_table, read_metrics, write_report
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


def _summary(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """A `summarise_over_seeds`-shaped table from (configuration, metric, mean, sem) rows, all on ALL_SITES."""
    return pd.DataFrame(
        [{"configuration": c, "site": ALL_SITES, "metric": m, "mean": mean, "sem": sem, "n_seeds": 3} for c, m, mean, sem in rows]
    )


# A misleading case from a real run: real+stain has the highest worst-site value but the lowest
# balanced accuracy and a negative MCC.
USER_CASE = _summary([
    ("real", "balanced_accuracy", 0.472, 0.0),
    ("real", "worst_site_balanced_accuracy", 0.0, 0.0),
    ("real", "mcc", 0.249, 0.0),
    ("real+stain", "balanced_accuracy", 0.315, 0.024),
    ("real+stain", "worst_site_balanced_accuracy", 0.111, 0.111),
    ("real+stain", "mcc", -0.064, 0.053),
    ("real+medi-fed", "balanced_accuracy", 0.500, 0.0),
    ("real+medi-fed", "worst_site_balanced_accuracy", 0.0, 0.0),
    ("real+medi-fed", "mcc", 0.369, 0.0),
])


def _verdicts(summary: pd.DataFrame) -> dict[tuple[str, str], str]:
    table = compare_with_real(summary)
    return {(row.configuration, row.metric): row.verdict for row in table.itertuples(index=False)}


def test_compare_lower_beyond_noise() -> None:
    # 0.315 - 0.472 = -0.157; combined SEM sqrt(0.024^2 + 0) = 0.024; |-0.157| > 2 x 0.024.
    assert _verdicts(USER_CASE)[("real+stain", "balanced_accuracy")] == "lower"


def test_compare_within_noise() -> None:
    # +0.111 against a combined SEM of 0.111: within 2 x SEM.
    assert _verdicts(USER_CASE)[("real+stain", "worst_site_balanced_accuracy")] == "within noise"


def test_compare_no_seed_variation() -> None:
    # 0.369 - 0.249 with both SEMs 0: every seed gave the same value, so noise cannot be judged.
    assert _verdicts(USER_CASE)[("real+medi-fed", "mcc")] == "no seed variation"


def test_compare_same_value() -> None:
    assert _verdicts(USER_CASE)[("real+medi-fed", "worst_site_balanced_accuracy")] == "same"


def test_compare_ignores_rounding() -> None:
    # The SEM of identical per-seed values can come out as 1e-17 instead of 0.
    summary = _summary([("real", "mcc", 0.249, 0.0), ("real+x", "mcc", 0.249 + 1e-17, 1e-17)])
    assert _verdicts(summary)[("real+x", "mcc")] == "same"


def test_compare_higher_hand_computed() -> None:
    summary = _summary([("real", "mcc", 0.50, 0.03), ("real+x", "mcc", 0.62, 0.04)])
    table = compare_with_real(summary).set_index("configuration")
    # difference 0.12, combined SEM sqrt(0.03^2 + 0.04^2) = 0.05, and 0.12 > 2 x 0.05.
    assert table.loc["real+x", "difference"] == pytest.approx(0.12)
    assert table.loc["real+x", "combined_sem"] == pytest.approx(0.05)
    assert table.loc["real+x", "verdict"] == "higher"


def test_compare_one_seed() -> None:
    summary = _summary([("real", "mcc", 0.50, math.nan), ("real+x", "mcc", 0.62, math.nan)])
    assert _verdicts(summary)[("real+x", "mcc")] == "one seed"


def test_compare_without_real_is_empty() -> None:
    assert compare_with_real(_summary([("real+x", "mcc", 0.62, 0.01)])).empty


def test_summary_names_no_best_configuration(tmp_path: Path) -> None:
    values = {"real": (0.47, 0.47, 0.47), "real+stain": (0.30, 0.34, 0.31)}  # per seed
    results = pd.DataFrame([
        {"configuration": c, "seed": seed, "site": site, "metric": metric, "value": v, "n_real": 10, "n_added": 0}
        for c, per_seed in values.items()
        for seed, v in enumerate(per_seed)
        for site, metric in [(ALL_SITES, m) for m in SUMMARY_METRICS] + [("S1", "balanced_accuracy")]
    ])
    text = write_report(tmp_path, results=results).read_text()
    assert "best" not in text
    assert "- real+stain against real only: lower on balanced accuracy, site-averaged balanced accuracy, worst-site balanced accuracy, MCC." in text


def test_report_writes_comparison(report: Path) -> None:
    table = pd.read_csv(report / "comparison_with_real.csv")
    assert set(table["configuration"]) == {"real+stain", "real+jitter"}


def _per_site_summary() -> pd.DataFrame:
    rows = [
        ("real", "S1", "balanced_accuracy", 0.0), ("real", "S2", "balanced_accuracy", 0.5),
        ("real+x", "S1", "balanced_accuracy", 0.25), ("real+x", "S2", "balanced_accuracy", 0.0),
        ("real", ALL_SITES, "site_balanced_accuracy", 0.25), ("real+x", ALL_SITES, "site_balanced_accuracy", 0.125),
    ]
    return pd.DataFrame([{"configuration": c, "site": s, "metric": m, "mean": v, "sem": 0.0, "n_seeds": 3} for c, s, m, v in rows])


def test_per_site_plot_draws_chance_line() -> None:
    figure = per_site_accuracy_figure(_per_site_summary(), num_classes=3)
    levels = [tuple(line.get_ydata()) for line in figure.axes[0].lines if line.get_linestyle() == "--"]
    plt.close(figure)
    assert levels == [(1 / 3, 1 / 3)]


def test_per_site_plot_labels_zero_bars() -> None:
    figure = per_site_accuracy_figure(_per_site_summary(), num_classes=3)
    zeros = [text for text in figure.axes[0].texts if text.get_text() == "0"]
    plt.close(figure)
    assert len(zeros) == 2  # real at S1 and real+x at S2


def test_report_mentions_chance_level(report: Path) -> None:
    assert "The dashed line is chance level (1/3)." in (report / "summary.md").read_text()


@pytest.mark.parametrize(("requested", "label"), [(None, "no\npatches"), (0, "not\nrequested"), (8, "failed\n0 of 8")])
def test_empty_cell_label(requested: int | None, label: str) -> None:
    assert empty_cell_label(requested) == label


def _one_patch_set() -> LabeledPatches:
    return LabeledPatches(torch.zeros(1, 3, 8, 8), np.array(["tumour"]), np.array(["S1"]), name="synthetic")


def _grey_pixels(path: Path) -> int:
    with Image.open(path) as image:
        return int((np.asarray(image.convert("RGB")) == PLACEHOLDER_GREY).all(axis=2).sum())


def test_sample_grid_marks_empty_cells(tmp_path: Path) -> None:
    path = sample_grid(_one_patch_set(), tmp_path / "grid.png", classes=["stroma", "tumour"], sites=["S1"])
    assert _grey_pixels(path) > 0  # the stroma cell gets a placeholder tile


def test_sample_grid_full_has_no_placeholder(tmp_path: Path) -> None:
    path = sample_grid(_one_patch_set(), tmp_path / "grid.png")
    assert _grey_pixels(path) == 0


def test_report_counts_failed_cells(tmp_path: Path) -> None:
    requested = {"synthetic": {("tumour", "S1"): 2, ("stroma", "S1"): 3, ("stroma", "S2"): 0}}
    text = write_report(tmp_path, samples={"synthetic": _one_patch_set()}, requested_cells=requested).read_text()
    assert "*failed* is a requested cell without any written patch: 1 of the 2 requested cells." in text
