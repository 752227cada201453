"""A site's local training round: models built from received weights, no local EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medi_core.training
from fed_data import round_config, write_site_manifests
from medi_client.local_training import model_from_weights, train_round
from medi_client.site import SiteConfig, open_site_data
from medi_core import protocol as P
from medi_core import transfer
from medi_core.config import model_preset
from medi_core.metadata import MetadataSpec
from medi_core.model import build_model
from medi_server.sampler_output import model_from_weights as server_model_from_weights

SPEC = MetadataSpec.from_records([{"class": "tumour", "site": "A7"}, {"class": "stromal", "site": "AC"}])


def _weights() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return transfer.state_to_numpy(build_model(model_preset("tiny"), SPEC).state_dict())


def test_model_from_weights_loads_values():
    weights = _weights()
    model = model_from_weights(model_preset("tiny"), SPEC, weights, site="A7")
    state = model.state_dict()
    assert all(np.array_equal(state[name].numpy(), value) for name, value in weights.items())


def test_model_from_weights_copies_arrays():
    weights = _weights()
    before = weights["unet.conv_in.weight"].copy()
    model = model_from_weights(model_preset("tiny"), SPEC, weights, site="A7")
    with torch.no_grad():
        model.unet.conv_in.weight.add_(1.0)
    assert np.array_equal(weights["unet.conv_in.weight"], before)


def test_model_from_weights_rejects_missing_array():
    weights = _weights()
    del weights["unet.conv_in.weight"]
    with pytest.raises(ValueError, match="site A7: received weights do not match the model"):
        model_from_weights(model_preset("tiny"), SPEC, weights, site="A7")


def test_server_model_from_weights_eval_mode():
    weights = _weights()
    model = server_model_from_weights(weights, model_preset("tiny"), SPEC)
    assert not model.training
    assert np.array_equal(model.state_dict()["unet.conv_in.weight"].numpy(), weights["unet.conv_in.weight"])


@pytest.fixture(scope="module")
def site_ac(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    manifest = write_site_manifests(root / "data", ["AC"])["AC"]
    return SiteConfig.from_node_config({P.NODE_DATA_PATH: str(manifest), P.NODE_SITE_ID: "AC",
                                        P.NODE_OUTPUT_DIR: str(root / "out")})


def test_train_round_builds_no_ema(site_ac, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a site's local training built an EMA")

    monkeypatch.setattr(medi_core.training, "EMA", fail)
    spec = MetadataSpec.from_records(open_site_data(site_ac, image_size=32).records.to_dict("records"))
    torch.manual_seed(0)
    weights = transfer.state_to_numpy(build_model(model_preset("tiny"), spec).state_dict())
    _, metrics = train_round(site_ac, weights, round_config(spec, run_name="no-ema"))
    assert metrics[P.STEPS_DONE] == 1
