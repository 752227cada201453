"""`LabeledPatches`: images with class and site labels held in memory for downstream evaluation."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medi_core.errors import EvaluationError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD, is_missing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabeledPatches:
    """Patches for evaluation: every image has a class label and a site name.

    The evaluation sets are small (hundreds to a few thousand patches at
    32-224 px), so they are kept as one tensor instead of a lazy dataset.
    """

    images: torch.Tensor  # (N, 3, S, S) float32 in [-1, 1]
    labels: np.ndarray  # (N,) str class names
    sites: np.ndarray  # (N,) str site names
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise EvaluationError(
                f"patch set {self.name!r}: images must have shape (N, 3, S, S), got {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        labels = np.asarray(self.labels, dtype=object).astype(str)
        sites = np.asarray(self.sites, dtype=object).astype(str)
        if labels.shape != (n,) or sites.shape != (n,):
            raise EvaluationError(
                f"patch set {self.name!r}: {n} images but {labels.shape} labels and {sites.shape} sites"
            )
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sites", sites)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"LabeledPatches({self.name!r}, {len(self)} patches, {self.image_size} px, "
            f"classes={self.classes}, sites={self.site_names})"
        )

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels.tolist())))

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.sites.tolist())))

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_dataset(
        cls,
        dataset: Sequence[tuple[torch.Tensor, dict[str, Any]]],
        *,
        image_size: int | None = None,
        class_key: str = CLASS_FIELD,
        site_key: str = SITE_FIELD,
        name: str = "",
    ) -> LabeledPatches:
        """Load every item of a dataset yielding ``(image (3, S, S) in [-1, 1], metadata)``.

        Works with `medi_core.data.PatchDataset` and any map-style dataset of
        that form. Images of other sizes are resized to ``image_size`` (default:
        the first image's size). A patch without a class or site raises.
        """
        images: list[torch.Tensor] = []
        labels: list[str] = []
        sites: list[str] = []
        for index in range(len(dataset)):
            image, metadata = dataset[index]
            label, site = metadata.get(class_key), metadata.get(site_key)
            if is_missing(label) or is_missing(site):
                raise EvaluationError(
                    f"patch {index} of {name or 'the dataset'} has no {class_key!r} or {site_key!r} "
                    f"(got {label!r}, {site!r}); evaluation needs both on every patch"
                )
            if image_size is None:
                image_size = int(image.shape[-1])
            images.append(_resize(image.unsqueeze(0), image_size))
            labels.append(str(label))
            sites.append(str(site))
        if not images:
            raise EvaluationError(f"dataset {name or ''} is empty; evaluation needs at least one patch")
        return cls(torch.cat(images), np.array(labels), np.array(sites), name=name)

    # -- selection ------------------------------------------------------------

    def subset(self, indices: np.ndarray | Sequence[int], *, name: str | None = None) -> LabeledPatches:
        """Return the patches at ``indices`` (integer positions, repeats allowed)."""
        rows = np.asarray(indices, dtype=np.int64)
        return LabeledPatches(
            self.images[torch.from_numpy(rows)],
            self.labels[rows],
            self.sites[rows],
            name=self.name if name is None else name,
        )

    def where(self, mask: np.ndarray, *, name: str | None = None) -> LabeledPatches:
        """Return the patches where the boolean ``mask`` is True."""
        return self.subset(np.flatnonzero(mask), name=name)

    def resized(self, image_size: int) -> LabeledPatches:
        """Return the same patches at another square size."""
        if image_size == self.image_size:
            return self
        return LabeledPatches(_resize(self.images, image_size), self.labels, self.sites, name=self.name)

    def cell_counts(self) -> dict[tuple[str, str], int]:
        """Count patches per (class, site) cell."""
        counts: dict[tuple[str, str], int] = {}
        for label, site in zip(self.labels.tolist(), self.sites.tolist(), strict=True):
            counts[(label, site)] = counts.get((label, site), 0) + 1
        return counts


def _resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize (B, 3, H, W) in [-1, 1] to (B, 3, image_size, image_size), antialiased when shrinking."""
    if images.shape[-1] == image_size and images.shape[-2] == image_size:
        return images.float()
    resized = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear", antialias=True)
    return resized.clamp(-1.0, 1.0)


def concat_patches(parts: Iterable[LabeledPatches], *, name: str = "") -> LabeledPatches:
    """Concatenate patch sets; all must have the same image size."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise EvaluationError(f"nothing to concatenate for {name!r}: every patch set is empty")
    sizes = {p.image_size for p in parts}
    if len(sizes) > 1:
        raise EvaluationError(
            f"cannot concatenate patch sets of sizes {sorted(sizes)} px ({[p.name for p in parts]}); "
            "call .resized(size) on them first"
        )
    return LabeledPatches(
        torch.cat([p.images for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.sites for p in parts]),
        name=name,
    )


def sample_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Return sorted positions of at most ``per_class`` randomly chosen items of each class."""
    chosen: list[np.ndarray] = []
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        if rows.size > per_class:
            rows = rng.choice(rows, size=per_class, replace=False)
        chosen.append(rows)
    return np.sort(np.concatenate(chosen))


__all__ = ["LabeledPatches", "concat_patches", "sample_per_class"]
