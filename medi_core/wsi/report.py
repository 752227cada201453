"""Run report of `prepare`: slides done, slides skipped with reasons, patch counts per slide, class and site."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medi_core.metadata import CLASS_FIELD, SITE_FIELD
from medi_core.wsi.process import SlideResult
from medi_core.wsi.slide_table import JoinResult

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"


@dataclass
class RunReport:
    """Everything a `prepare` run did, written as ``report.json`` and ``report.md``."""

    slides: list[SlideResult]
    join: JoinResult
    settings: dict[str, Any]
    seconds: float
    extra_notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> list[SlideResult]:
        return [s for s in self.slides if s.status in ("done", "already done")]

    @property
    def skipped(self) -> list[SlideResult]:
        return [s for s in self.slides if s.status in ("skipped", "already skipped")]

    @property
    def num_patches(self) -> int:
        return sum(s.num_patches for s in self.done)

    def counts_by(self, name: str) -> dict[str, int]:
        """Patches per value of a metadata field over finished slides ("(missing)" for None)."""
        counts: Counter[str] = Counter()
        for slide in self.done:
            value = slide.metadata.get(name)
            counts["(missing)" if value is None else str(value)] += slide.num_patches
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "num_patches": self.num_patches,
            "slides_done": len(self.done),
            "slides_skipped": len(self.skipped),
            "patches_per_class": self.counts_by(CLASS_FIELD),
            "patches_per_site": self.counts_by(SITE_FIELD),
            "slides": [asdict(s) for s in self.slides],
            "metadata_join": asdict(self.join) | {"jobs": len(self.join.jobs)},
            "settings": self.settings,
            "notes": self.extra_notes,
        }

    def write(self, out: Path) -> None:
        """Write ``report.json`` and ``report.md`` into the store folder."""
        (out / REPORT_JSON).write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        (out / REPORT_MARKDOWN).write_text(self.markdown(), encoding="utf-8")

    def markdown(self) -> str:
        lines = [
            "# prepare report",
            "",
            f"{len(self.done)} slide(s) done, {len(self.skipped)} skipped, {self.num_patches} patches, "
            f"{self.seconds:.1f} s.",
            "",
            "## Slides done",
            "",
            "| slide | status | patches | class | site | MPP (µm/px) | MPP source | background / blurred rejected |",
            "|---|---|---:|---|---|---:|---|---:|",
        ]
        for s in self.done:
            mpp = f"{s.mpp:.4f}" if s.mpp is not None else "?"
            lines.append(
                f"| {s.slide_id} | {s.status} | {s.num_patches} | {s.metadata.get(CLASS_FIELD)} | "
                f"{s.metadata.get(SITE_FIELD)} | {mpp} | {s.mpp_source} | {s.rejected_background} / {s.rejected_blur} |"
            )

        lines += ["", "## Slides skipped", ""]
        lines += [f"- `{s.path}`: {s.reason}{_earlier_note(s)}" for s in self.skipped] or ["none"]
        lines += ["", "## Patches per class", ""] + _count_lines(self.counts_by(CLASS_FIELD))
        lines += ["", "## Patches per site", ""] + _count_lines(self.counts_by(SITE_FIELD))

        lines += ["", "## Metadata CSV join", ""]
        lines += _list_section("slide files without a CSV row", self.join.unlisted_slides)
        lines += _list_section("CSV rows without a slide file", self.join.rows_without_slide)
        lines += _list_section(
            "duplicate slide ids in the CSV (identical rows count once, and slides whose rows disagree are skipped)",
            self.join.duplicate_ids,
        )
        lines += _list_section("slide ids found as more than one file (first kept)", self.join.duplicate_files)
        lines += _list_section("files in slide folders that are not slides", self.join.ignored_files)

        if self.extra_notes:
            lines += ["", "## Notes", ""] + [f"- {note}" for note in self.extra_notes]
        return "\n".join(lines) + "\n"


def _earlier_note(slide: SlideResult) -> str:
    if slide.status != "already skipped":
        return ""
    return " (recorded by an earlier run and not read again; --retry-skipped tries it again)"


def _count_lines(counts: dict[str, int]) -> list[str]:
    return [f"- {name}: {count}" for name, count in counts.items()] or ["none"]


def _list_section(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return [f"- {title}: none"]
    return [f"- {title} ({len(items)}): " + ", ".join(f"`{i}`" for i in items)]


__all__ = ["REPORT_JSON", "REPORT_MARKDOWN", "RunReport"]
