"""Static checks of deploy/: the Dockerfile, the compose file, the Kubernetes manifests and render.py.

Nothing here needs Docker or a cluster. Files that the manifests mount are
checked against what ``deploy/certs/generate_certs.py`` and
``deploy/k8s/render.py`` write, and ports against each other.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from deploy_support import (
    DEPLOY,
    DOCKERFILE,
    REPO,
    entrypoint_on_host,
    image_environment,
    k8s_object,
    load_compose,
    load_k8s,
    make_certs,
    parse_dockerfile,
    secret_files,
    stage_chain,
)
from medi_core.errors import ConfigError
from medi_server.settings import FederationSettings

sys.path.insert(0, str(DEPLOY / "k8s"))
import render  # noqa: E402  (deploy/k8s/render.py)

GLOBAL_ARGS, STAGES = parse_dockerfile()
COMPOSE = load_compose()
K8S = load_k8s()
SITES = ["A7", "A8", "AC"]
HOSPITALS = {f"hospital-{site.lower()}": site for site in SITES}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("files") / "secrets", SITES, ["coordinator", "medi-coordinator"])


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, certs) -> dict[str, dict]:
    """Secrets and ConfigMaps that render.py writes, by name."""
    out = tmp_path_factory.mktemp("generated")
    render.render(certs, DEPLOY / "run-config.toml", out)
    objects = {}
    for path in out.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            objects[doc["metadata"]["name"]] = doc
    return objects


def coordinator_port() -> int:
    return int(COMPOSE["services"]["coordinator"]["environment"]["MEDI_PORT"])


def pod_spec(name: str) -> dict:
    return k8s_object(K8S, "Deployment", name)["spec"]["template"]["spec"]


def container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


# -- Dockerfile ---------------------------------------------------------------------------------------


def test_dockerfile_base_image_python311():
    base = STAGES["base"].base
    assert base == "${PYTHON_IMAGE}"
    assert GLOBAL_ARGS["PYTHON_IMAGE"].startswith("python:3.11-slim")


def test_dockerfile_targets_build_on_base():
    assert [s.name for s in stage_chain(STAGES, "coordinator")] == ["base", "coordinator"]
    assert [s.name for s in stage_chain(STAGES, "site")] == ["base", "site"]


def test_dockerfile_torch_installed_before_project():
    runs = STAGES["base"].arguments("RUN")
    torch_line = next(i for i, r in enumerate(runs) if "torch==2.13.0" in r)
    project_line = next(i for i, r in enumerate(runs) if r.startswith("pip install ."))
    assert torch_line < project_line


def test_dockerfile_torch_index_defaults_to_cpu():
    args = [t for k, t in STAGES["base"].instructions if k == "ARG"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args
    assert "--index-url ${TORCH_INDEX_URL} torch==2.13.0" in STAGES["base"].arguments("RUN")[0]


def test_dockerfile_copied_sources_exist():
    for text in STAGES["base"].arguments("COPY"):
        sources = text.split()[:-1]
        for source in sources:
            assert (REPO / source).exists(), source


@pytest.mark.parametrize("target", ["coordinator", "site"])
def test_dockerfile_entrypoint_executable(target):
    script = entrypoint_on_host(STAGES, target)
    assert script.is_file()
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("target", ["coordinator", "site"])
def test_dockerfile_entrypoint_bash_syntax(target):
    result = subprocess.run(["bash", "-n", str(entrypoint_on_host(STAGES, target))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dockerfile_runs_unprivileged():
    assert STAGES["base"].arguments("USER") == ["10001"]


def test_dockerfile_exposes_coordinator_port():
    assert STAGES["coordinator"].arguments("EXPOSE") == [str(coordinator_port())]
    assert image_environment(STAGES, "coordinator")["MEDI_PORT"] == str(coordinator_port())


def test_dockerfile_site_exposes_nothing():
    assert STAGES["site"].arguments("EXPOSE") == []


def test_dockerfile_flower_offline():
    env = image_environment(STAGES, "site")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"


def test_dockerignore_excludes_keys():
    ignored = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    assert "deploy/secrets" in ignored
    assert "deploy/k8s/generated" in ignored


def test_dockerfile_sources_build_wheel(tmp_path):
    """The files the Dockerfile copies into its build folder are enough to build the project."""
    source = tmp_path / "src"
    source.mkdir()
    for text in STAGES["base"].arguments("COPY"):
        *items, destination = text.split()
        if destination.startswith("/"):
            continue  # outside the build folder (the entrypoint scripts)
        for item in items:
            if (REPO / item).is_dir():
                shutil.copytree(REPO / item, source / destination, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / item, source / destination)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "medi-server = medi_server.cli:main" in entry_points
    assert "medi-client = medi_client.cli:main" in entry_points
    assert "medi_server/superlink.py" in names


# -- compose ---------------------------------------------------------------------------------------------


def test_compose_has_coordinator_and_three_hospitals():
    assert sorted(COMPOSE["services"]) == ["coordinator", *sorted(HOSPITALS)]


@pytest.mark.parametrize("service", ["coordinator", *HOSPITALS])
def test_compose_builds_dockerfile_target(service):
    build = COMPOSE["services"][service]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["target"] == ("coordinator" if service == "coordinator" else "site")


def test_compose_secret_files_from_cert_script(certs):
    """Every secret file is one that generate_certs.py writes into the compose file's ./secrets."""
    for name, spec in COMPOSE["secrets"].items():
        relative = Path(spec["file"]).relative_to("secrets")
        assert (certs / relative).is_file(), name


