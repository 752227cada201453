"""Training data: patches from a patch store, TCGA-UT folders, a labelled folder or a manifest CSV.

``open_patch_source(path, image_size=...)`` returns a `PatchDataset` whose
items are ``(image (3, S, S) in [-1, 1], metadata dict)``; `iterate_batches`
turns it into endless shuffled ``(x, cond)`` batches for the trainer.
"""

from medi_core.data.batches import collate_patches, iterate_batches, metadata_counts
from medi_core.data.dataset import (
    SLIDE_FIELD,
    PatchDataset,
    concat_datasets,
    image_to_tensor,
    split_by_site,
)
from medi_core.data.sources import SourceKind, detect_kind, open_patch_source

__all__ = [
    "SLIDE_FIELD",
    "PatchDataset",
    "SourceKind",
    "collate_patches",
    "concat_datasets",
    "detect_kind",
    "image_to_tensor",
    "iterate_batches",
    "metadata_counts",
    "open_patch_source",
    "split_by_site",
]
