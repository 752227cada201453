"""Read the deployment files (compose, Kubernetes, Dockerfile) and run a container's entrypoint on this host (test helper).

`Sandbox` reproduces the files and variables a compose service finds inside its container: the
image's and the service's environment, its secrets under ``/run/secrets`` and
its configs, with every container path mapped into a temporary folder. Tests
then run the same entrypoint script with the same arguments, on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S_FILES = (DEPLOY / "k8s" / "coordinator.yaml", DEPLOY / "k8s" / "sites.yaml")
CERT_SCRIPT = DEPLOY / "certs" / "generate_certs.py"
RENDER_SCRIPT = DEPLOY / "k8s" / "render.py"
SECRETS_DIR = "/run/secrets"  # where compose mounts a service's secrets


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_k8s() -> list[dict[str, Any]]:
    """Every object of the committed Kubernetes manifests."""
    objects = []
    for path in K8S_FILES:
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def k8s_object(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise LookupError(f"expected one {kind} {name!r} in the manifests, found {len(matches)}")
    return matches[0]


@dataclass
class Stage:
    """One build stage of a Dockerfile: its instructions as (keyword, argument text) pairs."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [text for key, text in self.instructions if key == keyword]


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], dict[str, Stage]]:
    """Return (global ARG defaults, stages by name); continuation lines are joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"stage{len(stages)}"
            current = Stage(name=name, base=parts[0])
            stages[name] = current
        elif current is None and keyword == "ARG":
            key, _, value = rest.partition("=")
            global_args[key.strip()] = value.strip()
        elif current is not None:
            current.instructions.append((keyword, rest.strip()))
    return global_args, stages


def stage_chain(stages: Mapping[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it builds on, base first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def parse_env_instruction(text: str) -> dict[str, str]:
    """``ENV A=1 B="x y"`` as a mapping (the ``KEY=VALUE`` form only)."""
    values = {}
    for token in shlex.split(text):
        key, sep, value = token.partition("=")
        if not sep:
            raise ValueError(f"ENV instruction without '=': {text!r}; use the KEY=VALUE form")
        values[key] = value
    return values


def image_environment(stages: Mapping[str, Stage], target: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in stage_chain(stages, target):
        for text in stage.arguments("ENV"):
            env.update(parse_env_instruction(text))
    return env


def entrypoint_on_host(stages: Mapping[str, Stage], target: str) -> Path:
    """The repository file that the image of ``target`` runs as its ENTRYPOINT.

    The image path is mapped back through the ``COPY deploy/... /opt/...``
    instruction that put it there.
    """
    chain = stage_chain(stages, target)
    entrypoints = [s.arguments("ENTRYPOINT") for s in chain if s.arguments("ENTRYPOINT")]
    image_path = yaml.safe_load(entrypoints[-1][-1])[0]  # exec form: a JSON array
    for stage in chain:
        for text in stage.arguments("COPY"):
            source, destination = text.split()[-2:]
            if image_path.startswith(destination.rstrip("/") + "/"):
                return REPO / source / image_path[len(destination.rstrip("/")) + 1:]
    raise LookupError(f"no COPY instruction of stage {target!r} provides {image_path}")


def secret_files(compose: Mapping[str, Any], service: str) -> dict[str, str]:
    """Container path -> compose file path (relative to ``deploy/``) of a service's secrets and configs."""
    spec = compose["services"][service]
    files = {}
    for kind in ("secrets", "configs"):
        for entry in spec.get(kind, []):
            source = entry["source"]
            target = entry.get("target", source)
            if not target.startswith("/"):
                target = f"{SECRETS_DIR}/{target}" if kind == "secrets" else f"/{target}"
            files[target] = compose[kind][source]["file"]
    return files