def test_compose_private_ca_key_not_mounted():
    assert all(Path(spec["file"]).name != "ca.key" for spec in COMPOSE["secrets"].values())


def test_compose_config_files_exist():
    for spec in COMPOSE["configs"].values():
        assert (DEPLOY / spec["file"]).is_file()


def test_compose_every_secret_defined_and_used():
    used = {entry["source"] for service in COMPOSE["services"].values() for entry in service.get("secrets", [])}
    assert used == set(COMPOSE["secrets"])


def test_compose_named_volumes_declared():
    named = set()
    for service in COMPOSE["services"].values():
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if not source.startswith("."):
                named.add(source)
    assert named == set(COMPOSE["volumes"])


def test_compose_bind_mounts_read_only():
    """The only host folders mounted are the hospitals' slides, read-only."""
    for name, service in COMPOSE["services"].items():
        for volume in service["volumes"]:
            if volume.startswith("."):
                assert volume.endswith(":ro"), f"{name}: {volume}"


def test_compose_coordinator_tls_files_mounted():
    mounted = secret_files(COMPOSE, "coordinator")
    certs_dir = COMPOSE["services"]["coordinator"]["environment"]["MEDI_CERTS_DIR"]
    for name in ("ca.crt", "server.crt", "server.key"):
        assert f"{certs_dir}/{name}" in mounted


def test_compose_coordinator_registers_every_site():
    """One <site>.pub per hospital in the key folder, from that site's key pair."""
    mounted = secret_files(COMPOSE, "coordinator")
    keys_dir = COMPOSE["services"]["coordinator"]["environment"]["MEDI_SUPERNODE_KEYS_DIR"]
    keys = {Path(t).name: Path(f).name for t, f in mounted.items() if t.startswith(keys_dir + "/") and t.endswith(".pub")}
    assert keys == {f"{site}.pub": f"{site}.pub" for site in SITES}


@pytest.mark.parametrize("service", list(HOSPITALS))
def test_compose_hospital_key_is_its_own(service):
    env = COMPOSE["services"][service]["environment"]
    mounted = secret_files(COMPOSE, service)
    assert env["MEDI_SITE_ID"] == HOSPITALS[service]
    assert mounted[env["MEDI_AUTH_KEY"]] == f"./secrets/supernodes/{HOSPITALS[service]}"
    assert mounted[env["MEDI_ROOT_CERT"]] == "./secrets/ca.crt"


@pytest.mark.parametrize("service", list(HOSPITALS))
def test_compose_hospital_reaches_coordinator_port(service):
    host, port = COMPOSE["services"][service]["environment"]["MEDI_SUPERLINK"].split(":")
    assert host == "coordinator"
    assert int(port) == coordinator_port()


def test_compose_publishes_coordinator_port():
    published = COMPOSE["services"]["coordinator"]["ports"]
    assert published == [f"{coordinator_port()}:{coordinator_port()}"]


def test_compose_run_config_mounted_and_valid():
    env = COMPOSE["services"]["coordinator"]["environment"]
    mounted = secret_files(COMPOSE, "coordinator")
    text = (DEPLOY / mounted[env["MEDI_RUN_CONFIG"]]).read_text()
    settings = FederationSettings.from_run_config(tomllib.loads(text))
    assert settings.min_clients == len(HOSPITALS)


