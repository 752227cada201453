"""End-to-end ``medi-sim`` on a patch store written by ``medi-client prepare`` from the real slides.

The shared data contains two brightfield slides, CMU-1-Small-Region (0.499 µm/px)
and TCGA-CR-7395 (no resolution in its header, so the CSV gives 0.25 µm/px).
A federation needs two training sites and the evaluation one held-out site,
so the store lists each slide under several slide ids (symbolic links), one
site per row of the metadata CSV:

| slide id | class | site |
|---|---|---|
| CMU-1-A, TCGA-CR-7395-A | tumour, normal | S1 |
| CMU-1-B | tumour | S2, which lacks ``normal`` |
| CMU-1-C, TCGA-CR-7395-C | tumour, normal | S3, held out |

The held-out site thus shows the same pixels as the training sites. That is
fine for a check of the pipeline and means nothing for the accuracies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medi_core.errors import ConfigError
from medi_server import superlink as sl
from medi_sim.config import PrivacySimConfig, data_presets
from medi_sim.sites import prepare_sites

WSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
CMU = WSI / "CMU-1-Small-Region.svs"
CR = WSI / "TCGA-CR-7395-01A-01-TS1.svs"
CR_MPP = 0.25  # µm/px given for TCGA-CR-7395, whose header has no resolution
SLIDES = (  # slide id, linked file, class, site
    ("CMU-1-A", CMU, "tumour", "S1"),
    ("TCGA-CR-7395-A", CR, "normal", "S1"),
    ("CMU-1-B", CMU, "tumour", "S2"),
    ("CMU-1-C", CMU, "tumour", "S3"),
    ("TCGA-CR-7395-C", CR, "normal", "S3"),
)
CMU_PATCHES = 27  # 256 px tiles at 0.5 µm/px that `medi-client prepare` keeps from CMU-1-Small-Region
CR_PATCHES = 34  # the same for TCGA-CR-7395 at 0.25 µm/px
QUICK_CAP = 8  # federation.max_synthetic_per_cell of the quick preset
RUN_TIMEOUT = 600  # seconds; the run took 47 to 105 s on 2 cores shared with other jobs (load average 0.8 to 4.7)
# Shortest settings that still run every stage: 2 rounds x 2 local steps, one probe seed, 4 sampler steps.
TINY_RUN = (
    "federation.num_server_rounds=2",
    "federation.local_steps=2",
    "federation.sample_steps=4",
    "evaluation.seeds=[0]",
    "evaluation.encoder.epochs=2",
)

pytestmark = pytest.mark.skipif(not (CMU.is_file() and CR.is_file()), reason=f"real slides not found in {WSI}")


def _prepare(tmp_path: Path, rows: tuple[tuple[str, Path, str, str], ...]) -> Path:
    """Link the slides under their ids, write the metadata CSV and run ``medi-client prepare``; return the store."""
    slides = tmp_path / "slides"
    slides.mkdir()
    lines = ["slide_id,class,site,mpp"]
    for slide_id, source, label, site in rows:
        os.symlink(source, slides / f"{slide_id}.svs")
        lines.append(f"{slide_id},{label},{site},{CR_MPP if source == CR else ''}")
    (tmp_path / "slides.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    store = tmp_path / "store"
    subprocess.run(
        [sys.executable, "-m", "medi_client.cli", "prepare", "--slides", str(slides),
         "--metadata", str(tmp_path / "slides.csv"), "--out", str(store), "--workers", "1", "--no-progress"],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return store


def _medi_sim(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medi_sim.cli", "data=folder", *overrides],
        env=sl.flower_environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )


@pytest.fixture(scope="module")
def store_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp_path = tmp_path_factory.mktemp("patch-store")
    store = _prepare(tmp_path, SLIDES)
    run_dir = tmp_path / "run"
    result = _medi_sim(f"data.path={store}", "data.holdout_tss=[S3]", "data.holdout_fraction=null",
                       f"run_dir={run_dir}", *TINY_RUN)
    return run_dir, result


@pytest.mark.slow
def test_store_run_succeeds(store_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    _, result = store_run
    assert result.returncode == 0, result.stdout[-3000:]  # Hydra logs to stdout


@pytest.mark.slow
def test_store_sites_from_csv(store_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = store_run
    counts = pd.read_csv(run_dir / "sites" / "site_counts.csv")
    train = counts[counts["split"] == "train"].set_index(["site", "class"])["count"].to_dict()
    assert train == {("S1", "normal"): CR_PATCHES, ("S1", "tumour"): CMU_PATCHES, ("S2", "tumour"): CMU_PATCHES}
    holdout = counts[counts["split"] == "holdout"]
    assert set(holdout["site"]) == {"S3"}
    assert holdout["count"].sum() == CMU_PATCHES + CR_PATCHES


@pytest.mark.slow
def test_store_holdout_never_trains(store_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = store_run
    for site in ("S1", "S2"):
        manifest = pd.read_csv(run_dir / "sites" / site / "patches.csv")
        assert set(manifest["tss"]) == {site}
    assert "S3" not in {path.name for path in (run_dir / "sites").iterdir()}
    holdout = pd.read_csv(run_dir / "sites" / "holdout.csv")
    assert set(holdout["tss"]) == {"S3"}


@pytest.mark.slow
def test_store_patches_written_as_png(store_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = store_run
    manifest = pd.read_csv(run_dir / "sites" / "S1" / "patches.csv")
    assert len(manifest) == CMU_PATCHES + CR_PATCHES
    assert all(Path(path).is_file() and path.endswith(".png") for path in manifest["path"])


@pytest.mark.slow
def test_store_synthesis_fills_missing_class(store_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = store_run
    # S2 has no normal patches and S1 has 34, so the balance plan requests normal patches from S2, capped at 8.
    table = pd.read_csv(run_dir / "report" / "synthesis_counts.csv")
    federated = table[table["synthetic"] == "medi-fed"]
    assert list(zip(federated["site"], federated["class"], federated["count"])) == [("S2", "normal", QUICK_CAP)]
    written = pd.read_csv(run_dir / "sites" / "S2" / "output" / "synthetic" / "medi" / "manifest.csv")
    assert len(written) == QUICK_CAP
    folder = run_dir / "sites" / "S2" / "output" / "synthetic" / "medi"
    assert all((folder / path).is_file() for path in written["path"])


@pytest.mark.slow
def test_store_report_tests_held_out_site(store_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = store_run
    summary = pd.read_csv(run_dir / "report" / "downstream_summary.csv")
    assert set(summary[summary["site"] != "(all)"]["site"]) == {"S3"}
    assert "real+medi-fed" in set(summary["configuration"])
    assert "Held-out test sites: S3." in (run_dir / "report" / "summary.md").read_text()


def test_store_of_two_sites_rejected(tmp_path: Path) -> None:
    store = _prepare(tmp_path, (("CMU-1-Small-Region", CMU, "tumour", "CMU"), ("TCGA-CR-7395-01A-01-TS1", CR, "normal", "")))
    result = _medi_sim(f"data.path={store}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    # TCGA-CR-7395 has an empty site cell, so its barcode gives the site CR.
    # Hydra's log handler writes to stdout; the progress bar writes to stderr.
    assert "contains patches of 2 tissue source site(s) ['CMU', 'CR'], but medi-sim needs at least 3" in result.stdout


def test_folder_holdout_list_needs_null_fraction(tmp_path: Path) -> None:
    data = data_presets()["folder"]  # holds out a fraction of the TSS codes by default
    data.path = str(tmp_path)
    data.holdout_tss = ["S3"]
    with pytest.raises(ConfigError, match="add data.holdout_fraction=null"):
        prepare_sites(data, PrivacySimConfig(), tmp_path, image_size=32)
