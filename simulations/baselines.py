"""Centrally trained diffusion baselines of the MeDi experiment, trained and sampled in this process.

- ``cls-only`` (configuration c): a model conditioned on the class only, as
  the class-conditional baseline of MeDi (Drexlin et al., MICCAI 2025);
- ``medi-central`` (configuration e): MeDi, conditioned on class and site with
  the federation's frozen vocabularies, trained on the pooled patches of all
  training sites, as if the hospitals could share their data.

Both train with the core `Trainer` on the concatenated site datasets for, by
default, as many optimiser steps as all sites of the federation made together
(rounds x local steps x sites). Both then generate exactly the (site, class)
cells and counts that the sites' synthesis wrote, from the same noise seeds, so
the three synthetic sets differ only in the model that painted them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medi_core.artifact import MediSampler
from medi_core.config import DiffusionConfig, ModelConfig, TrainConfig
from medi_core.data import PatchDataset, concat_datasets, iterate_batches
from medi_core.errors import FederationError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD, CategoricalField, MetadataSpec
from medi_core.sampling import to_uint8_images
from medi_core.training import build_trainer
from medi_server.settings import FederationSettings

logger = logging.getLogger(__name__)

CLASS_ONLY = "cls-only"
MEDI_CENTRAL = "medi-central"
MEDI_FEDERATED = "medi-fed"
MANIFEST_COLUMNS = ["path", "class", "site", "seed", "synthetic"]
SEED_STRIDE = 1_000_003  # a prime, so (base seed, cell) pairs map to distinct noise seeds

CellCounts = dict[str, dict[str, int]]  # site -> class -> patches


def synthesis_counts(report_path: Path) -> CellCounts:
    """Read the (site, class) counts the sites wrote, from the server's ``report.json``; raise if a site failed."""
    if not report_path.is_file():
        raise FederationError(f"{report_path} not found; the federated run did not finish")
    report = json.loads(report_path.read_text())
    synthesis = report.get("synthesis")
    if synthesis is None:
        raise FederationError(f"{report_path} has no synthesis results; run with federation.synthesize=true")
    counts: CellCounts = {}
    for site, result in sorted(synthesis.items()):
        if "error" in result:
            raise FederationError(f"synthesis failed at site {site}: {result['error']}")
        for site_value, per_class in result["counts"].items():
            for cls, count in per_class.items():
                if int(count) > 0:
                    counts.setdefault(site_value, {})[cls] = int(count)
    return counts


def cell_seed(base_seed: int, site: str, cls: str, index: int) -> int:
    """Noise seed of patch ``index`` of a (site, class) cell; the sites' synthesis uses the same formula."""
    return (base_seed * SEED_STRIDE + zlib.crc32(f"{site}/{cls}".encode()) + index) % 2**31


def class_only_spec(spec: MetadataSpec) -> MetadataSpec:
    """Return the federation's spec without its site and other fields: the class-only baseline's conditioning."""
    field = spec.categorical_field(spec.class_field)
    return MetadataSpec((CategoricalField(field.name, tuple(field.values), dropout=field.dropout),), class_field=spec.class_field)


@dataclass(frozen=True)
class BaselineResult:
    """Locations of a baseline's sampler and synthetic patches."""

    name: str
    sampler_dir: Path
    manifest: Path
    steps: int
    mean_loss: float  # mean diffusion loss over the training steps


def train_central(
    name: str,
    spec: MetadataSpec,
    pooled: PatchDataset,
    *,
    model_config: ModelConfig,
    settings: FederationSettings,
    steps: int,
    seed: int,
) -> MediSampler:
    """Train one model on the pooled patches; return it as a sampler holding the EMA weights."""
    train_config = TrainConfig(
        lr=settings.lr, batch_size=settings.batch_size, total_steps=steps,
        mixed_precision=settings.mixed_precision, seed=seed,
    )
    diffusion_config = DiffusionConfig()
    trainer = build_trainer(model_config, spec, train_config, diffusion_config)
    batches = iterate_batches(pooled, spec, train_config.batch_size, generator=torch.Generator().manual_seed(seed))
    result = trainer.train_steps(batches, steps, progress=True, description=f"train {name}")
    logger.info("baseline %s: %d steps on %d pooled patches, mean loss %.4f, %.1f s",
                name, result.steps, len(pooled), result.mean_loss, result.seconds)
    trainer.ema.copy_to(trainer.model)
    card = {"run_name": name, "sites": "pooled", "steps": steps, "data_counts": len(pooled),
            "mean_loss": result.mean_loss, "epsilon_per_site": "no differential privacy"}
    return MediSampler(trainer.model.eval(), diffusion_config, card, default_steps=settings.sample_steps)


