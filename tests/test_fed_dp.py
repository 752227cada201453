"""DP-SGD in a site's train handler: epsilon reported, budget enforced, accountant kept on disk."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from fed_data import write_site_manifests
from medi_client.local_training import train_round
from medi_client.site import SiteConfig, open_site_data
from medi_core import protocol as P
from medi_core import transfer
from medi_core.config import DiffusionConfig, TrainConfig, model_preset
from medi_core.errors import PrivacyBudgetExceeded
from medi_core.metadata import MetadataSpec
from medi_core.model import build_model

MAX_EPSILON = 8.0


@pytest.fixture(scope="module")
def site_and_round(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    manifest = write_site_manifests(root / "data", ["AC"])["AC"]
    site = SiteConfig.from_node_config({
        P.NODE_DATA_PATH: str(manifest), P.NODE_SITE_ID: "AC", P.NODE_OUTPUT_DIR: str(root / "out"),
        P.NODE_MAX_EPSILON: MAX_EPSILON,
    })
    spec = MetadataSpec.from_records(open_site_data(site, image_size=32).records.to_dict("records"))
    torch.manual_seed(0)
    weights = transfer.state_to_numpy(build_model(model_preset("tiny"), spec).state_dict())
    config = {
        P.SERVER_ROUND: 1,
        P.MODEL_CONFIG: json.dumps(asdict(model_preset("tiny"))),
        P.DIFFUSION_CONFIG: json.dumps(asdict(DiffusionConfig())),
        # The whole run is planned as one step, so that step spends the full budget.
        P.TRAIN_CONFIG: json.dumps(asdict(TrainConfig(batch_size=2, total_steps=1))),
        P.METADATA_SPEC: spec.to_json(),
        P.LOCAL_STEPS: 1,
        P.RUN_NAME: "dp-test",
    }
    _, metrics = train_round(site, weights, config)
    return site, weights, config, metrics


@pytest.mark.slow
def test_dp_round_reports_epsilon_within_budget(site_and_round):
    _, _, _, metrics = site_and_round
    assert 0 < metrics[P.EPSILON] <= MAX_EPSILON


@pytest.mark.slow
def test_dp_round_withholds_loss(site_and_round):
    _, _, _, metrics = site_and_round
    assert metrics[P.TRAIN_LOSS] != metrics[P.TRAIN_LOSS]  # NaN: the noiseless loss is not sent


@pytest.mark.slow
def test_dp_accountant_stored_at_site(site_and_round):
    site, _, _, _ = site_and_round
    assert (site.privacy_dir / "dp-test-accountant.json").is_file()


@pytest.mark.slow
def test_dp_round_past_budget_raises(site_and_round):
    site, weights, config, _ = site_and_round
    with pytest.raises(PrivacyBudgetExceeded):
        train_round(site, weights, {**config, P.SERVER_ROUND: 2})
