"""OpenSlide reading with resolution fallbacks, bounded-memory thumbnails and handle recovery.

Coordinates: ``location`` is ``(x, y)`` of the top-left corner in level-0
pixels, ``size`` is ``(width, height)`` in pixels of the level being read.
Resolutions are in µm per pixel (MPP) of level 0 unless stated otherwise.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import openslide
from PIL import Image

from medi_core.errors import SlideReadError

logger = logging.getLogger(__name__)

MppSource = Literal["user column", "slide MPP", "TIFF resolution", "objective power", "user --mpp"]

# Plausible level-0 resolutions of a brightfield scanner, µm/px. Values outside
# (for example 72 dpi defaults in TIFF tags, 352.8 µm/px) are treated as absent.
MPP_PLAUSIBLE_RANGE = (0.05, 20.0)
# A 10× objective images about 1.0 µm/px on common scanners (20×: 0.5, 40×: 0.25).
MPP_AT_ONE_X = 10.0
# Largest region (width or height, px) decoded at once while building a thumbnail,
# so a single-level 100,000 px slide costs one 4096² RGBA buffer (64 MiB), not the whole level.
THUMBNAIL_CHUNK_PX = 4096
# File extensions of the formats OpenSlide 4 reads (DICOM folders are not scanned).
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".czi", ".dcm"}
)
_MICRONS_PER_UNIT = {"centimeter": 1e4, "inch": 25.4e3, "millimeter": 1e3}


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and math.isfinite(mpp) and MPP_PLAUSIBLE_RANGE[0] <= mpp <= MPP_PLAUSIBLE_RANGE[1]


def _float_property(properties: dict[str, str], key: str) -> float | None:
    try:
        return float(properties[key])
    except (KeyError, ValueError):
        return None


def resolve_mpp(
    properties: dict[str, str],
    slide_name: str,
    *,
    column_mpp: float | None = None,
    default_mpp: float | None = None,
) -> tuple[float, MppSource]:
    """Return the level-0 resolution in µm/px and where it came from.

    Order: the per-slide MPP column, OpenSlide's ``openslide.mpp-x/y``, TIFF
    ``XResolution``/``YResolution`` with their unit, the objective power
    (``10 / power``), then ``default_mpp`` (``--mpp``). Each step down is logged as
    a warning naming the slide. Raises `SlideReadError` when nothing is usable.
    """
    if column_mpp is not None:
        if not _plausible(column_mpp):
            raise SlideReadError(
                f"slide {slide_name}: MPP {column_mpp} from the metadata CSV is outside the plausible range "
                f"{MPP_PLAUSIBLE_RANGE} µm/px; fix the value in the MPP column"
            )
        return column_mpp, "user column"

    mpp_x = _float_property(properties, openslide.PROPERTY_NAME_MPP_X)
    mpp_y = _float_property(properties, openslide.PROPERTY_NAME_MPP_Y)
    if _plausible(mpp_x) and _plausible(mpp_y):
        if abs(mpp_x - mpp_y) > 0.01 * mpp_x:
            logger.warning("slide %s: non-square pixels (MPP x %.4f, y %.4f); using their mean", slide_name, mpp_x, mpp_y)
        return (mpp_x + mpp_y) / 2, "slide MPP"
    logger.warning("slide %s: no usable openslide.mpp-x/y property; trying TIFF resolution tags", slide_name)

    res_x = _float_property(properties, "tiff.XResolution")
    res_y = _float_property(properties, "tiff.YResolution")
    unit = properties.get("tiff.ResolutionUnit", "").lower()
    if res_x and res_y and unit in _MICRONS_PER_UNIT:
        tiff_mpp = _MICRONS_PER_UNIT[unit] * (1 / res_x + 1 / res_y) / 2
        if _plausible(tiff_mpp):
            return tiff_mpp, "TIFF resolution"
    logger.warning("slide %s: no usable TIFF resolution tags; trying the objective power", slide_name)

    power = _float_property(properties, openslide.PROPERTY_NAME_OBJECTIVE_POWER)
    if power is not None and power > 0 and _plausible(MPP_AT_ONE_X / power):
        logger.warning(
            "slide %s: estimating MPP as %.3f from objective power %g× (scanners differ by up to ~10%%)",
            slide_name, MPP_AT_ONE_X / power, power,
        )
        return MPP_AT_ONE_X / power, "objective power"

    if default_mpp is not None:
        logger.warning("slide %s: no resolution metadata; using --mpp %g", slide_name, default_mpp)
        return default_mpp, "user --mpp"
    raise SlideReadError(
        f"slide {slide_name}: no usable resolution (no MPP property, TIFF resolution tags or objective power); "
        "supply it with --mpp (µm/px, for all such slides) or an MPP column in the metadata CSV"
    )


@dataclass(frozen=True)
class LevelChoice:
    """A pyramid level chosen for reading, with its downsample from level 0."""

    level: int
    downsample: float  # level-0 px per level px


class _Handle:
    """An OpenSlide handle with the number of reads using it; a replaced handle closes when unused."""

    def __init__(self, slide: openslide.OpenSlide) -> None:
        self.slide = slide
        self.users = 0
        self.replaced = False


class SlideReader:
    """One OpenSlide handle that reopens itself once after a read error.

    Reads may run in several threads at once (OpenSlide reads are thread-safe,
    and ctypes and OpenSlide's pixel conversion release the GIL). A handle
    replaced after an error is closed only when the last read using it ends,
    because closing an OpenSlide handle while another thread reads it is unsafe.
    """

    def __init__(self, path: str | Path, slide_id: str | None = None) -> None:
        self.path = Path(path)
        self.slide_id = slide_id or self.path.name
        if not self.path.exists():
            raise SlideReadError(f"slide {self.slide_id}: file {self.path} not found")
        if not self.path.is_file():
            raise SlideReadError(f"slide {self.slide_id}: {self.path} is not a file")
        self._lock = threading.Lock()
        self._handle = _Handle(self._open())
        slide = self._handle.slide
        self.dimensions: tuple[int, int] = slide.dimensions  # (width, height) at level 0
        self.level_dimensions: tuple[tuple[int, int], ...] = slide.level_dimensions
        self.level_downsamples: tuple[float, ...] = slide.level_downsamples
        self.properties: dict[str, str] = dict(slide.properties)

    def _open(self) -> openslide.OpenSlide:
        # OpenSlide() rather than open_slide(): the latter wraps PNG/JPEG files in an
        # ImageSlide, and a plain image is not a slide with a known resolution.
        try:
            return openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError:
            if self.path.suffix.lower() in SLIDE_SUFFIXES:
                raise SlideReadError(
                    f"slide {self.slide_id}: OpenSlide cannot read {self.path.name}; the file is damaged "
                    "or truncated (an incomplete copy?); copy it again from the scanner archive"
                ) from None
            raise SlideReadError(
                f"slide {self.slide_id}: {self.path.name} is not in a slide format OpenSlide supports "
                f"(supported extensions: {', '.join(sorted(SLIDE_SUFFIXES))})"
            ) from None
        except openslide.OpenSlideError as err:
            raise SlideReadError(f"slide {self.slide_id}: OpenSlide cannot open {self.path.name}: {err}") from None

    def close(self) -> None:
        """Close the handle; call it only after every read has returned."""
        with self._lock:
            self._handle.slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def vendor(self) -> str:
        return self.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown")

    def best_level(self, downsample: float) -> LevelChoice:
        """Return the coarsest level whose downsample does not exceed ``downsample`` (1 % slack)."""
        level = 0
        for index, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * 1.01:
                level = index
        return LevelChoice(level, float(self.level_downsamples[level]))

    def _acquire(self) -> _Handle:
        with self._lock:
            self._handle.users += 1
            return self._handle

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            if handle.replaced and handle.users == 0:
                handle.slide.close()

    def _replace(self, failed: _Handle) -> None:
        """Open a new handle in place of ``failed``, unless another thread already did."""
        with self._lock:
            if self._handle is not failed:
                return
            self._handle = _Handle(self._open())
            failed.replaced = True  # closed by the last _release

    def read_image(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """Read a region as an RGB PIL image; transparent pixels become white (255).

        After an `openslide.OpenSlideError` the shared handle is broken, so it is
        replaced, and the read is retried once on a private handle that no other
        thread can break. Only a region that fails on that private handle too
        raises `SlideReadError`, so an error in one thread never fails a good
        tile read in another.
        """
        handle = self._acquire()
        try:
            region = handle.slide.read_region(location, level, size)
        except openslide.OpenSlideError as err:
            logger.warning("slide %s: read error at (x, y)=%s (%s); reopening the slide", self.slide_id, location, err)
            self._replace(handle)
            region = self._read_on_private_handle(location, level, size)
        finally:
            self._release(handle)
        # OpenSlide marks pixels outside the scanned area with alpha 0; put them on
        # white glass. getextrema() runs in C, so intact tiles skip the compositing.
        if region.getchannel("A").getextrema()[0] < 255:
            region = Image.alpha_composite(Image.new("RGBA", region.size, (255, 255, 255, 255)), region)
        return region.convert("RGB")

    def _read_on_private_handle(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        private = self._open()
        try:
            return private.read_region(location, level, size)
        except openslide.OpenSlideError as err:
            raise SlideReadError(
                f"slide {self.slide_id}: reading {size} px at level {level}, (x, y)={location} "
                f"failed twice: {err}; the file is probably corrupt"
            ) from None
        finally:
            private.close()

    def read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a region as RGB uint8 (height, width, 3); see `read_image`."""
        return np.asarray(self.read_image(location, level, size))  # (H, W, 3) uint8

    def thumbnail(self, downsample: float, *, max_upsample: float = 1.0) -> np.ndarray:
        """Return the whole slide at ``downsample`` (level-0 px per thumbnail px) as RGB (H, W, 3).

        Reads the coarsest level (or embedded image) that is at most ``max_upsample``
        times coarser than ``downsample``, and scales it to the output size. With the
        default 1.0 the source always has at least the output's resolution.
        Uses the scanner's embedded thumbnail when that level is much larger than
        the output. Otherwise reads the level in chunks of at most
        `THUMBNAIL_CHUNK_PX` px, so memory stays bounded for slides without a pyramid.
        """
        if max_upsample < 1.0:
            raise ValueError(f"max_upsample must be at least 1.0, got {max_upsample}")
        width, height = self.dimensions
        out_w, out_h = max(1, round(width / downsample)), max(1, round(height / downsample))
        choice = self.best_level(downsample * max_upsample)
        level_w, level_h = self.level_dimensions[choice.level]
        if level_w * level_h > 4 * out_w * out_h:
            embedded = self._embedded_thumbnail(out_w, out_h, max_upsample)
            if embedded is not None:
                return embedded
        scale = out_w / level_w  # thumbnail px per level px, above 1 when upsampling
        # chunk side in level px, so that neither the read nor its scaled copy exceeds the limit
        chunk_px = max(1, math.floor(THUMBNAIL_CHUNK_PX / max(1.0, scale)))
        thumbnail = np.full((out_h, out_w, 3), 255, dtype=np.uint8)
        for top in range(0, level_h, chunk_px):
            for left in range(0, level_w, chunk_px):
                chunk_w = min(chunk_px, level_w - left)
                chunk_h = min(chunk_px, level_h - top)
                x0, y0 = round(left * scale), round(top * scale)
                x1 = min(out_w, round((left + chunk_w) * scale))
                y1 = min(out_h, round((top + chunk_h) * scale))
                if x1 <= x0 or y1 <= y0:
                    continue
                location = (round(left * choice.downsample), round(top * choice.downsample))
                chunk = self.read_image(location, choice.level, (chunk_w, chunk_h))
                resized = chunk.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
                thumbnail[y0:y1, x0:x1] = np.asarray(resized)
        return thumbnail


    def _embedded_thumbnail(self, out_w: int, out_h: int, max_upsample: float) -> np.ndarray | None:
        """Resize the scanner's own ``thumbnail`` image when it covers the slide at enough resolution.

        Decoding a whole pyramid level costs more than the tiles themselves on a
        slide without a coarse level. Aperio files store a thumbnail of the same
        region; macro and label images show the whole glass and are never used.
        """
        handle = self._acquire()
        try:
            # one lookup: Mapping's "in" would decode the image a second time
            embedded = handle.slide.associated_images["thumbnail"]
        except KeyError:
            return None
        finally:
            self._release(handle)
        width, height = self.dimensions
        same_aspect = abs(embedded.width / embedded.height - width / height) <= 0.01 * width / height
        if not same_aspect or embedded.width * max_upsample < out_w:
            return None
        resized = embedded.convert("RGB").resize((out_w, out_h), Image.Resampling.BILINEAR)
        return np.asarray(resized)


__all__ = ["SLIDE_SUFFIXES", "MppSource", "SlideReader", "resolve_mpp"]