def test_compose_tls_never_disabled():
    scripts = [entrypoint_on_host(STAGES, t).read_text() for t in ("coordinator", "site")]
    text = (DEPLOY / "compose.yaml").read_text()
    for flag in ("--insecure", "--no-supernode-auth"):
        assert flag not in text
        assert all(flag not in s for s in scripts)


# -- Kubernetes ------------------------------------------------------------------------------------------


def test_k8s_objects_have_required_fields():
    for obj in K8S:
        assert obj["apiVersion"] in ("v1", "apps/v1"), obj["metadata"]
        assert obj["metadata"]["name"]
        assert "spec" in obj, obj["metadata"]["name"]


def test_k8s_object_kinds():
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in K8S)
    assert kinds == sorted([
        ("PersistentVolumeClaim", "medi-coordinator-run"), ("Deployment", "medi-coordinator"),
        ("Service", "medi-coordinator"),
        *[(kind, f"medi-site-{s.lower()}{suffix}") for s in SITES
          for kind, suffix in (("PersistentVolumeClaim", "-data"), ("Deployment", ""))],
    ])


@pytest.mark.parametrize("name", ["medi-coordinator", *(f"medi-site-{s.lower()}" for s in SITES)])
def test_k8s_deployment_selector_matches_pod(name):
    deployment = k8s_object(K8S, "Deployment", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("name", ["medi-coordinator", *(f"medi-site-{s.lower()}" for s in SITES)])
def test_k8s_images_match_compose(name):
    service = "coordinator" if name == "medi-coordinator" else f"hospital-{name.rsplit('-', 1)[1]}"
    pod = pod_spec(name)
    images = {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
    assert images == {COMPOSE["services"][service]["image"]}


def test_k8s_service_selects_coordinator():
    service = k8s_object(K8S, "Service", "medi-coordinator")
    labels = k8s_object(K8S, "Deployment", "medi-coordinator")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_k8s_ports_agree():
    service = k8s_object(K8S, "Service", "medi-coordinator")["spec"]["ports"][0]
    container = pod_spec("medi-coordinator")["containers"][0]
    (port,) = container["ports"]
    assert service["targetPort"] == port["name"]
    assert port["containerPort"] == coordinator_port()
    assert service["port"] == coordinator_port()
    assert container_env(container)["MEDI_PORT"] == str(coordinator_port())


@pytest.mark.parametrize("site", SITES)
def test_k8s_site_reaches_service(site):
    container = pod_spec(f"medi-site-{site.lower()}")["containers"][0]
    service = k8s_object(K8S, "Service", "medi-coordinator")
    assert container_env(container)["MEDI_SUPERLINK"] == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert container_env(container)["MEDI_SITE_ID"] == site


@pytest.mark.parametrize("name", ["medi-coordinator", *(f"medi-site-{s.lower()}" for s in SITES)])
def test_k8s_claims_exist(name):
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod_spec(name)["volumes"] if "persistentVolumeClaim" in v]
    assert len(claims) == 1
    claim = k8s_object(K8S, "PersistentVolumeClaim", claims[0])
    assert claim["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize("name", ["medi-coordinator", *(f"medi-site-{s.lower()}" for s in SITES)])
def test_k8s_volume_mounts_defined(name):
    pod = pod_spec(name)
    volumes = {v["name"] for v in pod["volumes"]}
    for container in pod["containers"] + pod.get("initContainers", []):
        assert {m["name"] for m in container["volumeMounts"]} <= volumes


def secret_items(volume: dict) -> list[tuple[str, list[str] | None]]:
    """(Secret name, mounted keys or None for all keys) of a secret or projected volume."""
    if "secret" in volume:
        items = volume["secret"].get("items")
        return [(volume["secret"]["secretName"], [i["key"] for i in items] if items else None)]
    sources = volume.get("projected", {}).get("sources", [])
    return [(s["secret"]["name"], [i["key"] for i in s["secret"]["items"]] if "items" in s["secret"] else None)
            for s in sources if "secret" in s]


@pytest.mark.parametrize("name", ["medi-coordinator", *(f"medi-site-{s.lower()}" for s in SITES)])
def test_k8s_secrets_rendered_with_keys(name, rendered):
    """Every Secret a pod mounts is written by render.py, with every key the pod mounts from it."""
    referenced = [item for volume in pod_spec(name)["volumes"] for item in secret_items(volume)]
    assert referenced
    for secret_name, keys in referenced:
        assert rendered[secret_name]["kind"] == "Secret"
        assert set(keys or []) <= set(rendered[secret_name]["data"])


def test_k8s_config_map_rendered(rendered):
    (volume,) = [v for v in pod_spec("medi-coordinator")["volumes"] if "configMap" in v]
    config = rendered[volume["configMap"]["name"]]
    (item,) = volume["configMap"]["items"]
    assert config["data"][item["key"]] == (DEPLOY / "run-config.toml").read_text()


def test_k8s_coordinator_mounts_match_env():
    """The files the entrypoint reads are where the volumes put them."""
    container = pod_spec("medi-coordinator")["containers"][0]
    env = container_env(container)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["MEDI_CERTS_DIR"]] == "secrets"
    assert mounts[str(Path(env["MEDI_RUN_CONFIG"]).parent)] == "run-config"
    assert env["MEDI_RUN_DIR"].startswith(next(p for p, n in mounts.items() if n == "run") + "/")


@pytest.mark.parametrize("site", SITES)
def test_k8s_site_key_files_mounted(site):
    pod = pod_spec(f"medi-site-{site.lower()}")
    container = pod["containers"][0]
    env = container_env(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (keys,) = [v for v in pod["volumes"] if v["name"] == "keys"]
    paths = {f"{mounts['keys']}/{i['path']}" for i in keys["secret"]["items"]}
    assert {env["MEDI_ROOT_CERT"], env["MEDI_AUTH_KEY"]} == paths


@pytest.mark.parametrize("site", SITES)
def test_k8s_site_secret_holds_its_key(site, certs, rendered):
    data = rendered[f"medi-site-{site.lower()}-keys"]["data"]
    assert base64.b64decode(data["supernode.key"]) == (certs / "supernodes" / site).read_bytes()


@pytest.mark.parametrize("site", SITES)
def test_k8s_prepare_writes_start_data(site):
    pod = pod_spec(f"medi-site-{site.lower()}")
    (prepare,) = pod["initContainers"]
    assert prepare["args"] == ["prepare"]
    assert container_env(prepare)["MEDI_DATA"] == container_env(pod["containers"][0])["MEDI_DATA"]


def test_k8s_pods_run_unprivileged():
    for deployment in [o for o in K8S if o["kind"] == "Deployment"]:
        context = deployment["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 10001


# -- render.py -------------------------------------------------------------------------------------------


def test_render_files_private(tmp_path, certs):
    written = render.render(certs, DEPLOY / "run-config.toml", tmp_path / "out")
    assert sorted(p.name for p in written) == ["coordinator.yaml", "site-a7.yaml", "site-a8.yaml", "site-ac.yaml"]
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o600"}


def test_render_never_ships_ca_key(rendered):
    keys = {key for obj in rendered.values() for key in obj["data"]}
    assert "ca.key" not in keys


def test_render_public_keys_all_sites(rendered):
    assert sorted(rendered["medi-supernode-public-keys"]["data"]) == ["A7.pub", "A8.pub", "AC.pub"]


def test_render_rejects_unknown_run_setting(tmp_path, certs):
    bad = tmp_path / "run-config.toml"
    bad.write_text("num-rounds = 3\n")
    with pytest.raises(ConfigError, match="unknown run config key 'num-rounds'"):
        render.render(certs, bad, tmp_path / "out")


def test_render_rejects_site_name_with_underscore(tmp_path):
    certs = make_certs(tmp_path / "secrets", ["site_1"], [])
    with pytest.raises(ConfigError, match="site name 'site_1' cannot be part of a Kubernetes object name"):
        render.render(certs, DEPLOY / "run-config.toml", tmp_path / "out")


def test_render_missing_certs_message(tmp_path):
    (tmp_path / "supernodes").mkdir()
    (tmp_path / "supernodes" / "A7.pub").write_text("ssh-ed25519 AAAA\n")
    with pytest.raises(ConfigError, match="ca.crt not found"):
        render.render(tmp_path, DEPLOY / "run-config.toml", tmp_path / "out")


def test_render_cli_exit_code(tmp_path):
    result = subprocess.run([sys.executable, str(DEPLOY / "k8s" / "render.py"), "--certs", str(tmp_path), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no SuperNode key pair" in result.stderr
