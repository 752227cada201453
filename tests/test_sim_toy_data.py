"""Tests of the generated toy set: its planned gaps, its class and site effects, and the site bias they cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import cross_val_score

from medi_core.evaluation import ALL_SITES, LabeledPatches, summarise_over_seeds
from medi_core.evaluation.metrics import WORST_SITE_BALANCED_ACCURACY
from medi_sim.config import EvaluationSimConfig, PrivacySimConfig, data_presets
from medi_sim.experiment import load_patches, run_experiment
from medi_sim.sites import prepare_sites
from medi_sim.toy_data import HELD_OUT_SITES, cell_count, paint_cells, write_toy_dataset

IMAGE_SIZE = 32  # px, as the tiny model and the default evaluation see the toy set
# What a perfect generator would add under the quick preset's balance plan ("max" policy, at most 8
# patches per cell): every class missing or short at a training site, in that site's stain. The
# "other" site merges T4 and T5, which share a standard stain, so T4 paints its cells.
PERFECT_FILL = {
    "T1": {"stroma": 8, "tumour": 8},
    "T2": {"lymphocyte": 8, "stroma": 8},
    "T3": {"lymphocyte": 8, "tumour": 8},
    "T4": {"lymphocyte": 8, "stroma": 8, "tumour": 8},
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, np.ndarray]:
    folder = write_toy_dataset(tmp_path_factory.mktemp("toy"), patches_per_cell=12)
    table = pd.read_csv(folder / "metadata.csv")
    images = np.stack([np.asarray(Image.open(folder / f), dtype=np.float32) / 255.0 for f in table["file"]])
    return table, images  # images (N, 64, 64, 3) in [0, 1]


def test_cell_count_planned_gaps() -> None:
    assert cell_count("T3", "lymphocyte", 12) == 0
    assert cell_count("T3", "tumour", 12) == 1
    assert cell_count("T1", "stroma", 12) == 0
    assert cell_count("T2", "lymphocyte", 12) == 0
    assert cell_count("T1", "lymphocyte", 12) == 18  # share 1.5


def test_toy_files_match_counts(toy: tuple[pd.DataFrame, np.ndarray]) -> None:
    table, images = toy
    # T1 24 + T2 24 + T3 19 + T4 9 + T5 6 + H1 18 + H2 18
    assert len(table) == 118
    assert images.shape[1:] == (64, 64, 3)


def _colour_features(images: np.ndarray) -> np.ndarray:
    return np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)  # (N, 6)


def _texture_features(images: np.ndarray) -> np.ndarray:
    grey = images.mean(axis=3)  # (N, S, S)
    dx = np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
    dy = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2))
    threshold = grey.mean(axis=(1, 2), keepdims=True) - grey.std(axis=(1, 2), keepdims=True)
    dark = (grey < threshold).mean(axis=(1, 2))
    return np.stack([dx, dy, np.abs(dx - dy), dark, grey.std(axis=(1, 2))], axis=1)  # (N, 5)


def test_site_effect_measurable(toy: tuple[pd.DataFrame, np.ndarray]) -> None:
    table, images = toy
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), _colour_features(images) * 10, table["site"], cv=3).mean()
    assert accuracy > 0.5  # 7 sites: chance is about 0.14


def test_class_effect_measurable(toy: tuple[pd.DataFrame, np.ndarray]) -> None:
    table, images = toy
    accuracy = cross_val_score(LogisticRegression(max_iter=2000), _texture_features(images) * 10, table["class"], cv=3).mean()
    assert accuracy > 0.8  # 3 classes: chance is about 0.33


def test_colour_shortcut_fails_on_held_out(toy: tuple[pd.DataFrame, np.ndarray]) -> None:
    table, images = toy
    held_out = table["site"].isin(HELD_OUT_SITES).to_numpy()
    features = images.mean(axis=(1, 2)) * 10  # (N, 3) mean colour
    model = LogisticRegression(max_iter=2000, class_weight="balanced").fit(features[~held_out], table["class"][~held_out])
    on_training = balanced_accuracy_score(table["class"][~held_out], model.predict(features[~held_out]))
    on_held_out = balanced_accuracy_score(table["class"][held_out], model.predict(features[held_out]))
    assert on_training > 0.8  # measured 0.93: mean colour predicts the class at the training sites
    assert on_held_out < 0.5  # measured 0.44: it misleads where every class has the same stain


def _as_patches(images: np.ndarray, labels: list[str], sites: list[str]) -> LabeledPatches:
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, 64, 64) in [-1, 1]
    tensor = F.interpolate(tensor, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return LabeledPatches(tensor, np.array(labels), np.array(sites), name="perfect")


@pytest.fixture(scope="module")
def worst_site(tmp_path_factory: pytest.TempPathFactory) -> pd.Series:
    """Worst-site balanced accuracy of the medi-sim evaluation: real only vs real plus perfectly painted cells."""
    split = prepare_sites(data_presets()["toy"], PrivacySimConfig(), tmp_path_factory.mktemp("run"), image_size=IMAGE_SIZE)
    train = load_patches(list(split.manifests.values()), image_size=IMAGE_SIZE, name="real")
    test = load_patches([split.holdout_manifest], image_size=IMAGE_SIZE, name="held-out")
    images, labels, sites = paint_cells(PERFECT_FILL, seed=7)
    perfect = _as_patches(images, labels, ["other" if s == "T4" else s for s in sites])
    options = EvaluationSimConfig(fidelity=False, site_fidelity=False, include_stain=False)
    summary = summarise_over_seeds(run_experiment(options, train, test, {"perfect": perfect}).results)
    rows = summary[(summary["site"] == ALL_SITES) & (summary["metric"] == WORST_SITE_BALANCED_ACCURACY)]
    return rows.set_index("configuration")["mean"]


def test_real_only_shows_site_bias(worst_site: pd.Series) -> None:
    assert worst_site["real"] < 0.7  # measured 0.556: H2, stained like the stroma site T3


def test_filled_cells_remove_site_bias(worst_site: pd.Series) -> None:
    assert worst_site["real+perfect"] > worst_site["real"] + 0.2  # measured 1.000
