"""A site's local training round: held-out patches, models built from received weights, no local EMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medi_core.training
from fed_data import round_config, write_site_manifests
from medi_client.local_training import TRAINER_STATE, model_from_weights, train_round
from medi_client.memorisation import holdout_size, open_site_split, split_holdout
from medi_client.site import SiteConfig, open_site_data
from medi_core import protocol as P
from medi_core import transfer
from medi_core.config import model_preset
from medi_core.data import PatchDataset
from medi_core.data.dataset import PATH_COLUMN
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


def _manifest_site(tmp_path_factory, site: str) -> SiteConfig:
    root = tmp_path_factory.mktemp(f"local-{site}")
    manifest = write_site_manifests(root / "data", [site])[site]
    return SiteConfig.from_node_config({P.NODE_DATA_PATH: str(manifest), P.NODE_SITE_ID: site,
                                        P.NODE_OUTPUT_DIR: str(root / "out")})


@pytest.fixture(scope="module")
def site_ac(tmp_path_factory):
    return _manifest_site(tmp_path_factory, "AC")


def test_train_round_builds_no_ema(site_ac, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a site's local training built an EMA")

    monkeypatch.setattr(medi_core.training, "EMA", fail)
    spec = MetadataSpec.from_records(open_site_data(site_ac, image_size=32).records.to_dict("records"))
    torch.manual_seed(0)
    weights = transfer.state_to_numpy(build_model(model_preset("tiny"), spec).state_dict())
    _, metrics = train_round(site_ac, weights, round_config(spec, run_name="no-ema"))
    assert metrics[P.STEPS_DONE] == 1


# -- held-out patches ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_patches", "fraction", "expected"),
    [(17, 0.1, 2), (36, 0.1, 4), (5, 0.1, 1), (2, 0.9, 1), (1, 0.5, 0), (10, 0.0, 0)],
)
def test_holdout_size_cases(num_patches, fraction, expected):
    assert holdout_size(num_patches, fraction) == expected


def _paths(dataset: PatchDataset | None) -> set[str]:
    return set() if dataset is None else set(dataset.records[PATH_COLUMN])


def test_split_holdout_disjoint_and_complete(site_ac):
    dataset = open_site_data(site_ac, image_size=32)
    train, holdout = split_holdout(dataset, fraction=0.1, seed=0, site="AC")
    assert len(holdout) == 2
    assert not _paths(train) & _paths(holdout)
    assert _paths(train) | _paths(holdout) == _paths(dataset)


def test_split_holdout_ignores_record_order(site_ac):
    dataset = open_site_data(site_ac, image_size=32)
    reversed_dataset = dataset.subset(list(range(len(dataset)))[::-1])
    _, holdout = split_holdout(dataset, fraction=0.3, seed=0, site="AC")
    _, reversed_holdout = split_holdout(reversed_dataset, fraction=0.3, seed=0, site="AC")
    assert _paths(holdout) == _paths(reversed_holdout)


def test_split_holdout_changes_with_seed(site_ac):
    dataset = open_site_data(site_ac, image_size=32)
    _, first = split_holdout(dataset, fraction=0.3, seed=0, site="AC")
    _, second = split_holdout(dataset, fraction=0.3, seed=1, site="AC")
    assert _paths(first) != _paths(second)


def test_split_holdout_zero_fraction_keeps_all(site_ac):
    dataset = open_site_data(site_ac, image_size=32)
    train, holdout = split_holdout(dataset, fraction=0.0, seed=0, site="AC")
    assert holdout is None
    assert len(train) == len(dataset)


def _record_loaded_paths(monkeypatch) -> list[str]:
    loaded: list[str] = []
    original = PatchDataset.load_image

    def load_image(self, index):
        loaded.append(str(self.records.iloc[index][PATH_COLUMN]))
        return original(self, index)

    monkeypatch.setattr(PatchDataset, "load_image", load_image)
    return loaded


def _tiny_weights(site: SiteConfig) -> tuple[MetadataSpec, dict[str, np.ndarray]]:
    spec = MetadataSpec.from_records(open_site_data(site, image_size=32).records.to_dict("records"))
    torch.manual_seed(0)
    return spec, transfer.state_to_numpy(build_model(model_preset("tiny"), spec).state_dict())


@pytest.fixture(scope="module")
def site_ol(tmp_path_factory):
    """Site OL: 5 patches, so one held out and one batch of 4 covers the rest."""
    return _manifest_site(tmp_path_factory, "OL")


def test_train_round_trains_on_training_split_only(site_ol, monkeypatch):
    spec, weights = _tiny_weights(site_ol)
    config = round_config(spec, batch_size=4, run_name="holdout")
    train, holdout = open_site_split(site_ol, config, image_size=32)
    loaded = _record_loaded_paths(monkeypatch)
    _, metrics = train_round(site_ol, weights, config)
    # One batch of 4 contains each of the 4 training patches once.
    assert set(loaded) == _paths(train)
    assert not set(loaded) & _paths(holdout)
    assert metrics[P.NUM_EXAMPLES] == 4


def test_private_round_trains_on_training_split_only(site_ol, tmp_path, monkeypatch):
    private_site = SiteConfig(data_path=site_ol.data_path, site_id="OL", output_dir=tmp_path, max_epsilon=50.0)
    spec, weights = _tiny_weights(private_site)
    config = {**round_config(spec, batch_size=4, run_name="holdout-dp"), P.DP_NOISE_MULTIPLIER: 1.0}
    train, holdout = open_site_split(private_site, config, image_size=32)
    loaded = _record_loaded_paths(monkeypatch)
    _, metrics = train_round(private_site, weights, config)
    # Sample rate 4 / 4 = 1, so the Poisson batch contains every training patch.
    assert set(loaded) == _paths(train)
    assert not set(loaded) & _paths(holdout)
    assert metrics[P.EPSILON_DELTA] == pytest.approx(0.1 / 4)


# -- optimiser state between rounds -------------------------------------------------------------------


def test_trainer_state_carries_over_rounds(site_ol, tmp_path, caplog):
    site = SiteConfig(data_path=site_ol.data_path, site_id="OL", output_dir=tmp_path)
    spec, weights = _tiny_weights(site)
    state_path = site.state_dir("carry") / TRAINER_STATE
    delta1, _ = train_round(site, weights, round_config(spec, batch_size=2, local_steps=2, run_name="carry"))
    first = torch.load(state_path, map_location="cpu", weights_only=False)
    assert first["step"] == 2
    moments = first["optimizer"]["state"]
    assert moments and all(float(s["exp_avg_sq"].abs().sum()) > 0 for s in moments.values())

    # Round 2 starts from round 1's moments (mapped from disk) and continues the schedule.
    weights2 = transfer.apply_delta(weights, delta1)
    train_round(site, weights2, round_config(spec, batch_size=2, local_steps=2, server_round=2, run_name="carry"))
    second = torch.load(state_path, map_location="cpu", weights_only=False)
    assert second["step"] == 4
    assert second["lr_scheduler"]["last_epoch"] == 4

    state_path.write_bytes(b"not a torch file")
    with caplog.at_level("WARNING", logger="medi_client.local_training"):
        train_round(site, weights2, round_config(spec, batch_size=2, local_steps=1, server_round=3, run_name="carry"))
    assert "local trainer state" in caplog.text
    assert "unreadable" in caplog.text
