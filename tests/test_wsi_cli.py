"""Tests of the `medi-client prepare` command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medi_client.cli import build_parser, main

WSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
CMU = WSI / "CMU-1-Small-Region.svs"


def test_prepare_help_states_units(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--help"])
    text = capsys.readouterr().out
    assert "µm/px" in text
    assert "(default: 256)" in text


@pytest.mark.skipif(not CMU.is_file(), reason=f"real slides not found in {WSI}")
def test_prepare_command_runs(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    os.symlink(CMU, folder / CMU.name)
    (tmp_path / "slides.csv").write_text("slide_id,class\nCMU-1-Small-Region,skin\n", encoding="utf-8")
    status = main(["prepare", "--slides", str(folder), "--metadata", str(tmp_path / "slides.csv"),
                   "--out", str(tmp_path / "store"), "--workers", "1", "--no-progress"])
    assert status == 0
    assert (tmp_path / "store" / "report.md").is_file()


@pytest.mark.skipif(not CMU.is_file(), reason=f"real slides not found in {WSI}")
def test_prepare_strict_fails_on_skip(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    os.symlink(CMU, folder / CMU.name)
    (folder / "broken.svs").write_bytes(CMU.read_bytes()[:4096])  # a truncated copy: skipped
    (tmp_path / "slides.csv").write_text("slide_id,class\nCMU-1-Small-Region,skin\nbroken,skin\n", encoding="utf-8")
    arguments = ["prepare", "--slides", str(folder), "--metadata", str(tmp_path / "slides.csv"),
                 "--out", str(tmp_path / "store"), "--workers", "1", "--no-progress"]
    assert main(arguments) == 0  # one slide done, one skipped
    assert main([*arguments, "--strict"]) == 1  # the re-run lists the earlier skip


def test_prepare_command_bad_csv_exit_code(tmp_path):
    (tmp_path / "slides.csv").write_text("slide_id\nx\n", encoding="utf-8")
    status = main(["prepare", "--slides", str(tmp_path), "--metadata", str(tmp_path / "slides.csv"),
                   "--out", str(tmp_path / "store"), "--no-progress"])
    assert status == 2


def test_prepare_command_missing_slide_folder(tmp_path, caplog):
    (tmp_path / "slides.csv").write_text("slide_id,class\nx,skin\n", encoding="utf-8")
    status = main(["prepare", "--slides", str(tmp_path / "slidse"), "--metadata", str(tmp_path / "slides.csv"),
                   "--out", str(tmp_path / "store"), "--no-progress"])
    assert status == 2
    assert f"slide folder {tmp_path / 'slidse'} not found" in caplog.text
    assert not (tmp_path / "store").exists()
