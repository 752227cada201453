"""Tests of the generated toy set: its planned gaps and its measurable class and site effects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from medi_sim.toy_data import cell_count, write_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, np.ndarray]:
    folder = write_toy_dataset(tmp_path_factory.mktemp("toy"), patches_per_cell=12)
    table = pd.read_csv(folder / "metadata.csv")
    images = np.stack([np.asarray(Image.open(folder / f), dtype=np.float32) / 255.0 for f in table["file"]])
    return table, images  # images (N, 64, 64, 3) in [0, 1]


def test_cell_count_planned_gaps() -> None:
    assert cell_count("T3", "lymphocyte", 12) == 0
    assert cell_count("T3", "tumour", 12) == 1
    assert cell_count("T1", "tumour", 12) == 18  # share 1.5


def test_toy_files_match_counts(toy: tuple[pd.DataFrame, np.ndarray]) -> None:
    table, images = toy
    assert len(table) == 142
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


def test_toy_folder_reused(tmp_path: Path) -> None:
    folder = write_toy_dataset(tmp_path, patches_per_cell=1)
    stamp = (folder / "metadata.csv").stat().st_mtime_ns
    write_toy_dataset(tmp_path, patches_per_cell=1)
    assert (folder / "metadata.csv").stat().st_mtime_ns == stamp
