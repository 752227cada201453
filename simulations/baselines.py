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
import functools
import json
import logging
import math
import multiprocessing
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from medi_core.artifact import MediSampler
from medi_core.config import DiffusionConfig, ModelConfig, TrainConfig, config_from_dict
from medi_core.data import PatchDataset, concat_datasets, iterate_batches
from medi_core.errors import ConfigError, FederationError
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
    train_seconds: float = math.nan  # wall time of the training steps


def federated_diffusion_config(sampler_dir: Path) -> DiffusionConfig:
    """Read the diffusion process (betas, prediction target) of the federation's sampler, for the baselines to match."""
    config_path = sampler_dir / "config.json"
    if not config_path.is_file():
        raise FederationError(f"{config_path} not found; the federated run wrote no sampler")
    return config_from_dict(DiffusionConfig, json.loads(config_path.read_text())["diffusion"])


def train_central(
    name: str,
    spec: MetadataSpec,
    pooled: PatchDataset,
    *,
    model_config: ModelConfig,
    settings: FederationSettings,
    steps: int,
    seed: int,
    diffusion_config: DiffusionConfig | None = None,
    progress: bool = True,
) -> MediSampler:
    """Train one model on the pooled patches; return it as a sampler holding the EMA weights."""
    train_config = TrainConfig(
        lr=settings.lr, batch_size=settings.batch_size, total_steps=steps,
        mixed_precision=settings.mixed_precision, seed=seed,
    )
    diffusion_config = diffusion_config or DiffusionConfig()
    trainer = build_trainer(model_config, spec, train_config, diffusion_config)
    batches = iterate_batches(pooled, spec, train_config.batch_size, generator=torch.Generator().manual_seed(seed))
    result = trainer.train_steps(batches, steps, progress=progress, description=f"train {name}")
    logger.info("baseline %s: %d steps on %d pooled patches, mean loss %.4f, %.1f s",
                name, result.steps, len(pooled), result.mean_loss, result.seconds)
    trainer.ema.copy_to(trainer.model)
    card = {"run_name": name, "sites": "pooled", "steps": steps, "data_counts": len(pooled),
            "mean_loss": result.mean_loss, "train_seconds": result.seconds, "epsilon_per_site": "no differential privacy"}
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
    progress: bool = True,
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
        guidance_scale=settings.guidance_scale, batch_size=settings.sample_batch_size, progress=progress,
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


def train_and_sample(
    name: str,
    spec: MetadataSpec,
    pooled: PatchDataset,
    counts: CellCounts,
    out: Path,
    *,
    model_config: ModelConfig,
    settings: FederationSettings,
    steps: int,
    seed: int,
    scheduler: str,
    threads: int,
    diffusion_config: DiffusionConfig | None,
    progress: bool,
) -> BaselineResult:
    """Train one baseline, save its sampler to ``out/<name>/sampler`` and generate ``counts`` into ``out/<name>/synthetic``."""
    with torch_threads(threads):
        sampler = train_central(name, spec, pooled, model_config=model_config, settings=settings, steps=steps,
                                seed=seed, diffusion_config=diffusion_config, progress=progress)
        folder = out / name
        sampler.default_scheduler = scheduler  # the saved sampler then records how its patches were drawn
        sampler.save_pretrained(folder / "sampler")
        manifest = generate_cells(sampler, counts, folder / "synthetic", with_site=name == MEDI_CENTRAL,
                                  seed=seed, scheduler=scheduler, settings=settings, progress=progress)
    return BaselineResult(name, folder / "sampler", manifest, steps, float(sampler.card["mean_loss"]),
                          float(sampler.card["train_seconds"]))


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
    workers: int = 1,
    diffusion_config: DiffusionConfig | None = None,
) -> dict[str, BaselineResult]:
    """Train and sample each named baseline (``cls-only``, ``medi-central``) on the pooled site data.

    ``diffusion_config`` should be the federation's (`federated_diffusion_config`),
    so the baselines learn the same noise schedule and prediction target.
    With ``workers`` > 1 the baselines train side by side in spawned
    processes of ``threads`` CPU threads each. Every baseline seeds its own
    generators, so the weights and patches are the same as one after the other.
    """
    unknown = [name for name in names if name not in (CLASS_ONLY, MEDI_CENTRAL)]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; expected {CLASS_ONLY!r} or {MEDI_CENTRAL!r}")
    if workers < 1:
        raise ConfigError(f"baselines.workers must be >= 1, got {workers}")
    pooled = concat_datasets(list(site_datasets.values()), image_size=model_config.sample_size)
    parallel = workers > 1 and len(names) > 1
    jobs = {
        name: functools.partial(
            train_and_sample, name, class_only_spec(federated_spec) if name == CLASS_ONLY else federated_spec,
            pooled, counts, out, model_config=model_config, settings=settings, steps=steps, seed=seed,
            scheduler=scheduler, threads=threads, diffusion_config=diffusion_config,
            progress=not parallel,  # progress bars of several processes would garble one terminal
        )
        for name in names
    }
    if parallel:
        logger.info("training baselines %s in %d processes", list(names), min(workers, len(names)))
        results = _run_in_processes(jobs, min(workers, len(names)))
    else:
        results = {name: job() for name, job in jobs.items()}
    written = sum(sum(per_class.values()) for per_class in counts.values())
    for result in results.values():
        logger.info("baseline %s: %d steps on %d pooled patches, mean loss %.4f, %.1f s; sampler in %s, %d synthetic patches",
                    result.name, result.steps, len(pooled), result.mean_loss, result.train_seconds, result.sampler_dir, written)
    return results


def _run_in_processes(jobs: Mapping[str, Callable[[], BaselineResult]], workers: int) -> dict[str, BaselineResult]:
    """Run each job in a spawned process; an error or Ctrl-C in any of them terminates all.

    Spawn, not fork: a forked child of a process whose torch thread pools are
    running can deadlock.
    """
    pool = multiprocessing.get_context("spawn").Pool(processes=workers)
    try:
        pending = {name: pool.apply_async(job) for name, job in jobs.items()}
        results = {name: result.get() for name, result in pending.items()}
        pool.close()  # every job is done: let the workers exit on their own
        return results
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


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
    "federated_diffusion_config",
    "generate_cells",
    "run_baselines",
    "train_and_sample",
    "synthesis_counts",
    "train_central",
]
