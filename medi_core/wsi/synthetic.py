"""Synthetic Aperio-style slides written with tifffile, for tests and benchmarks of the pipeline.

The slide is white glass with an elliptical tissue region, written tile by
tile so a 40,000 px slide never exists in memory. Tissue pixels come from a
small bank of textures, which keeps writing fast. The default bank is drawn
noise (pink with purple nuclei) that does not look like real tissue and costs
several times more to JPEG-encode than H&E. Passing ``texture_images`` (real
H&E patches) fills the tissue with crops of them instead, each tile flipped,
rotated and colour-jittered, so reading and encoding cost what they do on
real slides.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from medi_core.errors import ConfigError

TILE_PX = 256  # TIFF tile side, px
GLASS_RGB = (242, 242, 240)
_TEXTURES = 8  # distinct noise textures drawn per level
_PHOTO_TEXTURES = 32  # crops taken from texture_images
# Largest per-channel gain applied to a photo crop, so no two tiles are byte-identical;
# 3 % is below the colour spread of one stain batch.
_COLOUR_JITTER = 0.03


def _noise_bank(rng: np.random.Generator) -> list[np.ndarray]:
    bank = []
    for _ in range(_TEXTURES):
        base = np.array([225, 140, 185], dtype=np.float32) + rng.normal(0, 18, (TILE_PX, TILE_PX, 3))
        nuclei = rng.random((TILE_PX, TILE_PX)) < 0.03
        base[nuclei] = (110, 60, 150)  # haematoxylin-stained nuclei, purple
        bank.append(base.clip(0, 255).astype(np.uint8))
    return bank


def _photo_bank(images: Sequence[Path], rng: np.random.Generator) -> list[np.ndarray]:
    """Return random 256 px crops (H, W, 3) uint8 of the given H&E images."""
    bank = []
    for index in range(_PHOTO_TEXTURES):
        with Image.open(images[index % len(images)]) as image:
            photo = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        height, width = photo.shape[:2]
        if min(height, width) < TILE_PX:
            raise ConfigError(f"texture image {images[index % len(images)]} is smaller than {TILE_PX} px; use larger images")
        top, left = rng.integers(0, height - TILE_PX + 1), rng.integers(0, width - TILE_PX + 1)
        bank.append(np.ascontiguousarray(photo[top : top + TILE_PX, left : left + TILE_PX]))
    return bank


def _jittered(texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return a texture rotated by a multiple of 90°, maybe mirrored, with a small per-channel gain."""
    tile = np.rot90(texture, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    gain = 1.0 + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, size=3).astype(np.float32)
    return (tile * gain).clip(0, 255).astype(np.uint8)


def _level_tiles(
    width: int, height: int, tissue: bool, rng: np.random.Generator, texture_images: Sequence[Path] | None
) -> Iterator[np.ndarray]:
    bank = _photo_bank(texture_images, rng) if texture_images else _noise_bank(rng)
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
            texture = bank[index % len(bank)]
            if texture_images:
                texture = _jittered(texture, rng)
            tile = np.where(inside[..., None], texture, glass)
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
    texture_images: Sequence[Path] | None = None,
) -> Path:
    """Write a JPEG-tiled Aperio SVS pyramid of ``width`` x ``height`` px at level 0.

    ``mpp`` (µm/px) goes into the Aperio description and the TIFF resolution tags;
    None writes neither, as on slides without resolution metadata.
    ``texture_images`` (H&E images of at least 256 px) replace the noise texture
    of the tissue region with jittered crops of them.
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
                _level_tiles(level_w, level_h, tissue, rng, texture_images),
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
