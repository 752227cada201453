"""DP-SGD at the sites: settings each site derives, epsilon per round, budget enforced, accountant on disk.

The federated part runs the real ServerApp logic and ClientApp handlers in
one process (`fed_inprocess.InProcessGrid`) on three BRCA-M2C sites with a
fixed noise multiplier. Site AC's max-epsilon affords one round, so it
declines the second and the run finishes with the other two sites.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fed_data import write_site_manifests
from fed_inprocess import InProcessGrid
from medi_client.client_app import app as client_app
from medi_client.local_training import train_round
from medi_client.memorisation import open_site_split
from medi_client.site import SiteConfig, open_site_data
from medi_client.site_privacy import site_privacy
from medi_core import protocol as P
from medi_core import transfer
from medi_core.config import DiffusionConfig, TrainConfig, model_preset
from medi_core.errors import ConfigError, PrivacyBudgetExceeded
from medi_core.metadata import MetadataSpec
from medi_core.model import build_model
from medi_core.privacy import epsilon_of
from medi_server.federation import run_federation
from medi_server.settings import FederationSettings

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


# -- the settings a site derives from the server's proposal ------------------------------------------


def _site(max_epsilon: float) -> SiteConfig:
    return SiteConfig(data_path=Path("unused.csv"), site_id="A7", output_dir=Path("out"), max_epsilon=max_epsilon)


def test_site_privacy_off_without_site_budget():
    assert site_privacy(_site(0.0), {P.DP_TARGET_EPSILON: 4.0}, server_round=1) is None


def test_site_privacy_defaults_to_site_max():
    privacy = site_privacy(_site(6.0), {P.DP_TARGET_EPSILON: 0.0}, server_round=1)
    assert privacy.target_epsilon == 6.0


def test_site_privacy_uses_lower_server_target():
    privacy = site_privacy(_site(6.0), {P.DP_TARGET_EPSILON: 2.5}, server_round=1)
    assert privacy.target_epsilon == 2.5


def test_site_privacy_caps_server_target(caplog):
    with caplog.at_level(logging.WARNING, logger="medi_client.site_privacy"):
        privacy = site_privacy(_site(6.0), {P.DP_TARGET_EPSILON: 10.0}, server_round=3)
    assert privacy.target_epsilon == 6.0
    assert "site A7, round 3: the server proposes dp-target-epsilon=10, above this site's max-epsilon 6" in caplog.text


def test_site_privacy_fixed_noise_multiplier():
    privacy = site_privacy(_site(6.0), {P.DP_NOISE_MULTIPLIER: 1.3}, server_round=1)
    assert (privacy.noise_multiplier, privacy.target_epsilon) == (1.3, None)


def test_site_privacy_passes_clipping_multiplicity_delta():
    config = {P.DP_MAX_GRAD_NORM: 0.5, P.DP_NOISE_MULTIPLICITY: 4, P.DP_DELTA: 1e-5}
    privacy = site_privacy(_site(6.0), config, server_round=1)
    assert (privacy.max_grad_norm, privacy.noise_multiplicity, privacy.delta) == (0.5, 4, 1e-5)


def test_site_privacy_zero_delta_means_default():
    assert site_privacy(_site(6.0), {P.DP_DELTA: 0.0}, server_round=1).delta is None


def test_settings_reject_target_and_noise_multiplier():
    with pytest.raises(ConfigError, match="sets both dp-target-epsilon = 2.0 and dp-noise-multiplier = 1.0"):
        FederationSettings(dp_target_epsilon=2.0, dp_noise_multiplier=1.0)


# -- a federated run with DP at every site ------------------------------------------------------------

DP_SITES = {11: "A7", 22: "AC", 33: "A8"}
NOISE_MULTIPLIER = 1.0
DP_BATCH = 2
DP_ROUNDS = 2
LARGE_MAX_EPSILON = 5.0  # A7 and A8 never reach it in two rounds


def _epsilon_after(steps: int, num_examples: int) -> float:
    """Epsilon of ``steps`` DP-SGD steps at sigma 1 and q = batch / N, at the default delta 0.1 / N."""
    return epsilon_of([(NOISE_MULTIPLIER, DP_BATCH / num_examples, steps)], delta=0.1 / num_examples, kind="rdp")


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp-run")
    manifests = write_site_manifests(root / "data", list(DP_SITES.values()))
    settings = FederationSettings(
        run_dir=str(root / "run"), num_server_rounds=DP_ROUNDS, local_steps=1, batch_size=DP_BATCH, min_clients=2,
        grid_every=0, sample_steps=1, max_synthetic_per_cell=1, dp_noise_multiplier=NOISE_MULTIPLIER,
    )
    sizes = {}  # training patches per site: DP-SGD never sees the held-out ones
    for site in DP_SITES.values():
        config = SiteConfig.from_node_config({P.NODE_DATA_PATH: str(manifests[site]), P.NODE_SITE_ID: site,
                                              P.NODE_OUTPUT_DIR: str(root / site)})
        split = {P.HOLDOUT_FRACTION: settings.holdout_fraction, P.HOLDOUT_SEED: settings.seed}
        sizes[site] = len(open_site_split(config, split, image_size=32)[0])
    # AC affords round 1 but not round 2.
    maxima = {"A7": LARGE_MAX_EPSILON, "A8": LARGE_MAX_EPSILON,
              "AC": 0.5 * (_epsilon_after(1, sizes["AC"]) + _epsilon_after(2, sizes["AC"]))}
    nodes = {
        node: {P.NODE_DATA_PATH: str(manifests[site]), P.NODE_SITE_ID: site, P.NODE_OUTPUT_DIR: str(root / site),
               P.NODE_MAX_EPSILON: maxima[site]}
        for node, site in DP_SITES.items()
    }
    grid = InProcessGrid(client_app, nodes, settings.to_run_config())
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=settings.to_run_config())
    report = run_federation(grid, context)
    rows = list(csv.DictReader((root / "run" / "metrics" / "sites.csv").open()))
    return {"root": root, "sizes": sizes, "maxima": maxima, "report": report, "rows": rows}


def _epsilons(rows: list[dict], site: str) -> list[float]:
    return [float(r["epsilon"]) for r in sorted(rows, key=lambda r: int(r["round"])) if r["site"] == site and r["accepted"] == "True"]


@pytest.mark.slow
@pytest.mark.parametrize("site", DP_SITES.values())
def test_dp_run_epsilon_matches_accountant(dp_run, site):
    trained = _epsilons(dp_run["rows"], site)
    expected = [_epsilon_after(r, dp_run["sizes"][site]) for r in range(1, len(trained) + 1)]
    assert trained == pytest.approx(expected, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("site", DP_SITES.values())
def test_dp_run_epsilon_increases_each_round(dp_run, site):
    trained = _epsilons(dp_run["rows"], site)
    assert all(later > earlier for earlier, later in zip(trained, trained[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("site", DP_SITES.values())
def test_dp_run_epsilon_below_site_max(dp_run, site):
    assert max(_epsilons(dp_run["rows"], site)) <= dp_run["maxima"][site]


@pytest.mark.slow
def test_dp_run_rounds_trained_per_site(dp_run):
    trained = {site: len(_epsilons(dp_run["rows"], site)) for site in DP_SITES.values()}
    assert trained == {"A7": 2, "AC": 1, "A8": 2}


@pytest.mark.slow
def test_dp_run_declined_round_logged(dp_run):
    log = (dp_run["root"] / "run" / "server.log").read_text()
    assert "round 2: site AC declined to train and is left out of this round: site AC, round 2:" in log


@pytest.mark.slow
def test_dp_run_declined_reason_in_metrics(dp_run):
    row = next(r for r in dp_run["rows"] if r["site"] == "AC" and r["round"] == "2")
    assert row["reason"].startswith("declined: site AC, round 2: training 1 more steps would raise epsilon")


@pytest.mark.slow
def test_dp_run_continues_without_declined_site(dp_run):
    rounds = [json.loads(line) for line in (dp_run["root"] / "run" / "metrics" / "rounds.jsonl").read_text().splitlines()]
    assert [(r["accepted"], r["rejected"]) for r in rounds] == [(3, 0), (2, 1)]


@pytest.mark.slow
def test_dp_run_card_lists_epsilon_per_site(dp_run):
    card = json.loads((dp_run["root"] / "run" / "sampler" / "card.json").read_text())
    last = {site: _epsilons(dp_run["rows"], site)[-1] for site in DP_SITES.values()}
    assert card["epsilon_per_site"] == pytest.approx(last, rel=1e-12)


@pytest.mark.slow
def test_dp_run_card_lists_epsilon_per_round(dp_run):
    card = json.loads((dp_run["root"] / "run" / "sampler" / "card.json").read_text())
    assert {site: sorted(rounds) for site, rounds in card["epsilon_per_round"].items()} == {
        "A7": ["1", "2"], "AC": ["1"], "A8": ["1", "2"],
    }


@pytest.mark.slow
def test_dp_run_card_lists_delta_per_site(dp_run):
    card = json.loads((dp_run["root"] / "run" / "sampler" / "card.json").read_text())
    expected = {site: 0.1 / n for site, n in dp_run["sizes"].items()}
    assert card["delta_per_site"] == pytest.approx(expected, rel=1e-12)


# -- the memorisation check of the same run --------------------------------------------------------------


@pytest.mark.slow
def test_dp_run_memorisation_table_lists_sites(dp_run):
    rows = list(csv.DictReader((dp_run["root"] / "run" / "memorisation.csv").open()))
    assert sorted(r["site"] for r in rows) == sorted(DP_SITES.values())


@pytest.mark.slow
def test_dp_run_memorisation_counts_training_patches(dp_run):
    rows = {r["site"]: r for r in csv.DictReader((dp_run["root"] / "run" / "memorisation.csv").open())}
    assert {site: int(rows[site]["num_train"]) for site in DP_SITES.values()} == dp_run["sizes"]


@pytest.mark.slow
def test_dp_run_memorisation_in_report(dp_run):
    report = json.loads((dp_run["root"] / "run" / "report.json").read_text())
    written = {site: result["written"] for site, result in report["synthesis"].items()}
    synthetic = {site: int(row["synthetic_count"]) for site, row in report["memorisation"].items()}
    assert synthetic == written


@pytest.mark.slow
def test_dp_run_memorisation_in_model_card(dp_run):
    sampler = dp_run["root"] / "run" / "sampler"
    card = json.loads((sampler / "card.json").read_text())
    assert sorted(card["memorisation_per_site"]) == sorted(DP_SITES.values())
    assert "memorisation_per_site" in (sampler / "README.md").read_text()
