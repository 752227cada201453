"""End-to-end ``medi-sim data=tcga-ut`` on TCGA-UT folders planned with the real GDC slide table.

The folder is built at test time from the 120 real BRCA-M2C patches in the
TCGA-UT layout ``<class>/<slide barcode>/<tile>.jpg``, with the patch's
dominant cell class as its class. Its 12 TSS codes are a small part of the
8,726 slides in ``all_slide_metadata.csv``, so the preset's top-8 grouping
finds none of its codes and the run uses ``data.grouping=per_tss``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from medi_server import superlink as sl
from medi_sim.tcga_split import split_slide_metadata

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BRCA = DATA / "patches" / "brca-m2c"
TILES = DATA / "patches" / "tcga-tiles"
SLIDE_CSV = DATA / "tcga" / "all_slide_metadata.csv"
SPLIT_SEED = 7  # holds out 4 small BRCA-M2C codes with all 3 classes (seed 0 holds out UU and XX: 3 tumour patches)
HELD_OUT = {"OL": 5, "PE": 3, "XX": 2, "Z7": 1}  # BRCA-M2C patches per held-out TSS code
MIN_SITE_PATCHES = 5  # leaves S3 (4), WT (2), UL, UU and W8 (1 each) out of the federation
RUN_TIMEOUT = 600  # seconds; the run took 47 to 121 s on 2 cores shared with other jobs (load average 0.6 to 6.9)
TINY_RUN = (
    "federation.num_server_rounds=2",
    "federation.local_steps=2",
    "federation.sample_steps=4",
    "evaluation.seeds=[0]",
    "evaluation.encoder.epochs=2",
)

pytestmark = pytest.mark.skipif(
    not ((BRCA / "metadata.csv").is_file() and SLIDE_CSV.is_file()),
    reason=f"real patches or slide table not found in {DATA}",
)


def _medi_sim(*overrides: str) -> subprocess.CompletedProcess:
    # From the repository root, as the tcga-ut preset's relative data.slide_metadata expects.
    return subprocess.run(
        [sys.executable, "-m", "medi_sim.cli", "data=tcga-ut", *overrides],
        cwd=REPO, env=sl.flower_environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )


@pytest.fixture(scope="module")
def tcga_ut_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The BRCA-M2C patches as ``<dominant cell class>/<slide barcode>/<patch>.jpg``."""
    root = tmp_path_factory.mktemp("tcga-ut") / "TCGA-UT"
    table = pd.read_csv(BRCA / "metadata.csv", dtype=str, keep_default_na=False)
    for row in table.itertuples():
        folder = root / row.dominant_cell_class / row.slide_barcode
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(BRCA / row.file).convert("RGB").save(folder / f"{Path(row.file).stem}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tcga_run(tcga_ut_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("medi-sim") / "tcga-ut"
    result = _medi_sim(
        f"data.path={tcga_ut_folder}", "data.grouping=per_tss", f"data.split_seed={SPLIT_SEED}",
        f"data.min_site_patches={MIN_SITE_PATCHES}", f"run_dir={run_dir}", *TINY_RUN,
    )
    return run_dir, result


def _training_manifests(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {path.parent.name: pd.read_csv(path) for path in sorted((run_dir / "sites").glob("*/patches.csv"))}


@pytest.mark.slow
def test_tcga_run_succeeds(tcga_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    _, result = tcga_run
    assert result.returncode == 0, result.stdout[-3000:]  # Hydra logs to stdout


@pytest.mark.slow
def test_tcga_holdout_from_slide_table(tcga_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = tcga_run
    written = json.loads((run_dir / "sites" / "site_plan.json").read_text())
    expected, _ = split_slide_metadata(SLIDE_CSV, grouping="per_tss", holdout_fraction=0.2, seed=SPLIT_SEED)
    assert set(written["holdout_tss"]) == set(expected.holdout_tss)
    holdout = pd.read_csv(run_dir / "sites" / "holdout.csv", dtype={"tss": str})
    assert holdout.groupby("tss").size().to_dict() == HELD_OUT


@pytest.mark.slow
def test_tcga_sites_are_tss_codes(tcga_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = tcga_run
    manifests = _training_manifests(run_dir)
    assert sorted(manifests) == ["A7", "A8", "AC"]
    for site, manifest in manifests.items():
        assert set(manifest["tss"]) == {site}
        assert set(manifest["slide_id"].str.split("-").str[1]) == {site}


@pytest.mark.slow
def test_tcga_holdout_slides_never_train(tcga_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = tcga_run
    holdout = pd.read_csv(run_dir / "sites" / "holdout.csv")
    training = pd.concat(_training_manifests(run_dir).values(), ignore_index=True)
    assert set(holdout["slide_id"]) & set(training["slide_id"]) == set()
    assert set(training["tss"]) & set(HELD_OUT) == set()


@pytest.mark.slow
def test_tcga_synthesis_fills_planned_cells(tcga_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = tcga_run
    # Targets are the largest site's count per class (lymphocyte 10 at A7, stromal 16 at AC, tumour 38 at A8);
    # each site is asked for the difference, capped at the quick preset's 8 per cell.
    expected = {
        ("A7", "stromal"): 8, ("A7", "tumor_epithelial"): 8,
        ("A8", "lymphocyte"): 6, ("A8", "stromal"): 8,
        ("AC", "lymphocyte"): 8, ("AC", "tumor_epithelial"): 8,
    }
    table = pd.read_csv(run_dir / "report" / "synthesis_counts.csv")
    federated = table[table["synthetic"] == "medi-fed"]
    assert dict(zip(zip(federated["site"], federated["class"]), federated["count"])) == expected
    for site in ("A7", "A8", "AC"):
        folder = run_dir / "sites" / site / "output" / "synthetic" / "medi"
        written = pd.read_csv(folder / "manifest.csv")
        assert all((folder / path).is_file() for path in written["path"]), site


@pytest.mark.slow
def test_tcga_report_tests_held_out_sites(tcga_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = tcga_run
    summary = pd.read_csv(run_dir / "report" / "downstream_summary.csv")
    assert set(summary[summary["site"] != "(all)"]["site"]) == set(HELD_OUT)
    text = (run_dir / "report" / "summary.md").read_text()
    assert "Training sites (patches): A7 (36), A8 (47), AC (17)." in text


def test_tcga_top_k_subset_rejected(tcga_ut_folder: Path, tmp_path: Path) -> None:
    result = _medi_sim(f"data.path={tcga_ut_folder}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "leaves 1 training site(s) ['other']" in result.stdout
    assert "For such a folder set data.grouping=per_tss" in result.stdout


@pytest.mark.skipif(not TILES.is_dir(), reason=f"TCGA-UT tiles not found at {TILES}")
def test_tcga_tiles_two_sites_rejected(tmp_path: Path) -> None:
    result = _medi_sim(f"data.path={TILES}", "data.class_column=project_id", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "contains patches of 2 tissue source site(s) ['3X', 'AD'], but medi-sim needs at least 3" in result.stdout
