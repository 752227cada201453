"""Contact sheets and labelled sample grids as PNG images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

_LABEL_HEIGHT = 14  # pixels of caption strip above each grid row
_PAD = 2  # pixels between tiles


def contact_sheet(images: Sequence[Image.Image], columns: int | None = None, title: str | None = None) -> Image.Image:
    """Tile images into one sheet, row-major, with an optional title strip."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    top = _LABEL_HEIGHT if title else 0
    sheet = Image.new("RGB", (columns * (w + _PAD) + _PAD, top + rows * (h + _PAD) + _PAD), "white")
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet.paste(image.convert("RGB").resize((w, h)), (_PAD + c * (w + _PAD), top + _PAD + r * (h + _PAD)))
    if title:
        ImageDraw.Draw(sheet).text((_PAD, 1), title, fill="black")
    return sheet


def labelled_grid(
    cells: dict[tuple[str, str], Sequence[Image.Image]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    per_cell: int = 1,
) -> Image.Image:
    """A (row x column) grid, e.g. class x site, with ``per_cell`` images side by side per cell.

    Cells missing from ``cells`` stay blank; labels are drawn as text strips.
    """
    sample = next(iter(v[0] for v in cells.values() if v), None)
    w, h = sample.size if sample is not None else (32, 32)
    label_w = 8 * max((len(s) for s in row_labels), default=4)
    cell_w = per_cell * (w + _PAD)
    width = label_w + len(column_labels) * cell_w + _PAD
    height = _LABEL_HEIGHT + len(row_labels) * (h + _PAD) + _PAD
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for j, col in enumerate(column_labels):
        draw.text((label_w + j * cell_w + _PAD, 1), str(col)[: max(1, cell_w // 7)], fill="black")
    for i, row in enumerate(row_labels):
        y = _LABEL_HEIGHT + i * (h + _PAD) + _PAD
        draw.text((2, y + h // 2 - 5), str(row), fill="black")
        for j, col in enumerate(column_labels):
            for k, image in enumerate(list(cells.get((row, col), []))[:per_cell]):
                grid.paste(image.convert("RGB").resize((w, h)), (label_w + j * cell_w + k * (w + _PAD) + _PAD, y))
    return grid


def save_png(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
