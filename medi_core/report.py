"""Run report: one folder with CSV tables, PNG plots and a markdown summary of what the numbers mean.

``write_report(folder, ...)`` takes whatever parts of a run exist (downstream
results, sweeps, fidelity tables, training metrics, synthetic samples) and
writes:

| file                            | content                                                  |
|---------------------------------|----------------------------------------------------------|
| ``summary.md``                  | configuration, tables and how to read them               |
| ``config.json``                 | the resolved run configuration                           |
| ``downstream_results.csv``      | tidy per-seed results of `run_configurations`            |
| ``downstream_summary.csv``      | mean, SEM and seed count per configuration, site, metric |
| ``comparison_with_real.csv``    | each configuration's difference from real only, verdict  |
| ``per_site_accuracy.png``       | balanced accuracy per held-out site and configuration     |
| ``sweep_<parameter>.csv/.png``  | each sweep, raw and plotted                              |
| ``fidelity.csv``                | Fréchet and kernel distances per synthetic set and class |
| ``site_fidelity.csv``           | site-classifier accuracy per (class, intended site)      |
| ``training_rounds.png``         | loss and epsilon per round and site                       |
| ``samples_<name>.png``          | class x site grid of synthetic patches                   |
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medi_core.errors import EvaluationError
from medi_core.evaluation.metrics import (
    ALL_SITES,
    BALANCED_ACCURACY,
    MCC,
    SITE_BALANCED_ACCURACY,
    SUMMARY_METRICS,
    WORST_SITE_BALANCED_ACCURACY,
    format_mean_sem,
    summarise_over_seeds,
)
from medi_core.evaluation.patches import LabeledPatches
from medi_core.evaluation.runner import REAL
from medi_core.report_plots import plot_per_site_accuracy, plot_sweep, plot_training_rounds, sample_grid

logger = logging.getLogger(__name__)

METRIC_TITLES = {
    BALANCED_ACCURACY: "balanced acc.",
    SITE_BALANCED_ACCURACY: "site-avg. balanced acc.",
    WORST_SITE_BALANCED_ACCURACY: "worst-site balanced acc.",
    MCC: "MCC",
}

METRIC_EXPLANATION = """\
How to read this table. Every probe is trained on the training sites and tested
only on held-out sites, which no training step has seen.
- *Balanced accuracy* is the mean recall over the classes of all held-out patches;
  chance level is 1 / number of classes.
- *Site-avg. balanced accuracy* is the same measure computed per held-out site and
  then averaged with equal weight per site, so small sites count as much as big ones.
- *Worst-site balanced accuracy* is the lowest per-site value: the site-bias measure
  that site-conditioned synthesis is meant to raise.
- *MCC* (Matthews correlation) ranges from -1 to 1, with 0 for chance, and uses all
  cells of the confusion matrix.
- Values are mean ± standard error of the mean over seeds. Seeds change the random
  subsampling, the synthetic patches drawn and the stain jitter, not the test set.
  A single seed gives no SEM, and a SEM of 0 means that every seed gave the same value.
"""


def read_metrics(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read per-round metrics from a JSONL or CSV file (or pass a DataFrame through)."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise EvaluationError(f"metrics file {path} not found; pass the run's metrics/sites.jsonl or a CSV")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return pd.DataFrame(rows)
    return pd.read_csv(path)


def markdown_table(table: pd.DataFrame, *, float_digits: int = 3) -> str:
    """Format a DataFrame as a GitHub markdown table (floats rounded, NaN shown as a dash)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.{float_digits}f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def downstream_overview(summary: pd.DataFrame) -> pd.DataFrame:
    """Return one row per configuration with the four summary metrics as ``mean ± SEM`` strings."""
    rows = []
    overall = summary[summary["site"] == ALL_SITES]
    for configuration, part in overall.groupby("configuration", sort=False):
        values = part.set_index("metric")
        row: dict[str, Any] = {"configuration": configuration}
        for metric in SUMMARY_METRICS:
            row[METRIC_TITLES[metric]] = format_mean_sem(values.loc[metric, "mean"], values.loc[metric, "sem"])
        row["seeds"] = int(values["n_seeds"].max())
        rows.append(row)
    return pd.DataFrame(rows)