@dataclass
class Sandbox:
    """A temporary folder standing in for one compose service's container file system."""

    compose: Mapping[str, Any]
    service: str
    root: Path
    source_root: Path  # where the compose file's ``./secrets`` and ``./run-config.toml`` live

    def host_path(self, container_path: str) -> str:
        """Map an absolute container path into the sandbox."""
        return str(self.root / container_path.lstrip("/"))

    def install_files(self) -> None:
        """Copy the service's secrets and configs where the container would see them."""
        for target, source in secret_files(self.compose, self.service).items():
            destination = Path(self.host_path(target))
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes((self.source_root / source).read_bytes())
            os.chmod(destination, 0o600)

    def environment(
        self,
        image_env: Mapping[str, str],
        overrides: Mapping[str, str] = {},
        *,
        service_env: bool = True,
    ) -> dict[str, str]:
        """Image env, then the service's env (unless ``service_env`` is false), with container paths mapped, then ``overrides``."""
        merged = dict(image_env)
        if service_env:
            merged.update({k: str(v) for k, v in (self.compose["services"][self.service].get("environment") or {}).items()})
        mapped = {k: self.host_path(v) if v.startswith("/") else v for k, v in merged.items()}
        mapped.update(overrides)
        env = dict(os.environ)
        env.update(mapped)
        # Console scripts (medi-server, medi-client, flower-*) come from this test's environment.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def command(self, entrypoint: Path) -> list[str]:
        """The entrypoint with the service's ``command`` as arguments (compose replaces the image's CMD)."""
        return [str(entrypoint), *self.compose["services"][self.service].get("command", [])]

    def start(self, entrypoint: Path, env: Mapping[str, str], log_name: str) -> subprocess.Popen:
        log = open(self.root / log_name, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        return subprocess.Popen(self.command(entrypoint), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.root)


def make_certs(out: Path, sites: list[str], sans: list[str]) -> Path:
    """Run the certificate script as an operator would."""
    cmd = [sys.executable, str(CERT_SCRIPT), "--out", str(out), "--sites", *sites]
    for san in sans:
        cmd += ["--san", san]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out


# -- commands of the operator docs ---------------------------------------------------------------

OPERATORS_DOC = REPO / "docs" / "OPERATORS.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENV_PREFIX = re.compile(r"^([A-Z][A-Z0-9_]*)=(\$\([^)]*\)|\S+)\s+")


@dataclass
class DocCommand:
    """One command line of an ``sh`` block: leading ``VAR=value`` assignments, pipeline stages, output file."""

    line: str
    env: dict[str, str]
    stages: list[list[str]]
    redirect: str | None = None

    @property
    def argv(self) -> list[str]:
        return self.stages[0]


def parse_doc_command(line: str) -> DocCommand:
    env = {}
    rest = line
    while match := ENV_PREFIX.match(rest):
        env[match.group(1)] = match.group(2)
        rest = rest[match.end():]
    lexer = shlex.shlex(rest, posix=True, punctuation_chars="|>")
    lexer.whitespace_split = True
    stages: list[list[str]] = [[]]
    redirect = None
    tokens = list(lexer)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "|":
            stages.append([])
        elif token == ">":
            redirect = tokens[index + 1]
            index += 1
        else:
            stages[-1].append(token)
        index += 1
    return DocCommand(line=line, env=env, stages=stages, redirect=redirect)


def doc_commands(path: Path = OPERATORS_DOC) -> list[DocCommand]:
    """Every command of the ``sh`` fenced blocks of ``path``, in order of appearance."""
    commands = []
    for block in SH_BLOCK.findall(path.read_text()):
        pending = ""
        for raw in block.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append(parse_doc_command(pending + line))
            pending = ""
    return commands


def collected_run_paths(commands: list[DocCommand], run_dir: str) -> list[str]:
    """Paths inside the coordinator's run folder that the docs tell the operator to copy out."""
    prefix = run_dir.rstrip("/") + "/"
    paths = []
    for command in commands:
        argv = command.argv
        if argv[:2] == ["docker", "compose"] and "cp" in argv:
            source = argv[argv.index("cp") + 1].split(":", 1)[1]
            if source.startswith(prefix):
                paths.append(source[len(prefix):])
        if argv[:2] == ["kubectl", "exec"] and "tar" in argv:
            remote = argv[argv.index("tar"):]
            if remote[remote.index("-C") + 1] == run_dir and "-cf" in remote:
                paths += remote[remote.index("-cf") + 2:]
    return paths
