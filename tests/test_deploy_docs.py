"""Every command of docs/OPERATORS.md (its ``sh`` blocks) is run or checked here.

The certificate, render and ``medi-client prepare`` commands run for real,
with their paths mapped into a temporary folder. ``medi-server`` and
``medi-client start`` are parsed by the programs' own parsers and their files
checked. ``pip``, ``docker``, ``kubectl`` and ``tar`` cannot run on a
machine without Docker or a cluster, so they are checked against the files,
services, objects and paths they name. A command of any other kind fails the
test, so the docs cannot gain an unchecked command.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from flwr.common.config import parse_config_args

from deploy_support import (
    DOCKERFILE,
    REPO,
    DocCommand,
    doc_commands,
    k8s_object,
    load_compose,
    load_k8s,
    parse_dockerfile,
)
from medi_client.cli import build_parser as client_parser
from medi_client.start import node_config, supernode_command
from medi_server import superlink as sl
from medi_server.cli import build_parser as server_parser
from medi_server.settings import FederationSettings

COMMANDS = doc_commands()
SITE_MODES = ("start", "prepare")  # the commands of deploy/entrypoints/site.sh
COMPOSE_SUBCOMMANDS = ("up", "run", "stop", "start", "logs", "cp")


def commands_of(program: str, *, script: str | None = None) -> list[DocCommand]:
    found = [c for c in COMMANDS if c.argv[0] == program]
    if script is not None:
        found = [c for c in found if c.argv[1] == script]
    return found


def one_command(program: str, first: str) -> DocCommand:
    found = [c for c in COMMANDS if c.argv[0] == program and c.argv[1] == first]
    if len(found) != 1:
        raise LookupError(f"expected one '{program} {first}' command in docs/OPERATORS.md, found {len(found)}")
    return found[0]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shared_data) -> dict[str, Path]:
    """Docs paths -> temporary paths, with one real slide and its metadata CSV in the slide folder."""
    root = tmp_path_factory.mktemp("operators")
    slides = root / "slides"
    slides.mkdir()
    (slides / "CMU-1-Small-Region.svs").symlink_to(shared_data / "wsi" / "CMU-1-Small-Region.svs")
    (root / "slides.csv").write_text("slide_id,class,site\nCMU-1-Small-Region,skin,A7\n")
    return {
        "deploy/secrets": root / "secrets",
        "deploy/k8s/generated": root / "generated",
        "/data/slides": slides,
        "/data/slides.csv": root / "slides.csv",
        "/data/patches": root / "patches",
        "/data/medi": root / "medi",
        "/etc/medi/ca.crt": root / "secrets" / "ca.crt",
        "/etc/medi/A7": root / "secrets" / "supernodes" / "A7",
    }


def mapped(argv: list[str], workspace: dict[str, Path]) -> list[str]:
    """Replace docs paths (whole arguments or their leading folder) by workspace paths."""
    result = []
    for arg in argv:
        for docs_path, path in sorted(workspace.items(), key=lambda item: -len(item[0])):
            if arg == docs_path or arg.startswith(docs_path + "/"):
                arg = str(path) + arg[len(docs_path):]
                break
        result.append(arg)
    return result


def run_python_script(command: DocCommand, workspace: dict[str, Path]) -> subprocess.CompletedProcess:
    argv = mapped(command.argv, workspace)
    return subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def certs(workspace) -> Path:
    """The docs' certificate command, run with its output folder in the workspace."""
    (command,) = commands_of("python", script="deploy/certs/generate_certs.py")
    result = run_python_script(command, workspace)
    if result.returncode != 0:
        raise RuntimeError(f"{command.line} failed: {result.stderr[-2000:]}")
    return workspace["deploy/secrets"]


