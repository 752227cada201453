"""Render the Kubernetes Secrets and ConfigMap of a MeDi-Fed federation from local files.

Reads the folder that ``deploy/certs/generate_certs.py`` wrote and the run
settings file, and writes into ``--out`` (default ``deploy/k8s/generated``):

| file | objects | who applies it |
|---|---|---|
| ``coordinator.yaml`` | Secret ``medi-coordinator-tls`` (``ca.crt``, ``server.crt``, ``server.key``), Secret ``medi-supernode-public-keys`` (one ``<site>.pub`` each), ConfigMap ``medi-run-config`` | coordinator |
| ``site-<site>.yaml`` | Secret ``medi-site-<site>-keys`` (``ca.crt``, ``supernode.key``, ``trusted-entities.yaml``) | that hospital only |

Sites are the ``supernodes/*.pub`` files of the certificate folder. The CA's
private key is never rendered. Output files hold private keys, so they are
written with mode 0600; do not commit them. Example::

    python deploy/k8s/render.py --certs deploy/secrets --run-config deploy/run-config.toml
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from medi_core.errors import ConfigError
from medi_server.settings import FederationSettings

logger = logging.getLogger("render")

HERE = Path(__file__).resolve().parent
COORDINATOR_TLS = "medi-coordinator-tls"
SUPERNODE_PUBLIC_KEYS = "medi-supernode-public-keys"
RUN_CONFIG_MAP = "medi-run-config"
RUN_CONFIG_KEY = "run-config.toml"
TLS_FILES = ("ca.crt", "server.crt", "server.key")
# Kubernetes object names are DNS-1123 labels: lower-case letters, digits and '-'.
K8S_NAME_PART = re.compile(r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")
LABELS = {"app.kubernetes.io/name": "medi-fed"}


def site_secret_name(site: str) -> str:
    """Name of a site's Secret, as ``deploy/k8s/sites.yaml`` mounts it."""
    part = site.lower()
    if not K8S_NAME_PART.match(part):
        raise ConfigError(
            f"site name {site!r} cannot be part of a Kubernetes object name; "
            "use letters, digits and '-' only (rename its key pair with generate_certs.py --sites)"
        )
    return f"medi-site-{part}-keys"


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{path} not found; create the federation's files with deploy/certs/generate_certs.py --out {path.parent}")
    return path.read_bytes()


def secret(name: str, files: Mapping[str, bytes], component: str) -> dict[str, Any]:
    """Build an Opaque Secret whose keys are file names and whose values are the files' bytes."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "labels": {**LABELS, "app.kubernetes.io/component": component}},
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in sorted(files.items())},
    }


def config_map(name: str, files: Mapping[str, str], component: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {**LABELS, "app.kubernetes.io/component": component}},
        "data": dict(files),
    }


def find_sites(certs: Path) -> list[str]:
    """Site names, from the ``supernodes/<site>.pub`` files of ``certs``."""
    sites = sorted(p.stem for p in (certs / "supernodes").glob("*.pub"))
    if not sites:
        raise ConfigError(f"no SuperNode key pair in {certs / 'supernodes'}; run generate_certs.py --sites SITE ...")
    return sites


def coordinator_objects(certs: Path, run_config: Path, sites: Sequence[str]) -> list[dict[str, Any]]:
    """Build the coordinator's two Secrets and its run-config ConfigMap."""
    tls = {name: _read(certs / name) for name in TLS_FILES}
    public_keys = {f"{site}.pub": _read(certs / "supernodes" / f"{site}.pub") for site in sites}
    text = _read(run_config).decode("utf-8")
    try:
        FederationSettings.from_run_config(tomllib.loads(text))  # reject unknown keys before deployment
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{run_config} is not valid TOML: {err}") from err
    settings = {RUN_CONFIG_KEY: text}
    return [
        secret(COORDINATOR_TLS, tls, "coordinator"),
        secret(SUPERNODE_PUBLIC_KEYS, public_keys, "coordinator"),
        config_map(RUN_CONFIG_MAP, settings, "coordinator"),
    ]


def site_objects(certs: Path, site: str) -> list[dict[str, Any]]:
    """Build the Secret of one site: the CA certificate, its SuperNode private key and the app-signing trust list."""
    files = {"ca.crt": _read(certs / "ca.crt"), "supernode.key": _read(certs / "supernodes" / site)}
    trust_list = certs / "trusted-entities.yaml"
    if trust_list.is_file():
        files["trusted-entities.yaml"] = trust_list.read_bytes()
    return [secret(site_secret_name(site), files, "site")]


def _write_private(path: Path, objects: Sequence[dict[str, Any]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("# Rendered by deploy/k8s/render.py; contains key material, do not commit.\n")
        yaml.safe_dump_all(objects, handle, sort_keys=False)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through os.open
    logger.info("wrote %s", path)


def render(certs: Path, run_config: Path, out: Path) -> list[Path]:
    """Write the coordinator's and every site's manifests into ``out``; return their paths."""
    sites = find_sites(certs)
    for site in sites:
        site_secret_name(site)  # reject unusable names before writing anything
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "coordinator.yaml"]
    _write_private(written[0], coordinator_objects(certs, run_config, sites))
    for site in sites:
        path = out / f"site-{site.lower()}.yaml"
        _write_private(path, site_objects(certs, site))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--certs", type=Path, required=True, help="folder written by deploy/certs/generate_certs.py")
    parser.add_argument("--run-config", type=Path, default=HERE.parent / "run-config.toml",
                        help="run settings TOML for medi-server (default: deploy/run-config.toml)")
    parser.add_argument("--out", type=Path, default=HERE / "generated", help="output folder (default: deploy/k8s/generated)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        render(args.certs, args.run_config, args.out)
    except ConfigError as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
