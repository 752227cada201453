"""Run keys ``prediction-type``, ``beta-schedule`` and ``sample-scheduler``: from the run config to training,
samplers and synthesis.

Two BRCA-M2C sites (A7, AC) train the tiny model for one round through the
in-process grid with ``prediction-type = "v_prediction"``,
``beta-schedule = "squaredcos_cap_v2"`` and ``sample-scheduler = "dpmsolver++"``. Every scheduler that the server's
sample grid and the sites' synthesis build is recorded, then the run is
resumed with the same and with a different prediction type.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fed_data import write_site_manifests
from fed_inprocess import InProcessGrid
from medi_client.client_app import app as client_app
from medi_core import protocol as P
from medi_core import sampling
from medi_core.artifact import MediSampler
from medi_core.errors import ConfigError
from medi_server.federation import Federation, run_federation
from medi_server.settings import PREDICTION_TYPES, FederationSettings

SITES = {11: "A7", 22: "AC"}
PREDICTION_TYPE = "v_prediction"
BETA_SCHEDULE = "squaredcos_cap_v2"
SCHEDULER = "dpmsolver++"


def _run(settings: FederationSettings, nodes: dict) -> tuple[InProcessGrid, dict]:
    grid = InProcessGrid(client_app, nodes, settings.to_run_config())
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=settings.to_run_config())
    return grid, run_federation(grid, context)


@pytest.fixture(scope="module")
def keyed_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling-keys")
    manifests = write_site_manifests(root / "data", list(SITES.values()))
    nodes = {
        node: {P.NODE_DATA_PATH: str(manifests[site]), P.NODE_SITE_ID: site, P.NODE_OUTPUT_DIR: str(root / site)}
        for node, site in SITES.items()
    }
    settings = FederationSettings(
        run_dir=str(root / "run"), num_server_rounds=1, local_steps=1, batch_size=2, min_clients=2,
        grid_every=1, grid_steps=2, sample_steps=2, max_synthetic_per_cell=1, holdout_fraction=0.0,
        prediction_type=PREDICTION_TYPE, beta_schedule=BETA_SCHEDULE, sample_scheduler=SCHEDULER,
    )
    built: list[tuple[str, str, str]] = []  # (scheduler name, prediction type, beta schedule) of every scheduler built
    make_scheduler = sampling.make_scheduler

    def record(name, diffusion_config):
        built.append((name, diffusion_config.prediction_type, diffusion_config.beta_schedule))
        return make_scheduler(name, diffusion_config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling, "make_scheduler", record)
        grid, report = _run(settings, nodes)
    return {"root": root, "nodes": nodes, "settings": settings, "grid": grid, "report": report, "built": built}


def _configs(run: dict, message_type: str) -> list:
    return [m.content.config_records[P.CONFIG] for m in run["grid"].sent if m.metadata.message_type == message_type]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_federation_diffusion_config_follows_key(tmp_path, prediction_type):
    settings = FederationSettings(run_dir=str(tmp_path), prediction_type=prediction_type)
    assert Federation(grid=None, settings=settings).diffusion_config.prediction_type == prediction_type


def test_keys_run_synthesised(keyed_run):
    assert all(result["written"] > 0 for result in keyed_run["report"]["synthesis"].values())


def test_keys_train_messages_carry_diffusion_keys(keyed_run):
    configs = _configs(keyed_run, P.MSG_TRAIN)
    assert len(configs) == len(SITES)
    diffusion = [json.loads(str(c[P.DIFFUSION_CONFIG])) for c in configs]
    assert {d["prediction_type"] for d in diffusion} == {PREDICTION_TYPE}
    assert {d["beta_schedule"] for d in diffusion} == {BETA_SCHEDULE}


def test_keys_synthesis_messages_carry_scheduler(keyed_run):
    configs = _configs(keyed_run, P.MSG_SYNTHESIZE)
    assert len(configs) == len(SITES)
    assert {str(c[P.SAMPLE_SCHEDULER]) for c in configs} == {SCHEDULER}


def test_keys_grid_and_sites_sample_with_scheduler(keyed_run):
    # One sample grid after round 1, then one generate call per site.
    assert keyed_run["built"] == [(SCHEDULER, PREDICTION_TYPE, BETA_SCHEDULE)] * (1 + len(SITES))


def test_keys_sample_grid_written(keyed_run):
    assert (keyed_run["root"] / "run" / "samples" / "round-0001.png").is_file()


@pytest.mark.parametrize("folder", ["run/sampler", "A7/sampler/medi", "AC/sampler/medi"])
def test_keys_sampler_folder_records_both(keyed_run, folder):
    sampler = MediSampler.from_pretrained(keyed_run["root"] / folder)
    assert sampler.diffusion_config.prediction_type == PREDICTION_TYPE
    assert sampler.diffusion_config.beta_schedule == BETA_SCHEDULE
    assert sampler.default_scheduler == SCHEDULER


def test_keys_checkpoint_stores_diffusion_keys(keyed_run):
    state = json.loads((keyed_run["root"] / "run" / "checkpoints" / "round-0001" / "state.json").read_text())
    assert state["settings"]["prediction-type"] == PREDICTION_TYPE
    assert state["settings"]["beta-schedule"] == BETA_SCHEDULE


def _copy_run(keyed_run, name: str) -> Path:
    """A copy of the finished run folder, so each resume test starts from round 1's checkpoint."""
    run_dir = keyed_run["root"] / name
    shutil.copytree(keyed_run["root"] / "run", run_dir)
    return run_dir


def test_resume_other_prediction_type_raises(keyed_run):
    run_dir = _copy_run(keyed_run, "resume-epsilon")
    settings = replace(keyed_run["settings"], run_dir=str(run_dir), num_server_rounds=2, resume=True,
                       prediction_type="epsilon")
    with pytest.raises(ConfigError, match=r"prediction-type = 'epsilon' differs from 'v_prediction'.*\(round 1\)"):
        _run(settings, keyed_run["nodes"])


def test_resume_same_prediction_type_continues(keyed_run):
    run_dir = _copy_run(keyed_run, "resume-same")
    settings = replace(keyed_run["settings"], run_dir=str(run_dir), num_server_rounds=2, resume=True, grid_every=0)
    _, report = _run(settings, keyed_run["nodes"])
    assert report["rounds"] == 2
    sampler = MediSampler.from_pretrained(run_dir / "sampler")
    assert sampler.diffusion_config.prediction_type == PREDICTION_TYPE