NOISE_FACTOR = 2.0  # a difference counts as beyond noise when it exceeds twice the combined SEM (a rough guide)
# Means and SEMs of identical per-seed values can differ from 0 by float rounding (1e-17). That is far
# below the 3 decimals the report prints, so values below this tolerance count as exactly 0.
ROUNDING_TOLERANCE = 1e-9
METRIC_NAMES = {
    BALANCED_ACCURACY: "balanced accuracy",
    SITE_BALANCED_ACCURACY: "site-averaged balanced accuracy",
    WORST_SITE_BALANCED_ACCURACY: "worst-site balanced accuracy",
    MCC: "MCC",
}

HIGHER, LOWER, WITHIN_NOISE, SAME, NO_VARIATION, ONE_SEED = (
    "higher", "lower", "within noise", "same", "no seed variation", "one seed"
)


def _verdict(difference: float, combined_sem: float) -> str:
    """Classify a difference from real only against the combined SEM of the two configurations."""
    if math.isnan(combined_sem):
        return ONE_SEED
    if combined_sem < ROUNDING_TOLERANCE:
        return SAME if abs(difference) < ROUNDING_TOLERANCE else NO_VARIATION
    if abs(difference) <= NOISE_FACTOR * combined_sem:
        return WITHIN_NOISE
    return HIGHER if difference > 0 else LOWER


def compare_with_real(summary: pd.DataFrame) -> pd.DataFrame:
    """Return every configuration's difference from real only, per summary metric, with its combined SEM and verdict.

    Columns: ``configuration, metric, mean, real_mean, difference,
    combined_sem, verdict``. The combined SEM is ``sqrt(sem_a^2 + sem_b^2)``,
    and the verdict is one of ``higher``, ``lower``, ``within noise``,
    ``same``, ``no seed variation`` (both SEMs 0 but different means) or
    ``one seed`` (no SEM). An empty table when real only was not run.
    """
    columns = ["configuration", "metric", "mean", "real_mean", "difference", "combined_sem", "verdict"]
    overall = summary[summary["site"] == ALL_SITES].set_index(["configuration", "metric"])
    configurations = list(dict.fromkeys(overall.index.get_level_values("configuration")))
    if REAL not in configurations:
        return pd.DataFrame(columns=columns)
    rows = []
    for configuration in configurations:
        if configuration == REAL:
            continue
        for metric in SUMMARY_METRICS:
            if (configuration, metric) not in overall.index or (REAL, metric) not in overall.index:
                continue
            mine, real = overall.loc[(configuration, metric)], overall.loc[(REAL, metric)]
            difference = float(mine["mean"] - real["mean"])
            combined = math.sqrt(mine["sem"] ** 2 + real["sem"] ** 2)  # NaN when either has one seed
            rows.append({
                "configuration": configuration, "metric": metric, "mean": float(mine["mean"]),
                "real_mean": float(real["mean"]), "difference": difference, "combined_sem": combined,
                "verdict": _verdict(difference, combined),
            })
    return pd.DataFrame(rows, columns=columns)


