"""Synthetic Aperio-style slides written with tifffile, for tests and benchmarks of the pipeline.

The slide is white glass with an elliptical H&E-like tissue region (pink
texture with purple nuclei), written tile by tile so a 40,000 px slide never
exists in memory. Pixels come from a small bank of pre-drawn textures, which
keeps writing fast; the content is not meant to look like real tissue.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile

TILE_PX = 256  # TIFF tile side, px
GLASS_RGB = (242, 242, 240)
_TEXTURES = 8  # distinct tissue textures drawn per level


def _texture_bank(rng: np.random.Generator) -> list[np.ndarray]:
    bank = []
    for _ in range(_TEXTURES):
        base = np.array([225, 140, 185], dtype=np.float32) + rng.normal(0, 18, (TILE_PX, TILE_PX, 3))
        nuclei = rng.random((TILE_PX, TILE_PX)) < 0.03
        base[nuclei] = (110, 60, 150)  # haematoxylin-stained nuclei, purple
        bank.append(base.clip(0, 255).astype(np.uint8))
    return bank


def _level_tiles(
    width: int, height: int, tissue: bool, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    bank = _texture_bank(rng)
    glass = np.empty((TILE_PX, TILE_PX, 3), dtype=np.uint8)
    glass[:] = GLASS_RGB
    yy, xx = np.mgrid[0:TILE_PX, 0:TILE_PX]
    centre_x, centre_y, radius_x, radius_y = width / 2, height / 2, width * 0.35, height * 0.3
    index = 0
    for top in range(0, height, TILE_PX):
        for left in range(0, width, TILE_PX):
            if not tissue:
                yield glass
                continue
            inside = ((left + xx - centre_x) / radius_x) ** 2 + ((top + yy - centre_y) / radius_y) ** 2 <= 1.0
            if not inside.any():
                yield glass
                continue
            tile = np.where(inside[..., None], bank[index % _TEXTURES], glass)
            index += 1
            yield tile


def write_synthetic_slide(
    path: Path,
    *,
    width: int,
    height: int,
    mpp: float | None = 0.25,
    downsamples: Sequence[int] = (1, 4, 16),
    tissue: bool = True,
    seed: int = 0,
) -> Path:
    """Write a JPEG-tiled Aperio SVS pyramid of ``width`` x ``height`` px at level 0.

    ``mpp`` (µm/px) goes into the Aperio description and the TIFF resolution tags;
    None writes neither, as on slides without resolution metadata.
    """
    rng = np.random.default_rng(seed)
    description = f"Aperio Image Library v12.0.0 synthetic\r\n{width}x{height} (256x256) JPEG/RGB Q=80|AppMag = 20"
    options = {}
    if mpp is not None:
        description += f"|MPP = {mpp}"
        pixels_per_cm = 1e4 / mpp
        # a 2-tuple with an explicit unit: tifffile's 3-tuple form would write inches
        options = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        for level, downsample in enumerate(downsamples):
            level_w, level_h = max(1, width // downsample), max(1, height // downsample)
            tif.write(
                _level_tiles(level_w, level_h, tissue, rng),
                shape=(level_h, level_w, 3),
                dtype=np.uint8,
                tile=(TILE_PX, TILE_PX),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                description=description if level == 0 else f"Aperio level {level_w}x{level_h}",
                metadata=None,  # tifffile's own JSON description would hide the Aperio one
                **options,
            )
    return path


__all__ = ["write_synthetic_slide"]
