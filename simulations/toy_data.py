"""A generated H&E-like patch set with known class and site effects, for machines without real data.

This is not histopathology. Each 64 px patch is painted from two stain
concentration maps (haematoxylin for nuclei, eosin for cytoplasm and fibres)
turned into RGB with the Beer-Lambert law, ``rgb = 255 * exp(-(c_H * h + c_E * e))``
(Ruifrok & Johnston 2001), where ``h`` and ``e`` are the stain optical-density
vectors. The two effects are built in on purpose:

- **class** (tissue texture): ``lymphocyte`` = many small round dark nuclei;
  ``tumour`` = fewer large, irregular, paler nuclei; ``stroma`` = eosin fibres
  in one direction with a few spindle-shaped nuclei;
- **site** (staining and scanning): every site has its own stain vectors,
  stain strength and background brightness (`SITE_STYLES`), the kind of
  colour shift that separates hospitals in real slides.

Site ``T3`` has no lymphocyte and a single tumour patch, as site AC in
BRCA-M2C: exactly the cells a site-conditioned generator should fill. Sites
``H1`` and ``H2`` are meant to be held out. Both effects are measurable: a
linear classifier on per-channel colour statistics separates the sites, and
one on texture statistics separates the classes (see ``tests/test_sim_toy_data.py``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

PATCH_SIZE = 64  # px; the tiny model trains at 32 px, the small one at 64 px
CLASSES = ("lymphocyte", "stroma", "tumour")
METADATA_FILE = "metadata.csv"
TOY_SEED = 2025  # fixed, so every machine generates the same files


@dataclass(frozen=True)
class SiteStyle:
    """Staining and scanning of one simulated site."""

    haematoxylin: tuple[float, float, float]  # optical density per unit concentration, (R, G, B)
    eosin: tuple[float, float, float]
    stain_strength: float  # multiplies both concentrations
    background: float  # optical density of the glass and mounting medium


SITE_STYLES: dict[str, SiteStyle] = {
    "T1": SiteStyle((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), 1.00, 0.05),
    "T2": SiteStyle((0.50, 0.80, 0.35), (0.10, 0.85, 0.30), 1.25, 0.10),
    "T3": SiteStyle((0.80, 0.60, 0.20), (0.05, 1.10, 0.05), 0.80, 0.02),
    "T4": SiteStyle((0.60, 0.75, 0.40), (0.15, 0.95, 0.20), 1.10, 0.08),
    "T5": SiteStyle((0.70, 0.65, 0.25), (0.08, 0.90, 0.15), 0.90, 0.06),
    "H1": SiteStyle((0.55, 0.72, 0.32), (0.12, 0.92, 0.18), 1.05, 0.07),
    "H2": SiteStyle((0.72, 0.66, 0.30), (0.06, 1.02, 0.10), 0.95, 0.04),
}

# Patches per (site, class) as a share of patches_per_cell: T3 lacks lymphocytes and almost all tumour,
# T4 and T5 are small sites that a top-3 plan merges into one.
CELL_SHARE: dict[str, dict[str, float]] = {
    "T1": {"lymphocyte": 1.0, "stroma": 0.5, "tumour": 1.5},
    "T2": {"lymphocyte": 0.5, "stroma": 0.5, "tumour": 2.0},
    "T3": {"lymphocyte": 0.0, "stroma": 1.5, "tumour": 0.0},
    "T4": {"lymphocyte": 0.25, "stroma": 0.25, "tumour": 0.25},
    "T5": {"lymphocyte": 0.0, "stroma": 0.25, "tumour": 0.25},
    "H1": {"lymphocyte": 0.5, "stroma": 0.5, "tumour": 0.5},
    "H2": {"lymphocyte": 0.5, "stroma": 0.5, "tumour": 0.5},
}
SINGLE_PATCH_CELLS = {("T3", "tumour")}  # one patch, as BRCA-M2C's single tumour patch of site AC


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
    strength = style.stain_strength * rng.uniform(0.92, 1.08)  # slide-to-slide variation within a site
    h = np.asarray(style.haematoxylin, np.float32)
    e = np.asarray(style.eosin, np.float32)
    density = strength * (c_h[..., None] * h + c_e[..., None] * e) + style.background  # (S, S, 3) optical density
    rgb = 255.0 * np.exp(-density) + rng.normal(0, 3.0, density.shape)  # scanner noise
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
    stamp = folder / f".toy-{patches_per_cell}-{seed}"
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


__all__ = ["CLASSES", "SITE_STYLES", "cell_count", "paint_patch", "write_toy_dataset"]
