"""`medi-server --run-config`: files and KEY=VALUE pairs, and the errors for the usual mistakes."""

from __future__ import annotations

import logging

import pytest

from medi_core.errors import ConfigError
from medi_server.cli import STATE_FILE, main, run_config_overrides


def test_pairs_parsed():
    overrides = run_config_overrides(['num-server-rounds=3 beta-schedule="squaredcos_cap_v2"'])
    assert overrides == {"num-server-rounds": 3, "beta-schedule": "squaredcos_cap_v2"}


def test_toml_file_parsed(tmp_path):
    config = tmp_path / "run-config.toml"
    config.write_text('local-steps = 4\nprediction-type = "v_prediction"\n')
    assert run_config_overrides([str(config)]) == {"local-steps": 4, "prediction-type": "v_prediction"}


def test_missing_toml_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="run config file .*run-config.toml not found"):
        run_config_overrides([str(tmp_path / "run-config.toml")])


def test_invalid_toml_file_rejected(tmp_path):
    config = tmp_path / "run-config.toml"
    config.write_text("beta-schedule = squaredcos_cap_v2\n")
    with pytest.raises(ConfigError, match="run-config.toml is not valid TOML"):
        run_config_overrides([str(config)])


def test_file_without_toml_suffix_rejected(tmp_path):
    config = tmp_path / "run-config.tml"
    config.write_text("local-steps = 4\n")
    with pytest.raises(ConfigError, match="is not a KEY=VALUE pair; a run config file must end in .toml"):
        run_config_overrides([str(config)])


def test_missing_path_rejected(tmp_path):
    with pytest.raises(ConfigError, match="is not a KEY=VALUE pair; pass a .toml file or KEY=VALUE pairs"):
        run_config_overrides([str(tmp_path / "run-config.tml")])


def test_word_without_value_rejected():
    with pytest.raises(ConfigError, match="'local-steps' is not a KEY=VALUE pair"):
        run_config_overrides(["num-server-rounds=3 local-steps"])


def test_unquoted_text_value_rejected():
    with pytest.raises(ConfigError, match="text values need double quotes"):
        run_config_overrides(["beta-schedule=squaredcos_cap_v2"])


def test_file_with_pairs_rejected(tmp_path):
    config = tmp_path / "run-config.toml"
    config.write_text("local-steps = 4\n")
    with pytest.raises(ConfigError, match="cannot be combined with other --run-config values"):
        run_config_overrides([str(config), "num-server-rounds=3"])


def test_resume_with_run_config_rejected(tmp_path, caplog):
    (tmp_path / STATE_FILE).write_text("{}\n")

    with caplog.at_level(logging.ERROR, logger="medi_server.cli"):
        status = main(["--resume", str(tmp_path), "--run-config", 'beta-schedule="linear"'])

    assert status == 2
    assert "--resume takes no --run-config" in caplog.text
    assert "edit that file to change one" in caplog.text