def generate_cells(
    sampler: MediSampler,
    counts: CellCounts,
    out: Path,
    *,
    with_site: bool,
    seed: int,
    scheduler: str,
    settings: FederationSettings,
) -> Path:
    """Generate ``counts`` patches per (site, class) into ``out``; return the manifest (readable as a patch source)."""
    conditions, seeds, cells = [], [], []
    for site, per_class in sorted(counts.items()):
        for cls, count in sorted(per_class.items()):
            for index in range(count):
                conditions.append({CLASS_FIELD: cls, **({SITE_FIELD: site} if with_site else {})})
                seeds.append(cell_seed(seed, site, cls, index))
                cells.append((site, cls, index))
    out.mkdir(parents=True, exist_ok=True)
    images = sampler.generate(
        conditions, seeds, scheduler=scheduler, num_steps=settings.sample_steps,
        guidance_scale=settings.guidance_scale, batch_size=settings.sample_batch_size, progress=True,
    )  # (N, 3, H, W) in [-1, 1]
    rows = []
    for (site, cls, index), noise_seed, picture in zip(cells, seeds, to_uint8_images(images), strict=True):
        relative = Path(_safe(site)) / _safe(cls) / f"{index:05d}.png"
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        picture.save(out / relative, format="PNG")
        # The site column names the cell the patch fills, also for the class-only model that cannot see it.
        rows.append({"path": str(relative), "class": cls, "site": site, "seed": noise_seed, "synthetic": True})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _safe(value: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in value) or "_"


def run_baselines(
    names: Sequence[str],
    site_datasets: Mapping[str, PatchDataset],
    counts: CellCounts,
    out: Path,
    *,
    federated_spec: MetadataSpec,
    model_config: ModelConfig,
    settings: FederationSettings,
    steps: int,
    seed: int,
    scheduler: str,
    threads: int = 1,
) -> dict[str, BaselineResult]:
    """Train and sample each named baseline (``cls-only``, ``medi-central``) on the pooled site data."""
    pooled = concat_datasets(list(site_datasets.values()), image_size=model_config.sample_size)
    unknown = [name for name in names if name not in (CLASS_ONLY, MEDI_CENTRAL)]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected {CLASS_ONLY!r} or {MEDI_CENTRAL!r}")
    results: dict[str, BaselineResult] = {}
    with torch_threads(threads):
        for name in names:
            spec = class_only_spec(federated_spec) if name == CLASS_ONLY else federated_spec
            sampler = train_central(name, spec, pooled, model_config=model_config, settings=settings, steps=steps, seed=seed)
            folder = out / name
            sampler.save_pretrained(folder / "sampler")
            manifest = generate_cells(sampler, counts, folder / "synthetic", with_site=name == MEDI_CENTRAL,
                                      seed=seed, scheduler=scheduler, settings=settings)
            logger.info("baseline %s: sampler in %s, %d synthetic patches", name, folder / "sampler",
                        sum(sum(c.values()) for c in counts.values()))
            results[name] = BaselineResult(name, folder / "sampler", manifest, steps, float(sampler.card["mean_loss"]))
    return results


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads, then restore the previous number."""
    if count < 1:
        raise ValueError(f"baselines.torch_threads must be >= 1, got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


__all__ = [
    "CLASS_ONLY",
    "MEDI_CENTRAL",
    "MEDI_FEDERATED",
    "BaselineResult",
    "cell_seed",
    "class_only_spec",
    "generate_cells",
    "run_baselines",
    "synthesis_counts",
    "train_central",
]
