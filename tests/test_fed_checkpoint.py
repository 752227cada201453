"""Run settings from Flower's run config, round checkpoints, certificates and the app bundle."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from medi_core.errors import CheckpointError, ConfigError
from medi_server.app_bundle import write_app_folder
from medi_server.checkpoint import ServerCheckpoint, complete_rounds, load_checkpoint, save_checkpoint
from medi_core.sampling import SchedulerName
from medi_server.settings import DEFAULT_RUN_CONFIG, SAMPLE_SCHEDULERS, FederationSettings, check_resumed_settings

REPO = Path(__file__).resolve().parents[1]


def test_settings_parse_kebab_keys():
    settings = FederationSettings.from_run_config({"num-server-rounds": 7, "lr": 1, "strategy": "fedprox"})
    assert settings.num_server_rounds == 7
    assert settings.lr == 1.0
    assert settings.strategy == "fedprox"


def test_settings_unknown_key_raises():
    with pytest.raises(ConfigError, match="unknown run config key 'num-rounds'"):
        FederationSettings.from_run_config({"num-rounds": 3})


def test_settings_unknown_key_suggests_close_key():
    with pytest.raises(ConfigError, match="unknown run config key 'local-step'; did you mean 'local-steps'?"):
        FederationSettings.from_run_config({"local-step": 3})


def test_settings_invalid_value_names_key():
    with pytest.raises(ConfigError, match="run config strategy = 'fedsgd' is invalid"):
        FederationSettings(strategy="fedsgd")


def test_settings_fractional_int_raises():
    with pytest.raises(ConfigError, match="local-steps must be an integer"):
        FederationSettings.from_run_config({"local-steps": 2.5})


def test_settings_invalid_prediction_type_names_key():
    with pytest.raises(ConfigError, match=r"prediction-type = 'x0' is invalid; expected one of \['epsilon', 'v_prediction'\]"):
        FederationSettings.from_run_config({"prediction-type": "x0"})


def test_settings_invalid_sample_scheduler_names_key():
    with pytest.raises(ConfigError, match=r"sample-scheduler = 'dpm-solver\+\+' is invalid; expected one of \['ddim', "):
        FederationSettings.from_run_config({"sample-scheduler": "dpm-solver++"})


def test_settings_parse_sampling_keys():
    settings = FederationSettings.from_run_config({"prediction-type": "v_prediction", "sample-scheduler": "dpmsolver++"})
    assert settings.prediction_type == "v_prediction"
    assert settings.sample_scheduler == "dpmsolver++"


def test_settings_schedulers_match_sampling():
    assert SAMPLE_SCHEDULERS == get_args(SchedulerName)


def test_resume_same_prediction_type_passes():
    check_resumed_settings(FederationSettings(prediction_type="v_prediction"), {"prediction-type": "v_prediction"},
                           checkpoint="runs/x (round 3)")


def test_resume_other_prediction_type_raises():
    with pytest.raises(ConfigError, match=r"prediction-type = 'epsilon' differs from 'v_prediction'.*runs/x \(round 3\)"):
        check_resumed_settings(FederationSettings(), {"prediction-type": "v_prediction"}, checkpoint="runs/x (round 3)")


def test_resume_checkpoint_without_key_passes_epsilon():
    check_resumed_settings(FederationSettings(), {"lr": 1e-4}, checkpoint="runs/x (round 3)")


def test_resume_checkpoint_without_key_rejects_v_prediction():
    with pytest.raises(ConfigError, match="differs from 'epsilon'"):
        check_resumed_settings(FederationSettings(prediction_type="v_prediction"), {}, checkpoint="runs/x (round 3)")


def test_settings_invalid_beta_schedule_names_key():
    with pytest.raises(ConfigError, match=r"beta-schedule = 'cosine' is invalid; expected one of \['linear', "):
        FederationSettings.from_run_config({"beta-schedule": "cosine"})


def test_resume_other_beta_schedule_raises():
    stored = {"prediction-type": "v_prediction", "beta-schedule": "squaredcos_cap_v2"}
    settings = FederationSettings(prediction_type="v_prediction")
    with pytest.raises(ConfigError, match=r"beta-schedule = 'linear' differs from 'squaredcos_cap_v2'.*runs/x.*"
                                          r"set beta-schedule = 'squaredcos_cap_v2' again .*federation\.json"):
        check_resumed_settings(settings, stored, checkpoint="runs/x (round 3)")


def test_resume_checkpoint_without_schedule_rejects_cosine():
    settings = FederationSettings(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ConfigError, match="beta-schedule = 'squaredcos_cap_v2' differs from 'linear'"):
        check_resumed_settings(settings, {"prediction-type": "epsilon"}, checkpoint="runs/x (round 3)")


def test_pyproject_lists_every_run_config_key():
    table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == DEFAULT_RUN_CONFIG


def test_app_bundle_carries_defaults(tmp_path):
    folder = write_app_folder(tmp_path / "app")
    app = tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["config"] == DEFAULT_RUN_CONFIG
    assert app["components"]["clientapp"] == "medi_client.client_app:app"


def _checkpoint(server_round: int) -> ServerCheckpoint:
    weights = {"w": np.full(3, float(server_round), dtype=np.float32)}
    return ServerCheckpoint(server_round, weights, {"w": weights["w"] / 2}, {"m/w": weights["w"]}, {"note": "x"})


def test_checkpoint_round_trip(tmp_path):
    save_checkpoint(tmp_path, _checkpoint(4))
    loaded = load_checkpoint(tmp_path)
    assert loaded.server_round == 4
    np.testing.assert_array_equal(loaded.ema_weights["w"], [2.0, 2.0, 2.0])
    assert loaded.state["note"] == "x"


def test_checkpoint_keeps_newest_rounds(tmp_path):
    for server_round in (1, 2, 3):
        save_checkpoint(tmp_path, _checkpoint(server_round), keep=2)
    assert complete_rounds(tmp_path) == [2, 3]


def test_checkpoint_ignores_unfinished_folder(tmp_path):
    save_checkpoint(tmp_path, _checkpoint(1))
    (tmp_path / "checkpoints" / "round-0002").mkdir()  # a crash before state.json was written
    assert load_checkpoint(tmp_path).server_round == 1


def test_checkpoint_missing_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no complete round checkpoint"):
        load_checkpoint(tmp_path)


def test_certificates_cover_loopback(tmp_path):
    subprocess.run([sys.executable, str(REPO / "deploy" / "certs" / "generate_certs.py"), "--out", str(tmp_path),
                    "--sites", "A7", "AC"], check=True, capture_output=True, timeout=120)
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert load_ssh_private_key((tmp_path / "supernodes" / "A7").read_bytes(), None).curve.name == "secp384r1"
    assert (tmp_path / "supernodes" / "AC").stat().st_mode & 0o077 == 0
    assert "ssh-ed25519" in (tmp_path / "trusted-entities.yaml").read_text()
