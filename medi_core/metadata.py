"""Conditioning metadata: field vocabularies, encoding to tensors, TCGA barcodes.

A `MetadataSpec` describes what the diffusion model is conditioned on: the
class label plus any number of categorical fields (tissue source site,
scanner, sex, ...) and continuous fields (age, with its range). It is plain
data, saved as JSON next to every checkpoint and sampler, so the embedding
tables can be rebuilt identically at every site.

Two different "no value" cases exist and must not be confused:

- ``None`` (or NaN, or a GDC missing marker) means *unspecified*: the model
  uses the field's learned null embedding, the same one that condition
  dropout trains for classifier-free guidance.
- A value outside the vocabulary is *unknown*: depending on
  ``on_unknown`` it maps to the reserved ``"unknown"`` entry (index 0) or
  raises `MetadataError` naming the field and value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from medi_core.errors import BarcodeError, MetadataError

UNKNOWN = "unknown"
NULL_INDEX = -1  # categorical code for "unspecified"; the encoder maps it to the null embedding
CLASS_FIELD = "class"
SITE_FIELD = "site"

# Spellings the GDC portal and spreadsheets use for "no value".
# "NA" is deliberately absent: it is a real TCGA tissue source site code.
MISSING_MARKERS = frozenset({"", "'--", "--", "unknown", "not reported", "nan"})

OnUnknown = Literal["map", "reject"]


def is_missing(value: Any) -> bool:
    """Return True for None, NaN and the GDC/spreadsheet missing markers."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip().lower() in MISSING_MARKERS:
        return True
    return False


