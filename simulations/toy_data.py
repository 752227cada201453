"""A generated H&E-like patch set whose site effect confounds class, for machines without real data.

This is not histopathology. Each 64 px patch is painted from two stain
concentration maps (haematoxylin for nuclei, eosin for cytoplasm and fibres)
turned into RGB with the Beer-Lambert law,
``rgb = 255 * exp(-(s_H * c_H * h + s_E * c_E * e + b))`` (Ruifrok & Johnston
2001), where ``h`` and ``e`` are the stain optical-density vectors, ``s_H`` and
``s_E`` a site's stain strengths and ``b`` its background optical density.
Three effects are built in on purpose:

- **class** (tissue texture): ``lymphocyte`` = many small round dark nuclei;
  ``tumour`` = fewer large, irregular, paler nuclei; ``stroma`` = eosin fibres
  in one direction with a few spindle-shaped nuclei;
- **site** (staining and scanning): every site has its own stain vectors,
  stain strengths and background tint (`SITE_STYLES`): T1 is haematoxylin-heavy
  (purple), T2 eosin-heavy (pink), T3 faded with a yellow cast;
- **site confounds class** (`CELL_SHARE`): each large training site is
  dominated by one class and lacks another (T1: mostly lymphocytes, no stroma;
  T2: mostly tumour, no lymphocytes; T3: stroma, one tumour patch and no
  lymphocytes, as site AC of BRCA-M2C). A classifier trained on the real
  patches can therefore lean on colour, and that shortcut fails on the held-out
  sites: H1 is stained like T1 and H2 like T3, but both hold all three classes
  in equal numbers.

The missing (site, class) cells are exactly what a site-conditioned generator
should fill: patches of every class in every site's stain break the link
between colour and class. ``tests/test_sim_toy_data.py`` measures all three
effects, the shortcut's failure on the held-out sites, and that painting the
missing cells with this module (a perfect generator) removes most of it.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

PATCH_SIZE = 64  # px; the tiny model trains at 32 px, the small one at 64 px
CLASSES = ("lymphocyte", "stroma", "tumour")
METADATA_FILE = "metadata.csv"
TOY_SEED = 2025  # fixed, so every machine generates the same files
TOY_VERSION = 2  # part of the reuse stamp: a folder written by an older design is regenerated
SLIDE_VARIATION = 0.08  # +-8 % stain strength from slide to slide within a site
SCANNER_NOISE = 3.0  # std of additive RGB noise, in 8-bit grey levels


@dataclass(frozen=True)
class SiteStyle:
    """Staining and scanning of one simulated site."""

    haematoxylin: tuple[float, float, float]  # optical density per unit concentration, (R, G, B)
    eosin: tuple[float, float, float]
    haematoxylin_strength: float  # multiplies the haematoxylin concentration
    eosin_strength: float  # multiplies the eosin concentration
    background: tuple[float, float, float]  # optical density of glass and mounting medium, (R, G, B)


SITE_STYLES: dict[str, SiteStyle] = {
    "T1": SiteStyle((0.55, 0.80, 0.25), (0.10, 0.90, 0.20), 1.50, 0.45, (0.06, 0.08, 0.02)),  # purple
    "T2": SiteStyle((0.65, 0.70, 0.29), (0.05, 1.00, 0.10), 0.60, 1.50, (0.02, 0.04, 0.02)),  # pink
    "T3": SiteStyle((0.75, 0.62, 0.30), (0.08, 0.85, 0.30), 0.75, 0.70, (0.03, 0.10, 0.35)),  # faded, yellow
    "T4": SiteStyle((0.62, 0.72, 0.30), (0.08, 0.95, 0.14), 1.00, 1.00, (0.04, 0.06, 0.06)),  # standard
    "T5": SiteStyle((0.68, 0.68, 0.27), (0.07, 0.97, 0.12), 1.10, 0.90, (0.05, 0.05, 0.08)),  # standard
    "H1": SiteStyle((0.56, 0.79, 0.26), (0.10, 0.92, 0.18), 1.45, 0.50, (0.05, 0.08, 0.03)),  # like T1
    "H2": SiteStyle((0.74, 0.63, 0.31), (0.08, 0.86, 0.28), 0.80, 0.72, (0.03, 0.11, 0.32)),  # like T3
}

# Patches per (site, class) as a share of patches_per_cell. Each large training site is dominated by
# one class and lacks another. T4 and T5 are small sites that a top-3 plan merges into one, and the
# held-out sites H1 and H2 hold every class in equal numbers.
CELL_SHARE: dict[str, dict[str, float]] = {
    "T1": {"lymphocyte": 1.5, "stroma": 0.0, "tumour": 0.5},
    "T2": {"lymphocyte": 0.0, "stroma": 0.5, "tumour": 1.5},
    "T3": {"lymphocyte": 0.0, "stroma": 1.5, "tumour": 0.0},
    "T4": {"lymphocyte": 0.25, "stroma": 0.25, "tumour": 0.25},
    "T5": {"lymphocyte": 0.0, "stroma": 0.25, "tumour": 0.25},
    "H1": {"lymphocyte": 0.5, "stroma": 0.5, "tumour": 0.5},
    "H2": {"lymphocyte": 0.5, "stroma": 0.5, "tumour": 0.5},
}
SINGLE_PATCH_CELLS = {("T3", "tumour")}  # one patch, as BRCA-M2C's single tumour patch of site AC
HELD_OUT_SITES = ("H1", "H2")


def _blobs(rng: np.random.Generator, count: int, radius: tuple[float, float], elongation: float, angle: float | None) -> np.ndarray:
    """Return the concentration map (S, S) in [0, 1] of ``count`` elliptical nuclei."""
    yy, xx = np.mgrid[0:PATCH_SIZE, 0:PATCH_SIZE].astype(np.float32)
    density = np.zeros((PATCH_SIZE, PATCH_SIZE), np.float32)
    for _ in range(count):
        cy, cx = rng.uniform(0, PATCH_SIZE, size=2)
        r = rng.uniform(*radius)
        theta = angle if angle is not None else rng.uniform(0, np.pi)
        theta += rng.normal(0, 0.15)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        density = np.maximum(density, np.exp(-((u / (r * elongation)) ** 2 + (v / r) ** 2) * 2.0))
    return density


def _fibres(rng: np.random.Generator, angle: float) -> np.ndarray:
    """Return the eosin map (S, S) in [0, 1] of wavy parallel fibres at ``angle``."""
    yy, xx = np.mgrid[0:PATCH_SIZE, 0:PATCH_SIZE].astype(np.float32)
    across = -xx * np.sin(angle) + yy * np.cos(angle)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    wave = np.sin(across * rng.uniform(0.7, 1.1) + 2.0 * np.sin(along * 0.15 + rng.uniform(0, 6.3)))
    return np.clip(0.55 + 0.45 * wave, 0, 1)


def _concentrations(rng: np.random.Generator, cls: str) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps (S, S) for one patch of class ``cls``."""
    if cls == "lymphocyte":
        nuclei = _blobs(rng, int(rng.integers(35, 55)), (2.0, 3.0), 1.0, None)
        return 1.6 * nuclei, 0.35 + 0.15 * rng.random((PATCH_SIZE, PATCH_SIZE))
    if cls == "tumour":
        nuclei = _blobs(rng, int(rng.integers(8, 14)), (5.0, 8.0), rng.uniform(1.0, 1.6), None)
        return 0.9 * nuclei, 0.55 + 0.2 * rng.random((PATCH_SIZE, PATCH_SIZE))
    if cls == "stroma":
        angle = float(rng.uniform(0, np.pi))
        nuclei = _blobs(rng, int(rng.integers(3, 7)), (1.5, 2.0), 3.5, angle)
        return 1.2 * nuclei, 0.9 * _fibres(rng, angle)
    raise ValueError(f"unknown toy class {cls!r}; expected one of {CLASSES}")