def comparison_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Format `compare_with_real` as one row per configuration: ``difference ± combined SEM (verdict)`` per metric."""
    rows = []
    for configuration, part in comparison.groupby("configuration", sort=False):
        row: dict[str, Any] = {"configuration": configuration}
        for item in part.itertuples(index=False):
            spread = "" if math.isnan(item.combined_sem) else f" ± {item.combined_sem:.3f}"
            row[METRIC_TITLES[item.metric]] = f"{item.difference:+.3f}{spread} ({item.verdict})"
        rows.append(row)
    return pd.DataFrame(rows)


def _comparison_findings(comparison: pd.DataFrame) -> list[str]:
    """State for each configuration on which metrics it is above, below or within noise of real only."""
    if comparison.empty:
        return []
    lines = []
    for configuration, part in comparison.groupby("configuration", sort=False):
        groups = []
        for verdict in (HIGHER, LOWER, WITHIN_NOISE, SAME, NO_VARIATION, ONE_SEED):
            metrics = [METRIC_NAMES[m] for m in part.loc[part["verdict"] == verdict, "metric"]]
            if metrics:
                groups.append(f"{verdict} on {', '.join(metrics)}")
        lines.append(f"- {configuration} against real only: {'; '.join(groups)}.")
    beyond = int(comparison["verdict"].isin([HIGHER, LOWER]).sum())
    unjudged = int(comparison["verdict"].isin([NO_VARIATION, ONE_SEED]).sum())
    if beyond == 0 and unjudged == 0:
        opening = "No configuration differs from real only by more than the noise on any metric."
    else:
        opening = (
            f"{beyond} of {len(comparison)} differences from real only are larger than "
            f"{NOISE_FACTOR:g} x their combined SEM"
        )
        opening += f", and {unjudged} cannot be judged against noise." if unjudged else "."
    caveat = (
        f"A difference counts as beyond noise when it exceeds {NOISE_FACTOR:g} x the combined SEM over seeds. "
        "Seeds vary training randomness only, not the held-out test patches, so this is a rough guide and not "
        "a significance test. \"no seed variation\" means that every seed gave the same values, so the SEM cannot "
        "separate an effect from noise."
    )
    return [opening, "", *lines, "", caveat]


def _site_fidelity_finding(table: pd.DataFrame) -> str:
    synthetic = table[table["source"] == "synthetic"].dropna(subset=["site_accuracy"])
    if synthetic.empty:
        return ""
    parts = []
    for in_training, label in ((True, "cells with real training patches"), (False, "cells absent from the real data")):
        cells = synthetic[synthetic["in_training"] == in_training]
        if len(cells):
            parts.append(f"{label}: {cells['site_accuracy'].mean():.3f} over {len(cells)} cells")
    real = table[table["source"] == "real"].dropna(subset=["site_accuracy"])
    reference = f" The classifier's cross-validated accuracy on real patches is {real['site_accuracy'].mean():.3f}." if len(real) else ""
    return (
        "Mean site accuracy of synthetic patches, "
        + "; ".join(parts)
        + f" (chance {synthetic['chance'].iloc[0]:.3f}).{reference} Accuracy near the real reference means the "
        "synthetic patches carry their intended site's appearance."
    )


GRID_PER_CELL = 4  # default patches shown per (class, site) cell of a sample grid


def _sample_sections(
    folder: Path,
    samples: Mapping[str, LabeledPatches],
    requested_cells: Mapping[str, Mapping[tuple[str, str], int]],
    per_cell: int,
) -> list[str]:
    """Draw one class x site grid per sample set, all with the same rows and columns; return their markdown."""
    classes = sorted({label for patches in samples.values() for label in patches.classes})
    sites = sorted({site for patches in samples.values() for site in patches.site_names})
    lines = []
    for name, patches in samples.items():
        file_name = f"samples_{name}.png"
        requested = requested_cells.get(name)
        sample_grid(patches, folder / file_name, per_cell=per_cell, requested=requested, classes=classes, sites=sites)
        caption = f"Rows are classes, columns are sites, with up to {per_cell} patches per cell. "
        if requested is None:
            caption += "A grey tile marked *no patches* is a cell without patches in this set."
        else:
            asked = [cell for cell, count in requested.items() if count > 0]
            written = patches.cell_counts()
            failed = [cell for cell in asked if written.get(cell, 0) == 0]
            caption += (
                "A grey tile marked *not requested* is a cell the balance plan left out, because the site already "
                "has enough real patches of that class. A tile marked *failed* is a requested cell without any "
                f"written patch: {len(failed)} of the {len(asked)} requested cells."
            )
        lines += [f"## Samples: {name}", "", caption, "", f"![{name} samples]({file_name})", ""]
    return lines


def write_report(
    folder: str | Path,
    *,
    title: str = "MeDi-Fed run",
    config: Mapping[str, Any] | None = None,
    results: pd.DataFrame | None = None,
    sweeps: Mapping[str, pd.DataFrame] | None = None,
    fidelity: pd.DataFrame | None = None,
    site_fidelity: pd.DataFrame | None = None,
    metrics: str | Path | pd.DataFrame | None = None,
    samples: Mapping[str, LabeledPatches] | None = None,
    description: Sequence[str] = (),
    num_classes: int | None = None,
    requested_cells: Mapping[str, Mapping[tuple[str, str], int]] | None = None,
    grid_per_cell: int = GRID_PER_CELL,
) -> Path:
    """Write the report folder and return the path of ``summary.md``.

    ``description`` lines (data set, sites, encoder, what was held out) open
    the summary, so the reader knows the setting before the numbers.
    ``num_classes`` sets the chance level drawn in the per-site plot; without
    it, the largest class count among ``samples`` is used. ``requested_cells``
    maps a sample set's name to the patches requested per (class, site) cell,
    so its grid can tell cells that were not requested from failed ones.
    """
    if num_classes is None and samples:
        num_classes = max(len(patches.classes) for patches in samples.values())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]

    lines += ["## Configuration", ""]
    lines += [f"- {line}" for line in description]
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        lines.append("- Full resolved configuration: [config.json](config.json)")
    lines.append("")

    if results is not None and len(results):
        results.to_csv(folder / "downstream_results.csv", index=False)
        summary = summarise_over_seeds(results)
        summary.to_csv(folder / "downstream_summary.csv", index=False)
        plot_per_site_accuracy(summary, folder / "per_site_accuracy.png", num_classes=num_classes)
        test_sites = sorted(set(results["site"]) - {ALL_SITES})
        lines += [
            "## Downstream classification on held-out sites",
            "",
            f"Held-out test sites: {', '.join(test_sites)}.",
            "",
            markdown_table(downstream_overview(summary)),
            "",
        ]
        comparison = compare_with_real(summary)
        comparison.to_csv(folder / "comparison_with_real.csv", index=False)
        if len(comparison):
            lines += [
                "Difference from real only (mean difference ± combined SEM, with the verdict):",
                "",
                markdown_table(comparison_table(comparison)),
                "",
                *_comparison_findings(comparison),
                "",
            ]
        lines += [
            METRIC_EXPLANATION,
            "![balanced accuracy per held-out site](per_site_accuracy.png)",
            "",
            (f"The dashed line is chance level (1/{num_classes}). " if num_classes else "")
            + "A bar labelled 0 scored zero; a gap without a label means that configuration has no result there.",
            "",
        ]

    for parameter, table in (sweeps or {}).items():
        table.to_csv(folder / f"sweep_{parameter}.csv", index=False)
        sweep_summary = summarise_over_seeds(table, by=("parameter_value", "configuration"))
        plot_sweep(sweep_summary, parameter, folder / f"sweep_{parameter}.png", (BALANCED_ACCURACY, WORST_SITE_BALANCED_ACCURACY))
        lines += [f"## Sweep over {parameter}", "", f"![sweep over {parameter}](sweep_{parameter}.png)", ""]

    if fidelity is not None and len(fidelity):
        fidelity.to_csv(folder / "fidelity.csv", index=False)
        encoder = fidelity.attrs.get("encoder", "the evaluation encoder")
        lines += [
            "## Fidelity",
            "",
            f"Distances between real and synthetic patches in the feature space of {encoder}; lower is closer. "
            "Use them to rank synthetic sets against each other. They are not comparable with published FID values "
            "unless the encoder is Inception-v3.",
            "",
            markdown_table(fidelity),
            "",
        ]

    if site_fidelity is not None and len(site_fidelity):
        site_fidelity.to_csv(folder / "site_fidelity.csv", index=False)
        lines += [
            "## Site fidelity",
            "",
            "A site classifier trained on real patches predicts the site of each synthetic patch; "
            "the table gives the share predicted as the intended site per (class, site) cell.",
            "",
            _site_fidelity_finding(site_fidelity),
            "",
            markdown_table(site_fidelity[site_fidelity["source"] == "synthetic"].drop(columns=["source"])),
            "",
        ]

    if metrics is not None:
        table = read_metrics(metrics)
        if len(table) and "round" in table.columns:
            plot_training_rounds(table, folder / "training_rounds.png")
            lines += ["## Training", "", "![loss and epsilon per round](training_rounds.png)", ""]
        else:
            logger.warning("report %s: the metrics have no rows or no 'round' column; skipping the training plot", folder)

    lines += _sample_sections(folder, samples or {}, requested_cells or {}, grid_per_cell)

    path = folder / "summary.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    logger.info("wrote report %s", path)
    return path


__all__ = ["compare_with_real", "comparison_table", "downstream_overview", "markdown_table", "read_metrics", "write_report"]