@dataclass(frozen=True)
class CategoricalField:
    """A categorical condition with an explicit vocabulary; index 0 is ``"unknown"``."""

    name: str
    values: tuple[str, ...]
    dropout: float = 0.1  # probability of replacing the value by null during training (CFG)

    def __post_init__(self) -> None:
        values = tuple(str(v) for v in self.values)
        if not values or values[0] != UNKNOWN:
            values = (UNKNOWN, *[v for v in values if v != UNKNOWN])
        if len(set(values)) != len(values):
            raise MetadataError(f"field {self.name!r}: vocabulary has duplicate values {list(values)}")
        if not 0.0 <= self.dropout < 1.0:
            raise MetadataError(f"field {self.name!r}: dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "values", values)

    @property
    def known_values(self) -> tuple[str, ...]:
        """Vocabulary without the reserved ``"unknown"`` entry."""
        return self.values[1:]

    def index(self, value: Any, on_unknown: OnUnknown) -> int:
        """Return the vocabulary index of ``value``; `NULL_INDEX` when it is missing."""
        if isinstance(value, str) and value in self.values:
            return self.values.index(value)  # checked first: "unknown" is also a missing marker
        if is_missing(value):
            return NULL_INDEX
        text = str(value)
        try:
            return self.values.index(text)
        except ValueError:
            pass
        if on_unknown == "map":
            return 0
        raise MetadataError(
            f"field {self.name!r}: value {text!r} is not in the vocabulary; "
            f"valid values are {list(self.known_values)}"
        )


@dataclass(frozen=True)
class ContinuousField:
    """A continuous condition (for example age in years) with its expected range."""

    name: str
    low: float
    high: float
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise MetadataError(f"field {self.name!r}: high ({self.high}) must exceed low ({self.low})")

    def normalise(self, value: Any, on_unknown: OnUnknown) -> float:
        """Map a value to [0, 1] over (low, high); NaN when missing."""
        if is_missing(value):
            return math.nan
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise MetadataError(f"field {self.name!r}: {value!r} is not a number") from None
        if not self.low <= number <= self.high:
            if on_unknown == "reject":
                raise MetadataError(
                    f"field {self.name!r}: {number} is outside the range [{self.low}, {self.high}]"
                )
            number = min(max(number, self.low), self.high)
        return (number - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class MetadataSpec:
    """The conditioning of one model: class, categorical and continuous fields."""

    categorical: tuple[CategoricalField, ...]
    continuous: tuple[ContinuousField, ...] = ()
    on_unknown: OnUnknown = "map"
    class_field: str = CLASS_FIELD

    def __post_init__(self) -> None:
        names = [f.name for f in self.categorical] + [f.name for f in self.continuous]
        if len(set(names)) != len(names):
            raise MetadataError(f"duplicate field names in metadata spec: {names}")
        if self.class_field not in [f.name for f in self.categorical]:
            raise MetadataError(
                f"the class field {self.class_field!r} must be one of the categorical fields {names}"
            )
        if self.on_unknown not in ("map", "reject"):
            raise MetadataError(f"on_unknown must be 'map' or 'reject', got {self.on_unknown!r}")
        object.__setattr__(self, "categorical", tuple(self.categorical))
        object.__setattr__(self, "continuous", tuple(self.continuous))

    # -- construction -------------------------------------------------------

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        categorical: Sequence[str] = (CLASS_FIELD, SITE_FIELD),
        continuous: Mapping[str, tuple[float, float]] | None = None,
        dropout: float = 0.1,
        on_unknown: OnUnknown = "map",
        class_field: str = CLASS_FIELD,
    ) -> MetadataSpec:
        """Build vocabularies (sorted, stable) from the values present in ``records``."""
        seen: dict[str, set[str]] = {name: set() for name in categorical}
        for row in records:
            for name in categorical:
                value = row.get(name)
                if not is_missing(value):
                    seen[name].add(str(value))
        fields = tuple(
            CategoricalField(name, tuple(sorted(seen[name])), dropout=dropout) for name in categorical
        )
        cont = tuple(
            ContinuousField(name, float(lo), float(hi), dropout=dropout)
            for name, (lo, hi) in (continuous or {}).items()
        )
        return cls(fields, cont, on_unknown=on_unknown, class_field=class_field)

    # -- access -------------------------------------------------------------

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.categorical] + [f.name for f in self.continuous]

    def categorical_field(self, name: str) -> CategoricalField:
        for f in self.categorical:
            if f.name == name:
                return f
        raise MetadataError(f"no categorical field {name!r}; fields are {self.field_names}")

    @property
    def classes(self) -> tuple[str, ...]:
        return self.categorical_field(self.class_field).known_values

    def validate_condition(self, condition: Mapping[str, Any]) -> None:
        """Raise `MetadataError` for fields the spec lacks or values it rejects."""
        extra = set(condition) - set(self.field_names)
        if extra:
            raise MetadataError(f"unknown metadata fields {sorted(extra)}; the model knows {self.field_names}")
        self.encode([condition])

    # -- encoding -----------------------------------------------------------

    def encode(
        self, rows: Sequence[Mapping[str, Any]], device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode rows of metadata into model inputs.

        Returns one tensor per field: categorical fields as int64 ``(B,)``
        vocabulary indices (`NULL_INDEX` for unspecified), continuous fields as
        float32 ``(B,)`` in [0, 1] (NaN for unspecified). Fields absent from a
        row count as unspecified.
        """
        out: dict[str, torch.Tensor] = {}
        for f in self.categorical:
            codes = [f.index(row.get(f.name), self.on_unknown) for row in rows]
            out[f.name] = torch.tensor(codes, dtype=torch.long, device=device)
        for f in self.continuous:
            vals = [f.normalise(row.get(f.name), self.on_unknown) for row in rows]
            out[f.name] = torch.tensor(vals, dtype=torch.float32, device=device)
        return out

    # -- serialisation ------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_field": self.class_field,
            "on_unknown": self.on_unknown,
            "categorical": [
                {"name": f.name, "values": list(f.values), "dropout": f.dropout} for f in self.categorical
            ],
            "continuous": [asdict(f) for f in self.continuous],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetadataSpec:
        try:
            return cls(
                tuple(
                    CategoricalField(d["name"], tuple(d["values"]), float(d.get("dropout", 0.1)))
                    for d in data["categorical"]
                ),
                tuple(
                    ContinuousField(d["name"], float(d["low"]), float(d["high"]), float(d.get("dropout", 0.1)))
                    for d in data.get("continuous", [])
                ),
                on_unknown=data.get("on_unknown", "map"),
                class_field=data.get("class_field", CLASS_FIELD),
            )
        except (KeyError, TypeError) as err:
            raise MetadataError(f"invalid metadata spec: missing or malformed entry {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MetadataSpec:
        return cls.from_dict(json.loads(text))

    def with_dropout(self, dropout: float) -> MetadataSpec:
        """Return a copy with the same condition-dropout probability on every field."""
        return MetadataSpec(
            tuple(CategoricalField(f.name, f.values, dropout) for f in self.categorical),
            tuple(ContinuousField(f.name, f.low, f.high, dropout) for f in self.continuous),
            on_unknown=self.on_unknown,
            class_field=self.class_field,
        )


# -- TCGA barcodes ------------------------------------------------------------

# TCGA-<TSS>-<participant>[-<sample><vial>[-<portion><analyte>[-<plate or slide>]]]
# e.g. TCGA-A7-A0D9-01Z-00-DX2: TSS A7, participant A0D9, sample 01, vial Z,
# portion 00, slide DX2. The TSS (tissue source site) identifies the hospital.
_BARCODE = re.compile(
    r"^TCGA-(?P<tss>[A-Z0-9]{2})-(?P<participant>[A-Z0-9]{4})"
    r"(?:-(?P<sample>\d{2})(?P<vial>[A-Z])?"
    r"(?:-(?P<portion>\d{2})(?P<analyte>[A-Z])?"
    r"(?:-(?P<slide>[A-Z0-9]{2,4}))?)?)?"
    r"(?:\.[0-9A-Fa-f-]{36})?$"
)


@dataclass(frozen=True)
class TcgaBarcode:
    """The parts of a TCGA barcode that MeDi-Fed uses."""

    barcode: str
    tss: str
    participant: str
    sample: str | None = None
    slide: str | None = None

    @property
    def patient(self) -> str:
        return f"TCGA-{self.tss}-{self.participant}"


def parse_tcga_barcode(barcode: str) -> TcgaBarcode:
    """Parse a TCGA patient, sample or slide barcode; raise `BarcodeError` if malformed."""
    text = str(barcode).strip()
    match = _BARCODE.match(text.upper())
    if match is None:
        raise BarcodeError(
            f"{barcode!r} is not a TCGA barcode; expected TCGA-<TSS>-<participant>[-...], "
            "for example TCGA-A7-A0D9-01Z-00-DX2"
        )
    return TcgaBarcode(
        barcode=text,
        tss=match["tss"],
        participant=match["participant"],
        sample=match["sample"],
        slide=match["slide"],
    )


def tss_from_barcode(barcode: str) -> str:
    """Return the tissue source site code of a TCGA barcode (``TCGA-A7-...`` gives ``A7``)."""
    return parse_tcga_barcode(barcode).tss


__all__ = [
    "CLASS_FIELD",
    "NULL_INDEX",
    "SITE_FIELD",
    "UNKNOWN",
    "CategoricalField",
    "ContinuousField",
    "MetadataSpec",
    "TcgaBarcode",
    "is_missing",
    "parse_tcga_barcode",
    "tss_from_barcode",
]
