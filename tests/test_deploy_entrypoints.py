"""The containers' entrypoint scripts, run on this host with the compose services' environment and files.

Fast tests print the command an entrypoint would run (``MEDI_PRINT_COMMAND=1``)
and parse it with the real ``medi-server`` / ``medi-client`` parsers. The
slow test runs the coordinator and two hospitals of ``deploy/compose.yaml``
for one round of the ``tiny`` preset on real BRCA-M2C patches split by site,
with TLS and SuperNode authentication from the certificate script, all on
127.0.0.1.
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from deploy_support import (
    DEPLOY,
    Sandbox,
    collected_run_paths,
    doc_commands,
    entrypoint_on_host,
    image_environment,
    load_compose,
    load_k8s,
    make_certs,
    parse_dockerfile,
)
from fed_data import write_site_manifests
from fed_loopback import Loopback
from medi_client.cli import build_parser as client_parser
from medi_server import superlink as sl
from medi_server.cli import build_parser as server_parser

SITES = ["A7", "A8", "AC"]  # the hospitals of deploy/compose.yaml
SANS = ["coordinator", "medi-coordinator"]
_, STAGES = parse_dockerfile()
COORDINATOR_SH = entrypoint_on_host(STAGES, "coordinator")
SITE_SH = entrypoint_on_host(STAGES, "site")
TINY_RUN = {
    "num-server-rounds": 1,
    "model-preset": "tiny",
    "local-steps": 2,  # the first step of a run has learning rate 0 (linear warm-up from 0)
    "batch-size": 4,
    "min-clients": 2,
    "handshake-timeout": 300.0,
    "round-timeout": 600.0,
    "grid-every": 0,
    "sample-steps": 2,
    "max-synthetic-per-cell": 1,
}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("deploy") / "secrets", SITES, SANS)


def sandbox(tmp_path: Path, certs: Path, service: str, run_config: dict | None = None) -> Sandbox:
    """A container stand-in for ``service`` whose ``./secrets`` is ``certs``."""
    source_root = tmp_path / "deploy-files"
    if not (source_root / "secrets").exists():
        source_root.mkdir(parents=True, exist_ok=True)
        (source_root / "secrets").symlink_to(certs, target_is_directory=True)
    config = tomllib.loads((DEPLOY / "run-config.toml").read_text())
    config.update(run_config or {})
    (source_root / "run-config.toml").write_text(tomli_w.dumps(config))
    box = Sandbox(load_compose(), service, tmp_path / service, source_root)
    box.root.mkdir(parents=True, exist_ok=True)
    box.install_files()
    return box


def target_of(service: str) -> str:
    return load_compose()["services"][service]["build"]["target"]


def printed_command(
    box: Sandbox,
    entrypoint: Path,
    overrides: dict[str, str],
    args: list[str] | None = None,
    *,
    service_env: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``entrypoint`` in print mode with the service's environment plus ``overrides``."""
    env = box.environment(image_environment(STAGES, target_of(box.service)), {**overrides, "MEDI_PRINT_COMMAND": "1"},
                          service_env=service_env)
    cmd = box.command(entrypoint) if args is None else [str(entrypoint), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_coordinator_prints_new_run(tmp_path, certs):
    box = sandbox(tmp_path, certs, "coordinator")
    result = printed_command(box, COORDINATOR_SH, {})
    argv = shlex.split(result.stdout)
    args = server_parser().parse_args(argv[1:])
    assert argv[0] == "medi-server"
    assert args.run_dir == Path(box.host_path("/var/lib/medi/run"))
    assert args.certs == Path(box.host_path("/run/secrets"))
    assert sorted(p.name for p in args.supernode_key) == ["A7.pub", "A8.pub", "AC.pub"]
    assert args.port == 9092
    assert args.run_config == [box.host_path("/etc/medi/run-config.toml")]


def test_coordinator_prints_resume(tmp_path, certs):
    box = sandbox(tmp_path, certs, "coordinator")
    run_dir = Path(box.host_path("/var/lib/medi/run"))
    run_dir.mkdir(parents=True)
    (run_dir / "federation.json").write_text("{}")
    result = printed_command(box, COORDINATOR_SH, {})
    args = server_parser().parse_args(shlex.split(result.stdout)[1:])
    assert args.resume == run_dir
    assert args.run_dir is None


def test_coordinator_finished_run_exits_zero(tmp_path, certs):
    box = sandbox(tmp_path, certs, "coordinator")
    run_dir = Path(box.host_path("/var/lib/medi/run"))
    run_dir.mkdir(parents=True)
    (run_dir / "federation.json").write_text("{}")
    (run_dir / "report.json").write_text("{}")
    result = printed_command(box, COORDINATOR_SH, {})
    assert result.returncode == 0
    assert result.stdout.strip() == "# finished: nothing to run"
    assert "has finished" in result.stderr


def test_coordinator_finished_run_idles_until_stopped(tmp_path, certs):
    box = sandbox(tmp_path, certs, "coordinator")
    run_dir = Path(box.host_path("/var/lib/medi/run"))
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text("{}")
    env = box.environment(image_environment(STAGES, "coordinator"), {"MEDI_AFTER_FINISH": "idle"})
    process = subprocess.Popen(box.command(COORDINATOR_SH), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2)
    idling = process.poll() is None
    process.terminate()
    process.communicate(timeout=30)
    assert idling
    assert process.returncode == 0


def test_coordinator_missing_server_key_fails(tmp_path, certs):
    box = sandbox(tmp_path, certs, "coordinator")
    Path(box.host_path("/run/secrets/server.key")).unlink()
    result = printed_command(box, COORDINATOR_SH, {})
    assert result.returncode == 2
    assert "server.key not found" in result.stderr


def test_coordinator_without_site_keys_fails(tmp_path, certs):
    box = sandbox(tmp_path, certs, "coordinator")
    for key in Path(box.host_path("/run/secrets")).glob("*.pub"):
        key.unlink()
    result = printed_command(box, COORDINATOR_SH, {})
    assert result.returncode == 2
    assert "no SuperNode public key" in result.stderr


def test_coordinator_rejects_after_finish_value(tmp_path, certs):
    box = sandbox(tmp_path, certs, "coordinator")
    result = printed_command(box, COORDINATOR_SH, {"MEDI_AFTER_FINISH": "restart"})
    assert result.returncode == 2
    assert "MEDI_AFTER_FINISH=restart is invalid" in result.stderr


@pytest.mark.parametrize("site", SITES)
def test_site_prints_start(tmp_path, certs, site):
    box = sandbox(tmp_path, certs, f"hospital-{site.lower()}")
    Path(box.host_path("/var/lib/medi/patches")).mkdir(parents=True)
    result = printed_command(box, SITE_SH, {})
    argv = shlex.split(result.stdout)
    args = client_parser().parse_args(argv[1:])
    assert argv[0] == "medi-client"
    assert args.command == "start"
    assert args.site_id == site
    assert args.superlink == "coordinator:9092"
    assert args.auth_key == Path(box.host_path("/run/secrets/supernode.key"))
    assert args.root_cert == Path(box.host_path("/run/secrets/ca.crt"))
    assert args.max_epsilon == 8.0


def test_site_key_matches_its_public_key(tmp_path, certs):
    box = sandbox(tmp_path, certs, "hospital-ac")
    mounted = Path(box.host_path("/run/secrets/supernode.key")).read_bytes()
    assert mounted == (certs / "supernodes" / "AC").read_bytes()


def test_site_without_site_id_fails(tmp_path, certs):
    box = sandbox(tmp_path, certs, "hospital-a7")
    result = printed_command(box, SITE_SH, {"MEDI_SITE_ID": ""})
    assert result.returncode == 2
    assert "MEDI_SITE_ID is not set" in result.stderr


def test_site_without_patches_fails(tmp_path, certs):
    box = sandbox(tmp_path, certs, "hospital-a7")
    result = printed_command(box, SITE_SH, {})
    assert result.returncode == 2
    assert "run 'site.sh prepare' first" in result.stderr


def test_site_unknown_mode_fails(tmp_path, certs):
    box = sandbox(tmp_path, certs, "hospital-a7")
    result = printed_command(box, SITE_SH, {}, args=["train"])
    assert result.returncode == 2
    assert "unknown command 'train'" in result.stderr


def test_site_prepare_waits_for_slides(tmp_path, certs):
    box = sandbox(tmp_path, certs, "hospital-a7")
    slides = Path(box.host_path("/var/lib/medi/slides"))
    env = box.environment(image_environment(STAGES, "site"),
                          {"MEDI_PRINT_COMMAND": "1", "MEDI_WAIT_FOR_SLIDES": "1", "MEDI_WAIT_SECONDS": "1"})
    process = subprocess.Popen([str(SITE_SH), "prepare"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    still_waiting = process.poll() is None
    created = slides.is_dir()  # the empty folder that the slides are copied into
    (slides / "slides.csv").write_text("slide_id,class\n")
    out, _ = process.communicate(timeout=30)
    assert still_waiting
    assert created
    assert process.returncode == 0
    args = client_parser().parse_args(shlex.split(out)[1:])
    assert args.command == "prepare"
    assert args.slides == [slides]


def test_site_prepare_tiles_real_slide(tmp_path, certs, shared_data):
    box = sandbox(tmp_path, certs, "hospital-a7")
    slides = Path(box.host_path("/var/lib/medi/slides"))
    slides.mkdir(parents=True)
    (slides / "CMU-1-Small-Region.svs").symlink_to(shared_data / "wsi" / "CMU-1-Small-Region.svs")
    (slides / "slides.csv").write_text("slide_id,class,site\nCMU-1-Small-Region,skin,A7\n")
    env = box.environment(image_environment(STAGES, "site"), {})
    result = subprocess.run([str(SITE_SH), "prepare"], env=env, capture_output=True, text=True, timeout=300)
    report = json.loads((Path(box.host_path("/var/lib/medi/patches")) / "report.json").read_text())
    assert result.returncode == 0, result.stderr[-2000:]
    assert report["num_patches"] > 0


@pytest.mark.parametrize("name", ["medi-coordinator", "medi-site-a7"])
def test_k8s_container_env_prints_valid_command(tmp_path, certs, name):
    """The Kubernetes containers' env yields a command the real parsers accept."""
    deployment = next(o for o in load_k8s() if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    service = "coordinator" if name == "medi-coordinator" else "hospital-a7"
    box = sandbox(tmp_path, certs, service)
    Path(box.host_path("/var/lib/medi/patches")).mkdir(parents=True)
    env = {e["name"]: box.host_path(e["value"]) if e["value"].startswith("/") else e["value"] for e in container["env"]}
    entrypoint = COORDINATOR_SH if service == "coordinator" else SITE_SH
    result = printed_command(box, entrypoint, env, args=container.get("args", []), service_env=False)
    argv = shlex.split(result.stdout)
    parser = server_parser() if service == "coordinator" else client_parser()
    args = parser.parse_args(argv[1:])
    assert result.returncode == 0, result.stderr
    assert getattr(args, "port", None) == 9092 or args.superlink == "medi-coordinator:9092"


# -- one federated round through the entrypoints ------------------------------------------------


@pytest.fixture(scope="module")
def entrypoint_run(tmp_path_factory, certs):
    root = tmp_path_factory.mktemp("entrypoint-run")
    sites = ["A7", "AC"]
    manifests = write_site_manifests(root / "data", sites)
    port = sl.free_port()
    coordinator = sandbox(root, certs, "coordinator", TINY_RUN)
    # Same environment as the container, bound to 127.0.0.1 on a free port.
    env = coordinator.environment(image_environment(STAGES, "coordinator"),
                                  {"MEDI_HOST": "127.0.0.1", "MEDI_PORT": str(port)})
    server = coordinator.start(COORDINATOR_SH, env, "coordinator.log")

    hospitals = {}
    run_dir = Path(coordinator.host_path("/var/lib/medi/run"))
    try:
        # medi-server registers every mounted key (three) before it submits the run.
        Loopback(root=root, certs=certs, port=port, run_dir=run_dir, server=server).wait_registered(len(SITES))
        for site in sites:
            box = sandbox(root, certs, f"hospital-{site.lower()}")
            site_env = box.environment(image_environment(STAGES, "site"), {
                "MEDI_SUPERLINK": f"127.0.0.1:{port}",
                "MEDI_DATA": str(manifests[site]),
                "MEDI_RUNTIME_PORT": str(sl.free_port()),
            })
            hospitals[site] = (box, box.start(SITE_SH, site_env, "site.log"))

        code = server.wait(timeout=900)
        # A restarted container of a finished run must not start it again (a failed run would resume).
        again = None
        if code == 0:
            again = subprocess.run(coordinator.command(COORDINATOR_SH), env=env, capture_output=True, text=True, timeout=60)
    finally:
        for site, (_, process) in hospitals.items():
            sl.stop_process(process, name=f"site {site}", grace=10)
        sl.stop_process(server, name="coordinator", grace=20)
    return coordinator, hospitals, code, again


@pytest.mark.slow
def test_entrypoints_run_exits_zero(entrypoint_run):
    coordinator, _, code, _ = entrypoint_run
    assert code == 0, (coordinator.root / "coordinator.log").read_text()[-3000:]


@pytest.mark.slow
def test_entrypoints_round_accepts_both_sites(entrypoint_run):
    coordinator, _, _, _ = entrypoint_run
    metrics = Path(coordinator.host_path("/var/lib/medi/run")) / "metrics" / "sites.csv"
    rows = list(csv.DictReader(metrics.open()))
    assert sorted((r["round"], r["site"], r["accepted"]) for r in rows) == [("1", "A7", "True"), ("1", "AC", "True")]


@pytest.mark.slow
def test_entrypoints_round_changes_weights(entrypoint_run):
    coordinator, _, _, _ = entrypoint_run
    metrics = Path(coordinator.host_path("/var/lib/medi/run")) / "metrics" / "sites.csv"
    norms = [float(r["update_norm"]) for r in csv.DictReader(metrics.open())]
    assert len(norms) == 2
    assert min(norms) > 0.0


@pytest.mark.slow
def test_entrypoints_sampler_and_report_written(entrypoint_run):
    coordinator, _, _, _ = entrypoint_run
    run_dir = Path(coordinator.host_path("/var/lib/medi/run"))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["rounds"] == 1
    assert (run_dir / "sampler" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("site", ["A7", "AC"])
def test_entrypoints_site_spends_privacy_budget(entrypoint_run, site):
    """The compose file's MEDI_MAX_EPSILON turns on DP-SGD, and the accountant stays on the site's volume."""
    _, hospitals, _, _ = entrypoint_run
    box, _ = hospitals[site]
    accountants = list(Path(box.host_path("/var/lib/medi/output/privacy")).glob("*-accountant.json"))
    assert len(accountants) == 1


@pytest.mark.slow
@pytest.mark.parametrize("site", ["A7", "AC"])
def test_entrypoints_site_node_config_written(entrypoint_run, site):
    """medi-client start keeps the site's settings in its output folder, on the site's volume."""
    _, hospitals, _, _ = entrypoint_run
    box, _ = hospitals[site]
    config = tomllib.loads(Path(box.host_path("/var/lib/medi/output/node-config.toml")).read_text())
    assert config["site-id"] == site


@pytest.mark.slow
def test_entrypoints_site_audit_log_written(entrypoint_run):
    _, hospitals, _, _ = entrypoint_run
    box, _ = hospitals["A7"]
    lines = Path(box.host_path("/var/lib/medi/output/audit.jsonl")).read_text().splitlines()
    assert {json.loads(line)["message_type"] for line in lines} >= {"query.summary", "train"}


@pytest.mark.slow
def test_entrypoints_restart_after_finish_exits(entrypoint_run):
    _, _, code, again = entrypoint_run
    assert again is not None, f"the run failed with code {code}, so the restart was not tried"
    assert again.returncode == 0
    assert "has finished" in again.stderr


@pytest.mark.slow
def test_entrypoints_docs_collect_paths_exist(entrypoint_run):
    """The files that docs/OPERATORS.md has the coordinator copy out exist after a run."""
    coordinator, _, _, _ = entrypoint_run
    container_run_dir = load_compose()["services"]["coordinator"]["environment"]["MEDI_RUN_DIR"]
    paths = collected_run_paths(doc_commands(), container_run_dir)
    missing = [p for p in paths if not (Path(coordinator.host_path(container_run_dir)) / p).exists()]
    assert len(paths) >= 3
    assert missing == []
