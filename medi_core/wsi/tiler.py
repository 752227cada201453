"""Grid tiling at a target resolution: where each tile lies at level 0 and which level to read it from."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from medi_core.errors import ConfigError


@dataclass
class TilingConfig:
    """Tile size and resolution of the stored patches."""

    tile_size: int = 256  # px, width and height of a stored tile
    mpp: float = 0.5  # µm/px of a stored tile (0.5 is a 20× scan, the resolution TCGA-UT tiles use)
    min_tissue_fraction: float = 0.5  # share of the tile the thumbnail mask must mark as tissue
    # Relative MPP difference below which a level is read 1:1 without resizing;
    # 0.499 µm/px (CMU-1) counts as 0.5, and the 0.2 % scale error is under a pixel per tile.
    mpp_tolerance: float = 0.02

    def check(self) -> None:
        if self.tile_size < 8:
            raise ConfigError(f"tile_size must be at least 8 px, got {self.tile_size}")
        if not 0.05 <= self.mpp <= 50:
            raise ConfigError(f"tile mpp must be between 0.05 and 50 µm/px, got {self.mpp}")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ConfigError(f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}")
        if not 0.0 <= self.mpp_tolerance < 0.5:
            raise ConfigError(f"mpp_tolerance must be in [0, 0.5), got {self.mpp_tolerance}")


@dataclass(frozen=True)
class TileSpec:
    """One grid tile: (x, y) and footprint in level-0 px, and how to read it."""

    x: int  # level-0 px, left edge
    y: int  # level-0 px, top edge
    level: int  # pyramid level read
    read_size: int  # px read at that level (width = height); resized to tile_size when different
    tissue_fraction: float


@dataclass(frozen=True)
class TileGrid:
    """All grid positions of a slide at the target resolution."""

    footprint: float  # level-0 px covered by one tile side
    columns: int
    rows: int
    level: int
    level_downsample: float
    read_size: int

    def stored_mpp(self, slide_mpp: float, tile_size: int) -> float:
        """Return the actual µm/px of a stored tile, given the slide's level-0 µm/px."""
        return self.footprint * slide_mpp / tile_size

    def position(self, column: int, row: int) -> tuple[int, int]:
        """Return (x, y) in level-0 px of the tile at (column, row)."""
        return round(column * self.footprint), round(row * self.footprint)


def make_grid(
    dimensions: tuple[int, int],
    level_downsamples: Sequence[float],
    slide_mpp: float,
    config: TilingConfig,
) -> TileGrid:
    """Lay a grid of whole tiles over a slide of ``dimensions`` (width, height) at level 0.

    The read level is the coarsest one that still has at least the target
    resolution. When that level is within ``mpp_tolerance`` of the target, tiles
    are read 1:1 (no resize); otherwise ``read_size`` px are read and resized.
    """
    scale = config.mpp / slide_mpp  # level-0 px per stored px
    level = 0
    for index, downsample in enumerate(level_downsamples):
        if downsample <= scale * (1 + config.mpp_tolerance):
            level = index
    level_downsample = float(level_downsamples[level])
    ratio = scale / level_downsample  # level px per stored px, >= 1 - tolerance
    if abs(ratio - 1.0) <= config.mpp_tolerance:
        read_size = config.tile_size  # read 1:1, no resize
        footprint = config.tile_size * level_downsample
    else:
        read_size = round(config.tile_size * ratio)
        footprint = config.tile_size * scale
    width, height = dimensions
    columns = math.floor(width / footprint + 1e-9)
    rows = math.floor(height / footprint + 1e-9)
    return TileGrid(footprint, columns, rows, level, level_downsample, read_size)


def tissue_fractions(mask: np.ndarray, grid: TileGrid, mask_downsample: float) -> np.ndarray:
    """Return the tissue fraction (rows, columns) of every grid tile from a thumbnail mask.

    ``mask_downsample`` is level-0 px per mask px. Uses a summed-area table, so the
    cost is one pass over the mask however many tiles there are.
    """
    # int32 holds counts up to 2**31 - 1 mask px, far above any thumbnail, and sums faster than int64
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(mask, axis=0, dtype=np.int32, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
    edges_x = np.array([round(c * grid.footprint / mask_downsample) for c in range(grid.columns + 1)])
    edges_y = np.array([round(r * grid.footprint / mask_downsample) for r in range(grid.rows + 1)])
    edges_x = np.clip(edges_x, 0, mask.shape[1])
    edges_y = np.clip(edges_y, 0, mask.shape[0])
    x0, x1 = edges_x[:-1], np.maximum(edges_x[1:], edges_x[:-1] + 1).clip(max=mask.shape[1])
    y0, y1 = edges_y[:-1], np.maximum(edges_y[1:], edges_y[:-1] + 1).clip(max=mask.shape[0])
    total = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return total / np.maximum(area, 1)


def plan_tiles(grid: TileGrid, fractions: np.ndarray, min_tissue_fraction: float) -> Iterator[TileSpec]:
    """Yield the grid tiles with at least ``min_tissue_fraction`` tissue, row by row."""
    for row in range(grid.rows):
        for column in range(grid.columns):
            fraction = float(fractions[row, column])
            if fraction >= min_tissue_fraction:
                x, y = grid.position(column, row)
                yield TileSpec(x, y, grid.level, grid.read_size, fraction)


__all__ = ["TileGrid", "TileSpec", "TilingConfig", "make_grid", "plan_tiles", "tissue_fractions"]
