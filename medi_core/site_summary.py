"""A site's metadata summary for the handshake: k-anonymised counts per metadata cell.

A cell is one combination of categorical values (class, site, and any other
categorical field). Only counts leave the site, never patch ids, slide ids,
patient ids or pixels, and a count under ``k`` is sent as ``"<k"`` so that a
rare combination cannot single out a patient. ``k = 1`` turns suppression off.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from medi_core.balance import Count
from medi_core.errors import MetadataError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD, is_missing

SUMMARY_VERSION = 1


@dataclass
class SiteSummary:
    """Counts of one site: ``cells`` maps a tuple of field values to a `Count`."""

    fields: tuple[str, ...]
    k: int
    cells: dict[tuple[str | None, ...], Count] = field(default_factory=dict)
    num_patches: int = 0

    def values(self, name: str) -> set[str]:
        """Every non-missing value of field ``name`` in this summary."""
        index = self.fields.index(name)
        return {v for key in self.cells for v in [key[index]] if v is not None}

    def counts_by(self, row_field: str, column_field: str) -> dict[str, dict[str, Count]]:
        """Counts summed onto two fields, for example site -> class -> count (bounds add up)."""
        r, c = self.fields.index(row_field), self.fields.index(column_field)
        result: dict[str, dict[str, Count]] = {}
        for key, count in self.cells.items():
            if key[r] is None or key[c] is None:
                continue
            row = result.setdefault(key[r], {})
            row[key[c]] = row[key[c]] + count if key[c] in row else count
        return result

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": SUMMARY_VERSION,
                "fields": list(self.fields),
                "k": self.k,
                "num_patches": self.num_patches,
                "cells": [{"values": list(key), "count": str(count)} for key, count in sorted(self.cells.items(), key=_sort_key)],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "a site") -> SiteSummary:
        try:
            data = json.loads(text)
            fields = tuple(str(f) for f in data["fields"])
            k = int(data["k"])
            cells = {}
            for cell in data["cells"]:
                key = tuple(None if v is None else str(v) for v in cell["values"])
                if len(key) != len(fields):
                    raise ValueError(f"cell {cell} has {len(key)} values for {len(fields)} fields")
                cells[key] = Count.parse(str(cell["count"]))
            return cls(fields=fields, k=k, cells=cells, num_patches=int(data.get("num_patches", 0)))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise MetadataError(f"the metadata summary from {source} is malformed: {err}") from err


def _sort_key(item: tuple[tuple[str | None, ...], Count]) -> tuple:
    return tuple("" if v is None else v for v in item[0])


def summarize_counts(counts: pd.DataFrame, fields: Sequence[str], *, k: int) -> SiteSummary:
    """Anonymise a count table (one column per field plus ``count``); counts under ``k`` become ``"<k"``.

    ``counts`` is what `medi_core.data.metadata_counts` returns.
    """
    if k < 1:
        raise MetadataError(f"the anonymity threshold k must be >= 1, got {k}")
    cells: dict[tuple[str | None, ...], Count] = {}
    total = 0
    for row in counts.to_dict("records"):
        key = tuple(None if is_missing(row.get(name)) else str(row.get(name)) for name in fields)
        n = int(row["count"])
        total += n
        previous = cells.get(key)
        exact = n + (previous.low if previous is not None else 0)  # missing markers can merge rows
        cells[key] = Count.exact(exact)
    cells = {key: (count if count.low >= k else Count.below(k)) for key, count in cells.items()}
    return SiteSummary(fields=tuple(fields), k=k, cells=cells, num_patches=total)


def exact_class_counts(records: pd.DataFrame, site: str) -> dict[str, int]:
    """Exact class counts of one site value (used locally, never sent)."""
    if SITE_FIELD in records.columns:
        records = records[records[SITE_FIELD].astype(object) == site]
    counts = records[CLASS_FIELD].dropna().astype(str).value_counts()
    return {str(c): int(n) for c, n in counts.items()}


__all__ = ["SiteSummary", "exact_class_counts", "summarize_counts"]
