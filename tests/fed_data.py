"""Real BRCA-M2C patches split by tissue source site into one manifest CSV per site (test helper)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRCA = DATA / "patches" / "brca-m2c"


def require_brca() -> Path:
    """The BRCA-M2C folder, or skip the calling test when the shared data is absent."""
    if not (BRCA / "metadata.csv").is_file():
        pytest.skip(f"real test data not found at {BRCA}; the shared data folder is missing")
    return BRCA


def write_site_manifests(out: Path, sites: Sequence[str]) -> dict[str, Path]:
    """One manifest per TSS code with absolute image paths; returns site -> manifest path."""
    table = pd.read_csv(require_brca() / "metadata.csv")
    out.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for site in sites:
        part = table[table["tss_site"] == site].copy()
        part["file"] = [str(BRCA / f) for f in part["file"]]
        path = out / f"{site}.csv"
        part.to_csv(path, index=False)
        manifests[site] = path
    return manifests
