"""The MeDi experiment of a simulation: downstream probes on held-out sites, fidelity, and the report folder.

Configurations (names as in the report's tables):

| name | training patches of the probe |
|---|---|
| ``real`` | (a) real patches of the training sites |
| ``real+stain`` | (b) plus HED stain-jittered copies |
| ``real+cls-only`` | (c) plus synthetic patches of a central class-only diffusion model |
| ``real+medi-fed`` | (d) plus the patches the sites generated with the federated MeDi sampler |
| ``real+medi-central`` | (e) plus synthetic patches of MeDi trained centrally on the pooled data |

Every probe is tested on the held-out TSS codes only. Synthetic sets fill the
same (site, class) cells with the same counts, so they compete on equal terms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medi_core.data import PatchDataset
from medi_core.errors import EvaluationError
from medi_core.evaluation import (
    EvaluationConfig,
    LabeledPatches,
    build_encoder,
    concat_patches,
    fidelity_table,
    run_configurations,
    run_sweep,
    site_fidelity,
)
from medi_core.metadata import CLASS_FIELD, SITE_FIELD
from medi_core.report import write_report
from medi_sim.config import EvaluationSimConfig
from medi_sim.sites import open_manifest

logger = logging.getLogger(__name__)

REAL_TRAIN = "real"
SYNTHETIC_ORDER = ("cls-only", "medi-fed", "medi-central")  # (c), (d), (e)


def cap_per_cell(dataset: PatchDataset, limit: int | None, *, seed: int) -> PatchDataset:
    """Keep at most ``limit`` random patches per (site, class) cell; None keeps every patch."""
    if limit is None:
        return dataset
    if limit < 1:
        raise EvaluationError(f"evaluation.max_real_per_cell must be >= 1 or null, got {limit}")
    records = dataset.records.assign(_row=np.arange(len(dataset)))
    shuffled = records.sample(frac=1.0, random_state=seed)
    kept = shuffled.groupby([SITE_FIELD, CLASS_FIELD], sort=False, dropna=False).head(limit)["_row"].to_numpy()
    return dataset.subset(np.sort(kept))


def load_patches(
    manifests: Sequence[Path], *, image_size: int, name: str, max_per_cell: int | None = None, seed: int = 0
) -> LabeledPatches:
    """Load manifests (site data, holdout or synthetic) into one `LabeledPatches` at ``image_size`` px."""
    parts = [
        LabeledPatches.from_dataset(
            cap_per_cell(open_manifest(path, image_size=image_size), max_per_cell, seed=seed),
            image_size=image_size, name=name,
        )
        for path in manifests
    ]
    if not parts:
        raise EvaluationError(f"no manifests to load for {name!r}")
    return parts[0] if len(parts) == 1 else concat_patches(parts, name=name)


def federated_synthetic_manifests(output_dirs: Sequence[Path], run_name: str) -> list[Path]:
    """Return the synthetic manifests the sites wrote (``OUTPUT_DIR/synthetic/<run-name>/manifest.csv``)."""
    found = [d / "synthetic" / run_name / "manifest.csv" for d in output_dirs]
    return [path for path in found if path.is_file()]


def evaluation_config(config: EvaluationSimConfig) -> EvaluationConfig:
    return EvaluationConfig(
        seeds=tuple(config.seeds),
        synthetic_ratio=config.synthetic_ratio,
        real_per_class=config.real_per_class,
        num_train_sites=config.num_train_sites,
        include_stain=config.include_stain,
    )


@dataclass
class ExperimentTables:
    """Everything the report shows, as tables."""

    results: pd.DataFrame
    sweeps: dict[str, pd.DataFrame]
    fidelity: pd.DataFrame | None
    site_fidelity: pd.DataFrame | None  # the federated set, for the report's table
    site_fidelity_all: pd.DataFrame | None  # every synthetic set, with a "synthetic" column
    encoder: str


def _valid_sweep_values(parameter: str, values: Sequence[Any], num_sites: int) -> list[Any]:
    if parameter != "num_train_sites":
        return list(values)
    in_range = [v for v in values if v is None or 1 <= int(v) <= num_sites]
    if len(in_range) < len(values):
        logger.warning("sweep num_train_sites: dropping %s, there are only %d training sites",
                       sorted(set(values) - set(in_range), key=str), num_sites)
    return in_range


def run_experiment(
    config: EvaluationSimConfig,
    train: LabeledPatches,
    test: LabeledPatches,
    synthetic: Mapping[str, LabeledPatches],
) -> ExperimentTables:
    """Build the encoder, score every configuration and sweep, and measure fidelity."""
    encoder = build_encoder(config.encoder.to_encoder_config(), train)
    options = evaluation_config(config)
    results = run_configurations(train, test, synthetic, encoder=encoder, config=options)
    sweeps = {}
    for parameter, values in config.sweeps.items():
        valid = _valid_sweep_values(parameter, values, len(train.site_names))
        if valid:
            sweeps[parameter] = run_sweep(train, test, synthetic, encoder=encoder, parameter=parameter, values=valid, config=options)
    fidelity = fidelity_table(train, synthetic, encoder=encoder) if config.fidelity and synthetic else None
    per_set = {}
    if config.site_fidelity:
        for name, patches in synthetic.items():
            per_set[name] = site_fidelity(train, patches, encoder=encoder).assign(synthetic=name)
    site_table = per_set.get("medi-fed")
    every_set = pd.concat(per_set.values(), ignore_index=True) if per_set else None
    return ExperimentTables(results, sweeps, fidelity, site_table, every_set, encoder.name)


def write_run_report(
    folder: Path,
    tables: ExperimentTables,
    *,
    config: Mapping[str, Any],
    metrics: Path | None,
    samples: Mapping[str, LabeledPatches],
    description: Sequence[str],
    synthesis_table: pd.DataFrame,
    requested_cells: Mapping[str, CellRequests] | None = None,
    grid_per_cell: int = 4,
) -> Path:
    """Write the report folder with `medi_core.report.write_report` plus the simulation's own tables."""
    folder.mkdir(parents=True, exist_ok=True)
    synthesis_table.to_csv(folder / "synthesis_counts.csv", index=False)
    if tables.site_fidelity_all is not None:
        tables.site_fidelity_all.to_csv(folder / "site_fidelity_all_sets.csv", index=False)
    return write_report(
        folder,
        title="MeDi-Fed simulation",
        config=config,
        results=tables.results,
        sweeps=tables.sweeps,
        fidelity=tables.fidelity,
        site_fidelity=tables.site_fidelity,
        metrics=metrics if metrics is not None and metrics.is_file() else None,
        samples=samples,
        description=description,
        requested_cells=requested_cells,
        grid_per_cell=grid_per_cell,
    )


