"""Real BRCA-M2C patches split by tissue source site into one manifest CSV per site, and round configs (test helper)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medi_core import protocol as P
from medi_core.config import DiffusionConfig, TrainConfig, model_preset

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


def round_config(spec, *, batch_size: int = 2, local_steps: int = 1, total_steps: int = 4, server_round: int = 1,
                 run_name: str = "test-run", holdout_fraction: float = 0.1) -> dict[str, Any]:
    """A train message's config for the ``tiny`` preset, as the server sends it."""
    return {
        P.SERVER_ROUND: server_round,
        P.MODEL_CONFIG: json.dumps(asdict(model_preset("tiny"))),
        P.DIFFUSION_CONFIG: json.dumps(asdict(DiffusionConfig())),
        P.TRAIN_CONFIG: json.dumps(asdict(TrainConfig(batch_size=batch_size, total_steps=total_steps))),
        P.METADATA_SPEC: spec.to_json(),
        P.LOCAL_STEPS: local_steps,
        P.RUN_NAME: run_name,
        P.HOLDOUT_FRACTION: holdout_fraction,
        P.HOLDOUT_SEED: 0,
    }