@pytest.fixture(scope="module")
def patches(workspace) -> subprocess.CompletedProcess:
    """The docs' ``medi-client prepare`` command, run on the real slide."""
    command = one_command("medi-client", "prepare")
    argv = mapped(command.argv, workspace)
    return subprocess.run([str(Path(sys.executable).parent / "medi-client"), *argv[1:]],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rendered(workspace, certs) -> Path:
    (command,) = commands_of("python", script="deploy/k8s/render.py")
    result = run_python_script(command, workspace)
    if result.returncode != 0:
        raise RuntimeError(f"{command.line} failed: {result.stderr[-2000:]}")
    return workspace["deploy/k8s/generated"]


def test_docs_have_commands():
    assert len(COMMANDS) >= 10


def test_docs_commands_all_known():
    """Every command is of a kind that a test below checks."""
    known = {"python", "pip", "medi-client", "medi-server", "docker", "kubectl", "tar"}
    unknown = [c.line for c in COMMANDS if c.argv[0] not in known]
    assert unknown == []


def test_docs_python_scripts_known():
    scripts = {c.argv[1] for c in commands_of("python")}
    assert scripts == {"deploy/certs/generate_certs.py", "deploy/k8s/render.py"}


def test_docs_env_only_uid():
    """The only variable the docs set is MEDI_UID, and the compose file uses it."""
    names = {name for c in COMMANDS for name in c.env}
    assert names == {"MEDI_UID"}
    assert "${MEDI_UID" in (REPO / "deploy" / "compose.yaml").read_text()


# -- certificates and Kubernetes secrets (run) -----------------------------------------------------


def test_docs_certs_cover_every_site(certs):
    sites = {c["environment"]["MEDI_SITE_ID"] for c in load_compose()["services"].values() if "MEDI_SITE_ID" in c["environment"]}
    created = {p.stem for p in (certs / "supernodes").glob("*.pub")}
    assert created == sites


def test_docs_server_cert_names_site_hosts(certs):
    """The server certificate covers every host name under which sites reach the coordinator."""
    cert = x509.load_pem_x509_certificate((certs / "server.crt").read_bytes())
    names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    compose_host = load_compose()["services"]["hospital-a7"]["environment"]["MEDI_SUPERLINK"].split(":")[0]
    site = k8s_object(load_k8s(), "Deployment", "medi-site-a7")["spec"]["template"]["spec"]["containers"][0]
    k8s_host = next(e["value"] for e in site["env"] if e["name"] == "MEDI_SUPERLINK").split(":")[0]
    docs_host = option(one_command("medi-client", "start").argv, "--superlink").split(":")[0]
    assert compose_host in names
    assert k8s_host in names
    assert docs_host in names


def applied_files() -> list[str]:
    """The ``-f`` files of every ``kubectl apply`` command."""
    files = []
    for command in commands_of("kubectl"):
        if command.argv[1] == "apply":
            files += [command.argv[i + 1] for i, arg in enumerate(command.argv) if arg == "-f"]
    return files


def test_docs_render_writes_applied_files(rendered):
    generated = [p for p in applied_files() if p.startswith("deploy/k8s/generated/")]
    assert len(generated) == 2
    for path in generated:
        assert (rendered / Path(path).name).is_file(), path


def test_docs_kubectl_apply_files_exist():
    committed = [p for p in applied_files() if not p.startswith("deploy/k8s/generated/")]
    assert sorted(committed) == ["deploy/k8s/coordinator.yaml", "deploy/k8s/sites.yaml"]


def test_docs_kubectl_label_selects_one_site():
    (command,) = [c for c in commands_of("kubectl") if "-l" in c.argv]
    key, value = option(command.argv, "-l").split("=")
    objects = yaml.safe_load_all((REPO / option(command.argv, "-f")).read_text())
    selected = sorted(o["kind"] for o in objects if o and o["metadata"]["labels"].get(key) == value)
    assert selected == ["Deployment", "PersistentVolumeClaim"]


# -- hospital commands ------------------------------------------------------------------------------


def test_docs_prepare_runs(patches, workspace):
    assert patches.returncode == 0, patches.stderr[-2000:]
    assert (workspace["/data/patches"] / "report.md").is_file()


def test_docs_start_parses_and_builds_supernode(certs, patches, workspace, tmp_path):
    """The docs' start command is accepted and yields a SuperNode command with TLS and authentication."""
    command = one_command("medi-client", "start")
    args = client_parser().parse_args(mapped(command.argv[1:], workspace))
    config = node_config(args)
    supernode = supernode_command(args, tmp_path / "node-config.toml")
    assert config["site-id"] == "A7"
    assert option(supernode, "--root-certificates") == str(certs / "ca.crt")
    assert option(supernode, "--auth-supernode-private-key") == str(certs / "supernodes" / "A7")
    assert "--insecure" not in supernode


def test_docs_start_reads_prepared_store():
    prepare, start = one_command("medi-client", "prepare"), one_command("medi-client", "start")
    assert option(start.argv, "--data") == option(prepare.argv, "--out")


def test_docs_start_key_matches_site():
    argv = one_command("medi-client", "start").argv
    assert Path(option(argv, "--auth-key")).name == option(argv, "--site-id")


def test_docs_start_port_is_coordinator_port():
    port = int(option(one_command("medi-client", "start").argv, "--superlink").rsplit(":", 1)[1])
    assert port == server_parser().get_default("port")


# -- coordinator commands ---------------------------------------------------------------------------


def test_docs_server_start_files_valid(certs, workspace):
    command = one_command("medi-server", "--run-dir")
    args = server_parser().parse_args(mapped(command.argv[1:], workspace))
    settings = FederationSettings.from_run_config(parse_config_args([str(REPO / a) for a in args.run_config]))
    sl.TlsFiles.from_folder(args.certs)  # raises when a TLS file is missing
    assert [p.is_file() for p in args.supernode_key] == [True, True, True]
    assert settings.min_clients == len(args.supernode_key)
    assert not args.insecure
    assert not args.no_supernode_auth


def test_docs_server_resume_same_folder():
    start = server_parser().parse_args(one_command("medi-server", "--run-dir").argv[1:])
    resume = server_parser().parse_args(one_command("medi-server", "--resume").argv[1:])
    assert resume.resume == start.run_dir


# -- pip, docker, kubectl, tar (checked against the files) -----------------------------------------


def test_docs_pip_lines_match_dockerfile():
    _, stages = parse_dockerfile()
    runs = " ".join(stages["base"].arguments("RUN"))
    for command in commands_of("pip"):
        expected = " ".join(command.argv)
        if "--index-url" in command.argv:
            index = option(command.argv, "--index-url")
            expected = expected.replace(index, "${TORCH_INDEX_URL}")
            default_index = next(t.split("=", 1)[1] for _, t in stages["base"].instructions if t.startswith("TORCH_INDEX_URL="))
            assert default_index == index
        assert expected in runs, command.line


def test_docs_pip_torch_pin_matches_ci():
    pins = {a for c in commands_of("pip") for a in c.argv if a.startswith("torch==")}
    assert pins == {"torch==2.13.0"}
    assert "torch==2.13.0" in (REPO / ".ci" / "run").read_text()


def test_docs_docker_build_target_and_tag():
    _, stages = parse_dockerfile()
    compose = load_compose()
    for command in [c for c in commands_of("docker") if c.argv[1] == "build"]:
        target, tag = option(command.argv, "--target"), option(command.argv, "-t")
        images = {s["image"] for s in compose["services"].values() if s["build"]["target"] == target}
        assert REPO / option(command.argv, "-f") == DOCKERFILE
        assert target in stages
        assert images == {tag}


def test_docs_compose_commands_name_services():
    compose = load_compose()
    for command in [c for c in commands_of("docker") if c.argv[1] == "compose"]:
        argv = command.argv
        assert (REPO / option(argv, "-f")).is_file(), command.line
        subcommand = argv[4]
        operands = [a for a in argv[5:] if not a.startswith("-")]
        assert subcommand in COMPOSE_SUBCOMMANDS, command.line
        if subcommand in ("stop", "start", "logs", "up", "run"):
            assert all(name in compose["services"] for name in operands[:1]), command.line
        if subcommand == "run":
            assert operands[1] in SITE_MODES, command.line
            # A one-off `run` would otherwise start the services it depends on (the coordinator).
            if compose["services"][operands[0]].get("depends_on"):
                assert "--no-deps" in argv, command.line


def test_docs_compose_cp_reads_run_volume():
    compose = load_compose()
    copies = [c for c in commands_of("docker") if c.argv[1] == "compose" and c.argv[4] == "cp"]
    assert len(copies) == 2
    for command in copies:
        service, path = command.argv[5].split(":", 1)
        spec = compose["services"][service]
        mounts = [v.split(":")[1] for v in spec["volumes"]]
        assert path.startswith(spec["environment"]["MEDI_RUN_DIR"] + "/"), command.line
        assert any(path.startswith(m + "/") for m in mounts), command.line


def test_docs_kubectl_targets_exist():
    objects = load_k8s()
    for command in commands_of("kubectl"):
        if command.argv[1] == "apply":
            continue
        target = next(a for a in command.argv[2:] if a.startswith("deploy/"))
        deployment = k8s_object(objects, "Deployment", target.split("/", 1)[1])
        if command.argv[1] == "scale":
            replicas = int(next(a for a in command.argv if a.startswith("--replicas=")).split("=")[1])
            assert replicas in (0, deployment["spec"]["replicas"]), command.line
        if command.argv[1] == "exec":
            pod = deployment["spec"]["template"]["spec"]
            containers = {c["name"]: c for c in pod["containers"] + pod.get("initContainers", [])}
            name = option(command.argv, "-c") if "-c" in command.argv else pod["containers"][0]["name"]
            remote = command.argv[command.argv.index("--") + 1:]
            folder = option(remote, "-C")
            mounts = [m["mountPath"] for m in containers[name]["volumeMounts"]]
            assert remote[0] == "tar", command.line
            assert any(folder.startswith(m + "/") for m in mounts), command.line


def test_docs_kubectl_exec_paths_match_env():
    """The folders that the tar commands read or fill are the ones the containers use."""
    objects = load_k8s()
    env_values = set()
    for deployment in [o for o in objects if o["kind"] == "Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"] + pod.get("initContainers", []):
            env_values |= {e["value"] for e in container.get("env", [])}
    for command in [c for c in commands_of("kubectl") if c.argv[1] == "exec"]:
        remote = command.argv[command.argv.index("--") + 1:]
        assert option(remote, "-C") in env_values, command.line


def test_docs_local_tar_reads_slide_folder():
    """The slides copied into Kubernetes come from the folder that the prepare command reads."""
    slides = option(one_command("medi-client", "prepare").argv, "--slides")
    pipelines = [c for c in COMMANDS if len(c.stages) > 1]
    assert [option(c.stages[0], "-C") for c in pipelines] == [slides]
    assert [c.stages[0][0] for c in pipelines] == ["tar"]


def test_docs_site_modes_in_entrypoint():
    script = (REPO / "deploy" / "entrypoints" / "site.sh").read_text()
    modes = set(re.findall(r"^    (\w+)\)$", script, re.MULTILINE))
    assert modes == set(SITE_MODES)


def test_docs_run_config_parses():
    config = tomllib.loads((REPO / "deploy" / "run-config.toml").read_text())
    settings = FederationSettings.from_run_config(config)
    assert settings.k_anonymity == 5