CellRequests = dict[tuple[str, str], int]  # (class, site) -> patches requested


def planned_requests(balance_plan: Path) -> CellRequests | None:
    """Read the patches the server's balance plan requested per (class, site) from ``balance_plan.json``.

    Returns None, with a warning, when the file is missing, so the report then
    cannot tell cells that were not requested from failed ones.
    """
    if not balance_plan.is_file():
        logger.warning("%s not found; the sample grids cannot mark cells that were not requested", balance_plan)
        return None
    deficits = json.loads(balance_plan.read_text()).get("deficits", {})
    return {(cls, site): int(count) for site, per_class in deficits.items() for cls, count in per_class.items()}


def requests_from_counts(counts: Mapping[str, Mapping[str, int]]) -> CellRequests:
    """Turn ``{site: {class: n}}`` (what a baseline was asked to generate) into (class, site) requests."""
    return {(cls, site): int(count) for site, per_class in counts.items() for cls, count in per_class.items()}


def synthesis_rows(counts_by_set: Mapping[str, Mapping[str, Mapping[str, int]]]) -> pd.DataFrame:
    """Long table ``synthetic, site, class, count`` of the patches each synthetic set holds."""
    rows = [
        {"synthetic": name, "site": site, "class": cls, "count": count}
        for name, counts in counts_by_set.items()
        for site, per_class in sorted(counts.items())
        for cls, count in sorted(per_class.items())
    ]
    return pd.DataFrame(rows, columns=["synthetic", "site", "class", "count"])


def cell_counts(patches: LabeledPatches) -> dict[str, dict[str, int]]:
    """``{site: {class: n}}`` of a patch set."""
    counts: dict[str, dict[str, int]] = {}
    for (label, site), count in patches.cell_counts().items():
        counts.setdefault(site, {})[label] = count
    return counts


__all__ = [
    "ExperimentTables",
    "REAL_TRAIN",
    "SYNTHETIC_ORDER",
    "cell_counts",
    "evaluation_config",
    "federated_synthetic_manifests",
    "cap_per_cell",
    "load_patches",
    "planned_requests",
    "requests_from_counts",
    "run_experiment",
    "synthesis_rows",
    "write_run_report",
]
