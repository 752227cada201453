"""PNG plots of a run report: per-site accuracy by configuration, sweeps, loss and epsilon per round, sample grids."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on servers and CI machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from medi_core.evaluation.metrics import ALL_SITES, BALANCED_ACCURACY  # noqa: E402
from medi_core.evaluation.patches import LabeledPatches  # noqa: E402
from medi_core.imaging import labelled_grid  # noqa: E402

logger = logging.getLogger(__name__)

DPI = 120  # enough for a README or a slide, small enough to keep reports light


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


ZERO_LABEL = "0"  # printed on a bar of exactly zero, which would otherwise look like a missing bar


def per_site_accuracy_figure(summary: pd.DataFrame, *, num_classes: int | None = None) -> plt.Figure:
    """Draw grouped bars of balanced accuracy per held-out site, one bar per configuration, SEM as error bars.

    ``summary`` is `summarise_over_seeds` output. The last group is the
    site average, which shows a configuration that helps only the big sites.
    A dashed line marks chance level, ``1 / num_classes``, and every bar of
    value 0 carries a "0" label and a marker on the axis, so it cannot be
    mistaken for a missing bar. A missing bar (no result) gets neither.
    """
    rows = summary[(summary["metric"] == BALANCED_ACCURACY) & (summary["site"] != ALL_SITES)]
    averaged = summary[(summary["metric"] == "site_balanced_accuracy") & (summary["site"] == ALL_SITES)]
    configurations = list(dict.fromkeys(rows["configuration"]))
    sites = sorted(set(rows["site"])) + ["site mean"]
    width = 0.8 / max(len(configurations), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(sites) * max(len(configurations), 2) / 2), 4))
    for index, configuration in enumerate(configurations):
        part = rows[rows["configuration"] == configuration].set_index("site")
        mean_row = averaged[averaged["configuration"] == configuration]
        means = np.array([part["mean"].get(s, np.nan) for s in sites[:-1]] + [mean_row["mean"].iloc[0] if len(mean_row) else np.nan])
        errors = [part["sem"].get(s, np.nan) for s in sites[:-1]] + [mean_row["sem"].iloc[0] if len(mean_row) else np.nan]
        positions = np.arange(len(sites)) + (index - (len(configurations) - 1) / 2) * width
        bars = axes.bar(positions, means, width, yerr=np.nan_to_num(errors), capsize=2, label=configuration)
        colour = bars.patches[0].get_facecolor() if bars.patches else None
        # A short marker at every bar's height keeps zero-height bars visible as a dash on the axis.
        axes.plot(positions, means, linestyle="none", marker="_", markersize=max(4.0, 40 * width), color=colour)
        for position, mean in zip(positions, means, strict=True):
            if mean == 0.0:
                axes.text(position, 0.015, ZERO_LABEL, ha="center", va="bottom", fontsize="x-small", color=colour)
    if num_classes is not None and num_classes >= 2:
        axes.axhline(1.0 / num_classes, color="grey", linestyle="--", linewidth=1, label=f"chance (1/{num_classes})")
    axes.set_xticks(np.arange(len(sites)), sites)
    axes.set_ylim(-0.03, 1.05)  # below 0, so a marker at 0 sits above the axis line
    axes.set_xlabel("held-out site")
    axes.set_ylabel("balanced accuracy")
    axes.set_title("Balanced accuracy per held-out site (mean ± SEM over seeds)")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside, so no bar is hidden
    return figure


def plot_per_site_accuracy(summary: pd.DataFrame, path: Path, *, num_classes: int | None = None) -> Path:
    """Save `per_site_accuracy_figure` as a PNG at ``path``."""
    return _save(per_site_accuracy_figure(summary, num_classes=num_classes), path)


def plot_sweep(summary: pd.DataFrame, parameter: str, path: Path, metrics: Sequence[str]) -> Path:
    """Draw each metric against the swept parameter, one line per configuration, SEM as error bars."""
    rows = summary[summary["site"] == ALL_SITES]
    figure, axes_list = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for axes, metric in zip(axes_list[0], metrics, strict=True):
        for configuration, part in rows[rows["metric"] == metric].groupby("configuration", sort=False):
            part = part.sort_values("parameter_value")
            values = part["parameter_value"].astype(float)
            axes.errorbar(values, part["mean"], yerr=np.nan_to_num(part["sem"].to_numpy(dtype=float)), marker="o", capsize=2, label=configuration)
        axes.set_xlabel(parameter)
        axes.set_ylabel(metric.replace("_", " "))
    axes_list[0][0].legend(fontsize="small")
    figure.suptitle(f"Sweep over {parameter} (mean ± SEM over seeds)")
    return _save(figure, path)


def plot_training_rounds(metrics: pd.DataFrame, path: Path) -> Path:
    """Draw training loss and privacy spent (epsilon) per round, one line per site.

    ``metrics`` has a ``round`` column, optionally ``site``, a loss column
    (``train_loss`` or ``loss``) and optionally ``epsilon``. Without epsilon
    values (a run without differential privacy) the right panel shows a note.
    """
    table = metrics.copy()
    loss_column = next((c for c in ("train_loss", "loss") if c in table.columns), None)
    if "site" not in table.columns:
        table["site"] = "all"
    figure, (loss_axes, epsilon_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    for site, part in table.groupby("site", sort=True):
        part = part.sort_values("round")
        if loss_column is not None:
            loss_axes.plot(part["round"], pd.to_numeric(part[loss_column], errors="coerce"), marker=".", label=str(site))
        if "epsilon" in part.columns:
            epsilon = pd.to_numeric(part["epsilon"], errors="coerce")
            if epsilon.notna().any():
                epsilon_axes.plot(part["round"], epsilon, marker=".", label=str(site))
    loss_axes.set_xlabel("round")
    loss_axes.set_ylabel("training loss (mean per local step)")
    loss_axes.set_title("Diffusion loss per round")
    if loss_column is None:
        loss_axes.text(0.5, 0.5, "no loss column in the metrics", ha="center", transform=loss_axes.transAxes)
    else:
        loss_axes.legend(fontsize="small")
    for axes in (loss_axes, epsilon_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    epsilon_axes.set_xlabel("round")
    epsilon_axes.set_ylabel("epsilon spent")
    epsilon_axes.set_title("Privacy spent per round")
    if epsilon_axes.lines:
        epsilon_axes.legend(fontsize="small")
    else:
        epsilon_axes.text(0.5, 0.5, "no epsilon values: trained without DP", ha="center", transform=epsilon_axes.transAxes)
    return _save(figure, path)


def _to_pil(image: np.ndarray) -> Image.Image:
    """Convert (3, H, W) float in [-1, 1] to an RGB PIL image."""
    array = ((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)
    return Image.fromarray(array.transpose(1, 2, 0))


NOT_REQUESTED = "not\nrequested"  # the balance plan asked for no patches in this cell
FAILED = "failed"  # patches were requested but none was written
NO_PATCHES = "no\npatches"  # a set without a plan (real data) has no patches in this cell
PLACEHOLDER_GREY = (226, 226, 234)  # RGB of the tile that marks an empty cell; tinted, unlike anti-aliased text


def _placeholder(text: str, tile_size: int) -> Image.Image:
    """Return a light grey tile with ``text``, drawn where a grid cell has no patch."""
    tile = Image.new("RGB", (tile_size, tile_size), PLACEHOLDER_GREY)
    ImageDraw.Draw(tile).multiline_text((3, 3), text, fill="black", spacing=2)
    return tile


def empty_cell_label(count_requested: int | None) -> str:
    """Return the placeholder text of a cell without patches, from the number of patches requested for it.

    ``None`` means the set follows no plan (real data), so the cell simply has
    no patches. Otherwise 0 is a cell the plan did not request and any other
    number a request that produced nothing.
    """
    if count_requested is None:
        return NO_PATCHES
    if count_requested == 0:
        return NOT_REQUESTED
    return f"{FAILED}\n0 of {count_requested}"


def sample_grid(
    patches: LabeledPatches,
    path: Path,
    *,
    per_cell: int = 4,
    tile_size: int = 64,
    requested: Mapping[tuple[str, str], int] | None = None,
    classes: Sequence[str] | None = None,
    sites: Sequence[str] | None = None,
) -> Path:
    """Save a class x site grid with up to ``per_cell`` patches per cell.

    ``requested`` maps (class, site) to the patches requested for that cell,
    as a balance plan does. A cell without patches then shows a grey tile
    marked "not requested" or "failed", or "no patches" when ``requested`` is
    None. ``classes`` and ``sites`` set the rows and columns, by default those
    present in ``patches``, so grids of several sets can share one layout.
    """
    cells: dict[tuple[str, str], list[Image.Image]] = {}
    images = patches.images.numpy()
    for index, (label, site) in enumerate(zip(patches.labels.tolist(), patches.sites.tolist(), strict=True)):
        cell = cells.setdefault((label, site), [])
        if len(cell) < per_cell:
            cell.append(_to_pil(images[index]).resize((tile_size, tile_size), Image.Resampling.NEAREST))
    rows = list(classes) if classes is not None else list(patches.classes)
    columns = list(sites) if sites is not None else list(patches.site_names)
    for label in rows:
        for site in columns:
            if not cells.get((label, site)):
                count = None if requested is None else int(requested.get((label, site), 0))
                cells[(label, site)] = [_placeholder(empty_cell_label(count), tile_size)]
    grid = labelled_grid(cells, rows, columns, per_cell=per_cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


__all__ = ["per_site_accuracy_figure", "plot_per_site_accuracy", "plot_sweep", "plot_training_rounds", "empty_cell_label", "sample_grid"]