def paint_patch(rng: np.random.Generator, cls: str, site: str) -> np.ndarray:
    """Paint one RGB patch (S, S, 3) uint8 of class ``cls`` stained as at ``site``."""
    style = SITE_STYLES[site]
    c_h, c_e = _concentrations(rng, cls)
    slide = rng.uniform(1.0 - SLIDE_VARIATION, 1.0 + SLIDE_VARIATION)  # slide-to-slide variation within a site
    h = style.haematoxylin_strength * slide * np.asarray(style.haematoxylin, np.float32)
    e = style.eosin_strength * slide * np.asarray(style.eosin, np.float32)
    background = np.asarray(style.background, np.float32)
    density = c_h[..., None] * h + c_e[..., None] * e + background  # (S, S, 3) optical density
    rgb = 255.0 * np.exp(-density) + rng.normal(0, SCANNER_NOISE, density.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def cell_count(site: str, cls: str, patches_per_cell: int) -> int:
    """Number of patches generated for one (site, class) cell."""
    if (site, cls) in SINGLE_PATCH_CELLS:
        return 1
    return int(round(CELL_SHARE[site][cls] * patches_per_cell))


def write_toy_dataset(folder: Path, *, patches_per_cell: int = 12, seed: int = TOY_SEED) -> Path:
    """Write the toy set as a labelled folder (``images/*.png`` + ``metadata.csv``); return the folder.

    A folder that already contains the same set (same size and seed) is reused.
    """
    if patches_per_cell < 1:
        raise ValueError(f"patches_per_cell must be >= 1, got {patches_per_cell}")
    folder = Path(folder)
    stamp = folder / f".toy-v{TOY_VERSION}-{patches_per_cell}-{seed}"
    if stamp.is_file() and (folder / METADATA_FILE).is_file():
        return folder
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for site in SITE_STYLES:
        for cls in CLASSES:
            for index in range(cell_count(site, cls, patches_per_cell)):
                name = f"{site}_{cls}_{index:03d}.png"
                Image.fromarray(paint_patch(rng, cls, site), mode="RGB").save(images / name, format="PNG")
                # Four patches per simulated slide, so slide ids repeat as in real data.
                rows.append({"file": f"images/{name}", "class": cls, "site": site, "slide_id": f"TOY-{site}-{index // 4:03d}"})
    with (folder / METADATA_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "class", "site", "slide_id"])
        writer.writeheader()
        writer.writerows(rows)
    stamp.write_text("generated by medi_sim.toy_data\n")
    logger.info("wrote %d generated toy patches to %s", len(rows), folder)
    return folder


def paint_cells(counts: Mapping[str, Mapping[str, int]], *, seed: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Paint ``counts[site][class]`` patches per cell, as a perfect generator would fill a balance plan.

    Returns images (N, S, S, 3) uint8, their classes and their sites, in the
    order of ``counts``.
    """
    rng = np.random.default_rng(seed)
    images, labels, sites = [], [], []
    for site, per_class in counts.items():
        for cls, count in per_class.items():
            for _ in range(count):
                images.append(paint_patch(rng, cls, site))
                labels.append(cls)
                sites.append(site)
    stacked = np.stack(images) if images else np.zeros((0, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)
    return stacked, labels, sites


__all__ = ["CLASSES", "HELD_OUT_SITES", "SITE_STYLES", "cell_count", "paint_cells", "paint_patch", "write_toy_dataset"]
