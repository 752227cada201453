"""Tests of PatchDataset pixels, subsets, site splits and batching."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch
from PIL import Image

from medi_core.data import PatchDataset, collate_patches, iterate_batches, metadata_counts, split_by_site
from medi_core.errors import DatasetError
from medi_core.metadata import MetadataSpec


def _dataset(tmp_path, sites=("A7", "A8", "AC", "OL"), size=4) -> PatchDataset:
    rows = []
    for i, site in enumerate(sites):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (size, size), (255, 0, 127)).save(path)
        rows.append({"_path": str(path), "class": "TUM" if i % 2 == 0 else "STR", "site": site, "slide_id": f"s{i}"})
    return PatchDataset(pd.DataFrame(rows), image_size=size)


def test_dataset_pixels_scaled_to_unit_range(tmp_path):
    image, _ = _dataset(tmp_path)[0]
    # 255 -> 1.0, 0 -> -1.0, 127 -> 127 / 127.5 - 1 = -0.003922
    assert image[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, -0.003922], abs=1e-6)


def test_dataset_centre_crop_non_square(tmp_path):
    path = tmp_path / "wide.png"
    wide = Image.new("RGB", (40, 20), (0, 0, 255))
    wide.paste((0, 255, 0), (10, 0, 30, 20))  # green centre square of 20 x 20
    wide.save(path)
    dataset = PatchDataset(pd.DataFrame([{"_path": str(path), "class": "a", "site": None, "slide_id": None}]), image_size=20)
    image, _ = dataset[0]
    assert image[1].min().item() == 1.0  # the green channel is 255 everywhere after the crop


def test_dataset_resize_shape(tmp_path):
    dataset = _dataset(tmp_path).with_image_size(2)
    assert dataset[0][0].shape == (3, 2, 2)


def test_dataset_missing_site_is_none(tmp_path):
    _, metadata = _dataset(tmp_path, sites=(None,))[0]
    assert metadata["site"] is None


def test_dataset_requires_class_column(tmp_path):
    with pytest.raises(DatasetError, match=r"lack the column\(s\) \['class'\]"):
        PatchDataset(pd.DataFrame([{"_path": "x", "site": "A7", "slide_id": "s"}]), image_size=8)


def test_subset_mask_shape_checked(tmp_path):
    with pytest.raises(DatasetError, match="subset mask has shape"):
        _dataset(tmp_path).subset([True, False])


def test_subset_indices(tmp_path):
    subset = _dataset(tmp_path).subset([3, 1])
    assert subset.records["site"].tolist() == ["OL", "A8"]


def test_split_by_site_merges_rest(tmp_path):
    parts = split_by_site(_dataset(tmp_path, sites=("A7", "A8", "OL", "S3")), ["A7", "A8"])
    assert {name: len(part) for name, part in parts.items()} == {"A7": 1, "A8": 1, "rest": 2}


def test_split_by_site_unknown_site(tmp_path):
    with pytest.raises(DatasetError, match="site 'ZZ' has no patches"):
        split_by_site(_dataset(tmp_path), ["ZZ"])


def test_collate_encodes_metadata(tmp_path):
    dataset = _dataset(tmp_path)
    spec = MetadataSpec.from_records(dataset.records.to_dict("records"))
    x, cond = collate_patches([dataset[0], dataset[1]], spec)
    assert x.shape == (2, 3, 4, 4)
    # vocabularies are sorted after "unknown": class (unknown, STR, TUM), site (unknown, A7, A8, AC, OL)
    assert cond["class"].tolist() == [2, 1]
    assert cond["site"].tolist() == [1, 2]


def test_iterate_batches_small_dataset_fills_batch(tmp_path):
    dataset = _dataset(tmp_path, sites=("A7", "A8", "AC"))
    spec = MetadataSpec.from_records(dataset.records.to_dict("records"))
    batches = iterate_batches(dataset, spec, 8, generator=torch.Generator().manual_seed(0))
    _, cond = next(batches)
    # 8 draws from back-to-back permutations of 3 patches: each patch 2 or 3 times
    assert sorted(Counter(cond["site"].tolist()).values()) == [2, 3, 3]


def test_iterate_batches_seeded_repeatable(tmp_path):
    dataset = _dataset(tmp_path)
    spec = MetadataSpec.from_records(dataset.records.to_dict("records"))
    first = next(iterate_batches(dataset, spec, 4, generator=torch.Generator().manual_seed(3)))[1]["site"]
    second = next(iterate_batches(dataset, spec, 4, generator=torch.Generator().manual_seed(3)))[1]["site"]
    assert first.tolist() == second.tolist()


def test_iterate_batches_empty_dataset(tmp_path):
    dataset = _dataset(tmp_path).subset([])
    spec = MetadataSpec.from_records([{"class": "a"}])
    with pytest.raises(DatasetError, match="it has no patches"):
        next(iterate_batches(dataset, spec, 2))


def test_metadata_counts_missing_as_none(tmp_path):
    counts = metadata_counts(_dataset(tmp_path, sites=("A7", None, "A7")), fields=("site",))
    assert counts.to_dict("records") == [{"site": "A7", "count": 2}, {"site": None, "count": 1}]


def test_metadata_counts_unknown_field(tmp_path):
    with pytest.raises(DatasetError, match=r"metadata fields \['age'\] are not in"):
        metadata_counts(_dataset(tmp_path), fields=("age",))
