"""Settings of a `prepare` run (slides to patch store), registered with Hydra's ConfigStore."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medi_core.errors import ConfigError
from medi_core.wsi.tiler import TilingConfig
from medi_core.wsi.tissue import TileFilterConfig, TissueConfig


@dataclass
class PrepareConfig:
    """Everything that decides which patches a `prepare` run writes."""

    tiling: TilingConfig = field(default_factory=TilingConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    filters: TileFilterConfig = field(default_factory=TileFilterConfig)
    jpeg_quality: int = 90  # 1-100; 90 keeps JPEG artefacts below those of the scanner's own compression
    workers: int = 2  # slides processed in parallel, one process each
    # Threads per slide that read, filter and encode tiles, so that reading one tile
    # overlaps encoding another when a CPU core is free.
    tile_threads: int = 2
    default_mpp: float | None = None  # µm/px for slides without resolution metadata (--mpp)
    keep_unlisted: bool = False  # process slides without a metadata row (class unknown)
    # Share of a slide's planned tiles allowed to fail reading (corrupt tile data)
    # before the whole slide is rejected as corrupt.
    max_unreadable_fraction: float = 0.01
    preview_max_px: int = 1024  # maximum width or height of the per-slide preview PNG, px

    def check(self) -> None:
        """Raise `ConfigError` naming the first invalid setting."""
        self.tiling.check()
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.tile_threads < 1:
            raise ConfigError(f"tile_threads must be at least 1, got {self.tile_threads}")
        if self.default_mpp is not None and not 0.05 <= self.default_mpp <= 20:
            raise ConfigError(f"--mpp must be between 0.05 and 20 µm/px, got {self.default_mpp}")
        if self.tissue.thumbnail_mpp < self.tiling.mpp:
            raise ConfigError(
                f"thumbnail_mpp ({self.tissue.thumbnail_mpp} µm/px) must not be finer than the tile mpp "
                f"({self.tiling.mpp} µm/px)"
            )
        if not 1.0 <= self.tissue.max_thumbnail_upsample <= 8.0:
            raise ConfigError(
                f"max_thumbnail_upsample must be between 1 and 8, got {self.tissue.max_thumbnail_upsample}"
            )
        if not 0.0 <= self.max_unreadable_fraction < 1.0:
            raise ConfigError(f"max_unreadable_fraction must be in [0, 1), got {self.max_unreadable_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_prepare_config() -> None:
    """Register `PrepareConfig` as ``prepare`` in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="prepare", node=PrepareConfig)


__all__ = ["PrepareConfig", "register_prepare_config"]
