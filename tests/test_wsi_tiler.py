"""Tests of the tile grid, level choice and per-tile tissue fractions."""

from __future__ import annotations

import numpy as np
import pytest

from medi_core.wsi.tiler import TilingConfig, make_grid, plan_tiles, tissue_fractions


def test_grid_cmu_at_half_micron():
    # 0.499 µm/px is within 2 % of 0.5, so tiles are read 1:1: floor(2220 / 256) = 8, floor(2967 / 256) = 11
    grid = make_grid((2220, 2967), [1.0], 0.499, TilingConfig())
    assert (grid.columns, grid.rows, grid.read_size) == (8, 11, 256)


def test_grid_40x_reads_level_one():
    # 0.228 µm/px: 0.5 / 0.228 = 2.193 level-0 px per stored px; level 1 (2x) is read, 256 * 2.193 / 2 = 280.7 -> 281 px
    grid = make_grid((3968, 4864), [1.0, 2.0, 4.0], 0.228, TilingConfig())
    assert (grid.level, grid.read_size) == (1, 281)
    # footprint 256 * 2.193 = 561.4 level-0 px: floor(3968 / 561.4) = 7, floor(4864 / 561.4) = 8
    assert (grid.columns, grid.rows) == (7, 8)


def test_grid_exact_level_no_resize():
    grid = make_grid((4096, 4096), [1.0, 2.0], 0.25, TilingConfig())
    assert (grid.level, grid.read_size, grid.footprint) == (1, 256, 512.0)


def test_grid_stored_mpp():
    grid = make_grid((2220, 2967), [1.0], 0.499, TilingConfig())
    assert grid.stored_mpp(0.499, 256) == pytest.approx(0.499)


def test_tissue_fractions_quarter():
    grid = make_grid((512, 512), [1.0], 0.5, TilingConfig())  # 2 x 2 tiles of 256 px
    mask = np.zeros((8, 8), dtype=bool)  # 64 level-0 px per mask px, 4 x 4 mask px per tile
    mask[0:2, 0:4] = True  # top half of the top-left tile
    mask[4:8, 4:8] = True  # all of the bottom-right tile
    assert tissue_fractions(mask, grid, 64.0).tolist() == [[0.5, 0.0], [0.0, 1.0]]


def test_plan_tiles_threshold_and_positions():
    grid = make_grid((512, 512), [1.0], 0.5, TilingConfig())
    fractions = np.array([[0.5, 0.0], [0.49, 1.0]])
    tiles = list(plan_tiles(grid, fractions, 0.5))
    assert [(t.x, t.y) for t in tiles] == [(0, 0), (256, 256)]


def test_config_rejects_bad_fraction():
    from medi_core.errors import ConfigError

    with pytest.raises(ConfigError, match="min_tissue_fraction must be in"):
        TilingConfig(min_tissue_fraction=1.5).check()
