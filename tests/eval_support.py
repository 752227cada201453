"""Real BRCA-M2C patches as in-memory `LabeledPatches` for the evaluation tests (test helper)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from medi_core.evaluation.patches import LabeledPatches

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRCA = DATA / "patches" / "brca-m2c"
IMAGE_SIZE = 32  # px; small enough that 120 patches load and embed in seconds


def require_brca_dataset():  # -> medi_core.data.PatchDataset
    """Open the 120 BRCA-M2C patches at 32 px, or skip the calling test when the shared data is absent."""
    if not (BRCA / "metadata.csv").is_file():
        pytest.skip(f"real test data not found at {BRCA}; the shared data folder is missing")
    from medi_core.data import open_patch_source

    return open_patch_source(BRCA, image_size=IMAGE_SIZE)


@functools.cache
def load_brca_patches() -> LabeledPatches:
    """All 120 BRCA-M2C patches with their dominant cell class and TSS code.

    Decoded once per test session and shared, so callers must not modify the images in place.
    """
    return LabeledPatches.from_dataset(require_brca_dataset(), name="brca")
