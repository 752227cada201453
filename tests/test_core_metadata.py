"""Tests of metadata vocabularies, encoding and TCGA barcodes."""

from __future__ import annotations

import math

import pytest
import torch

from medi_core.errors import BarcodeError, MetadataError
from medi_core.metadata import (
    NULL_INDEX,
    CategoricalField,
    ContinuousField,
    MetadataSpec,
    is_missing,
    parse_tcga_barcode,
    tss_from_barcode,
)


def _spec(on_unknown="map"):
    return MetadataSpec(
        (CategoricalField("class", ("stromal", "tumor")), CategoricalField("site", ("A7", "A8"))),
        (ContinuousField("age", 20.0, 80.0),),
        on_unknown=on_unknown,
    )


def test_vocabulary_reserves_unknown_at_zero():
    field = CategoricalField("site", ("A7", "A8"))
    assert field.values == ("unknown", "A7", "A8")


def test_encode_known_values():
    codes = _spec().encode([{"class": "tumor", "site": "A7", "age": 50}])
    assert codes["class"].tolist() == [2]
    assert codes["site"].tolist() == [1]
    assert codes["age"].tolist() == [pytest.approx(0.5)]


def test_encode_unseen_value_maps_to_unknown():
    codes = _spec("map").encode([{"class": "tumor", "site": "ZZ"}])
    assert codes["site"].tolist() == [0]


def test_encode_unseen_value_rejected_names_field_and_value():
    with pytest.raises(MetadataError, match=r"field 'site': value 'ZZ' is not in the vocabulary.*'A7', 'A8'"):
        _spec("reject").encode([{"class": "tumor", "site": "ZZ"}])


def test_encode_missing_is_null():
    codes = _spec().encode([{"class": "tumor"}, {"class": "tumor", "site": "'--", "age": None}])
    assert codes["site"].tolist() == [NULL_INDEX, NULL_INDEX]
    assert math.isnan(codes["age"][1].item())


def test_encode_explicit_unknown_is_index_zero():
    codes = _spec("reject").encode([{"class": "tumor", "site": "unknown"}])
    assert codes["site"].tolist() == [0]


def test_continuous_out_of_range_rejected():
    with pytest.raises(MetadataError, match=r"field 'age': 95.0 is outside the range \[20.0, 80.0\]"):
        _spec("reject").encode([{"class": "tumor", "age": 95}])


def test_continuous_out_of_range_clamped_when_mapping():
    codes = _spec("map").encode([{"class": "tumor", "age": 95}])
    assert codes["age"].tolist() == [1.0]


def test_spec_json_roundtrip():
    spec = _spec("reject")
    assert MetadataSpec.from_json(spec.to_json()) == spec


def test_spec_from_records_sorted_vocabulary():
    spec = MetadataSpec.from_records([{"class": "b", "site": "S2"}, {"class": "a", "site": "S1"}, {"class": "a"}])
    assert spec.categorical_field("site").values == ("unknown", "S1", "S2")
    assert spec.classes == ("a", "b")


def test_spec_rejects_missing_class_field():
    with pytest.raises(MetadataError, match="the class field 'class' must be one of"):
        MetadataSpec((CategoricalField("site", ("A7",)),))


def test_validate_condition_unknown_field():
    with pytest.raises(MetadataError, match=r"unknown metadata fields \['scanner'\]"):
        _spec().validate_condition({"class": "tumor", "scanner": "x"})


def test_encode_dtypes():
    codes = _spec().encode([{"class": "tumor"}])
    assert codes["class"].dtype == torch.long
    assert codes["age"].dtype == torch.float32


@pytest.mark.parametrize("marker", ["'--", "--", "Unknown", "", None, float("nan")])
def test_is_missing_gdc_markers(marker):
    assert is_missing(marker)


def test_barcode_slide_parts():
    barcode = parse_tcga_barcode("TCGA-A7-A0D9-01Z-00-DX2")
    assert (barcode.tss, barcode.participant, barcode.sample, barcode.slide) == ("A7", "A0D9", "01", "DX2")


def test_barcode_patient_only():
    assert tss_from_barcode("TCGA-3X-AAVA") == "3X"


def test_barcode_frozen_section():
    assert parse_tcga_barcode("TCGA-CR-7395-01A-01-TS1").slide == "TS1"


def test_barcode_with_uuid_suffix():
    text = "TCGA-AD-6964-01Z-00-DX1.83AF88B9-C59B-48C6-A739-85ACB8F8ECA9"
    assert tss_from_barcode(text) == "AD"


@pytest.mark.parametrize("bad", ["TCGA-A7", "A7-A0D9-01Z", "TCGA-A7-A0D9-1Z", "TCGA_A7_A0D9", ""])
def test_barcode_malformed_rejected(bad):
    with pytest.raises(BarcodeError, match="is not a TCGA barcode"):
        parse_tcga_barcode(bad)


def test_is_missing_keeps_tss_code_na():
    assert not is_missing("NA")
