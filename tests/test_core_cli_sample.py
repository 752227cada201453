"""End-to-end tests of the `medi-sample` command on a small saved sampler."""

from __future__ import annotations

import logging
import subprocess
import sys

import pandas as pd
import pytest
import torch

from medi_core.artifact import MediSampler
from medi_core.cli_sample import main
from medi_core.config import DiffusionConfig, model_preset
from medi_core.metadata import CategoricalField, MetadataSpec
from medi_core.model import build_model

SPEC = MetadataSpec((CategoricalField("class", ("stromal", "tumor")), CategoricalField("site", ("A7", "AC"))))


@pytest.fixture(scope="module")
def sampler_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sampler")
    MediSampler(build_model(model_preset("tiny"), SPEC), DiffusionConfig(), {"rounds": 0}).save_pretrained(folder)
    return folder


def test_cli_writes_pngs_manifest_and_contact_sheet(sampler_dir, tmp_path):
    code = main([
        "--sampler", str(sampler_dir), "--class", "tumor", "--site", "AC",
        "--n", "3", "--steps", "2", "--seed", "5", "--out", str(tmp_path),
    ])
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert code == 0
    assert manifest["seed"].tolist() == [5, 6, 7]
    assert set(manifest["site"]) == {"AC"}
    assert all((tmp_path / f).is_file() for f in manifest["file"])
    assert (tmp_path / "contact_class-tumor_site-AC.png").is_file()


def test_cli_conditions_csv(sampler_dir, tmp_path):
    csv = tmp_path / "conditions.csv"
    csv.write_text("class,site,n,seed\ntumor,A7,2,0\nstromal,,1,9\n")
    code = main(["--sampler", str(sampler_dir), "--conditions", str(csv), "--steps", "2", "--out", str(tmp_path / "o")])
    manifest = pd.read_csv(tmp_path / "o" / "manifest.csv", keep_default_na=False)
    assert code == 0
    assert manifest["class"].tolist() == ["tumor", "tumor", "stromal"]
    assert manifest["site"].tolist() == ["A7", "A7", ""]


def test_cli_unknown_site_lists_valid_values(sampler_dir, tmp_path, caplog):
    code = main(["--sampler", str(sampler_dir), "--class", "tumor", "--site", "ZZ", "--out", str(tmp_path)])
    assert code == 2
    assert "value 'ZZ' is not in the vocabulary; valid values are ['A7', 'AC']" in caplog.text


def test_cli_unknown_class_lists_valid_values(sampler_dir, tmp_path, caplog):
    code = main(["--sampler", str(sampler_dir), "--class", "necrosis", "--out", str(tmp_path)])
    assert code == 2
    assert "valid values are ['stromal', 'tumor']" in caplog.text


def test_cli_missing_sampler_folder(tmp_path, caplog):
    code = main(["--sampler", str(tmp_path / "nope"), "--class", "tumor", "--out", str(tmp_path)])
    assert code == 2
    assert "sampler folder" in caplog.text


def test_console_script_help_states_units():
    result = subprocess.run(
        [sys.executable, "-m", "medi_core.cli_sample", "--help"], capture_output=True, text=True, check=True
    )
    assert "--guidance" in result.stdout
    assert "images per condition" in result.stdout


def test_cli_logs_stored_noise_schedule(tmp_path, caplog):
    torch.manual_seed(0)
    folder = tmp_path / "sampler"
    diffusion = DiffusionConfig(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    MediSampler(build_model(model_preset("tiny"), SPEC), diffusion, {"rounds": 0}).save_pretrained(folder)

    with caplog.at_level(logging.INFO, logger="medi_sample"):
        code = main(["--sampler", str(folder), "--class", "tumor", "--n", "1", "--steps", "2", "--out", str(tmp_path / "o")])

    assert code == 0
    assert "with ddim in 2 steps (prediction type v_prediction, noise schedule squaredcos_cap_v2" in caplog.text
    assert "- noise schedule: squaredcos_cap_v2, 1000 training timesteps" in (folder / "README.md").read_text()
