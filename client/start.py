"""`medi-client start`: join a federation by running a Flower SuperNode with this site's settings.

The site's settings become the SuperNode's node config (written as
``OUTPUT_DIR/node-config.toml``, so paths need no quoting) and never leave the
site. TLS is on unless ``--insecure`` is given; ``--auth-key`` turns on
SuperNode authentication; ``--trusted-entities`` restricts the node to app
bundles signed by the listed keys. Flower telemetry and update checks are
switched off, so the node connects to nothing but its SuperLink::

    medi-client start --superlink coordinator.example.org:9092 --root-cert certs/ca.crt \\
        --auth-key certs/supernodes/A7 --data /data/patch-store --site-id A7 --output-dir /data/medi
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from pathlib import Path

import tomli_w

from medi_core import protocol as P
from medi_core.errors import ConfigError
from medi_client.flower_env import flower_environment, flower_executable

logger = logging.getLogger(__name__)

DEFAULT_MIN_K = 5  # the coordinator's default k-anonymity, so a default federation runs unchanged
DEFAULT_RUNTIME_PORT = 9094  # Flower's default SuperNode Runtime API port; each node on one host needs its own


def add_start_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``start`` options to ``parser``."""
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the coordinator's SuperLink address")
    parser.add_argument("--root-cert", type=Path, help="CA certificate (ca.crt) that signed the SuperLink's certificate")
    parser.add_argument("--insecure", action="store_true", help="connect without TLS (testing only)")
    parser.add_argument("--auth-key", type=Path, help="this site's SuperNode private key (OpenSSH EC) for authentication")
    parser.add_argument("--trusted-entities", type=Path,
                        help="YAML trust list: run only app bundles signed by these keys (see deploy/certs)")
    parser.add_argument("--data", type=Path, required=True, help="patch source: patch store, TCGA-UT folder, labelled folder or manifest CSV")
    parser.add_argument("--data-kind", default="auto", choices=["auto", "patch_store", "tcga_ut", "labelled_folder", "manifest"],
                        help="layout of --data; auto detects it from the files (default: auto)")
    parser.add_argument("--site-id", required=True, help="this site's name in the federation")
    parser.add_argument("--output-dir", type=Path, required=True, help="synthetic patches, the received sampler, local state")
    parser.add_argument("--max-epsilon", type=float, default=0.0,
                        help="differential-privacy budget of this site; 0 trains without DP (default: %(default)s)")
    parser.add_argument("--min-k", type=int, default=DEFAULT_MIN_K,
                        help="lowest k-anonymity this site accepts: a summary request that reports counts under a "
                             "smaller k is rejected (default: %(default)s)")
    parser.add_argument("--privacy-state-dir", type=Path, help="where the privacy accountant is kept (default: OUTPUT_DIR/privacy)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="torch device for training and synthesis; auto picks cuda when present (default: auto)")
    parser.add_argument("--audit-log", type=Path, help="JSONL file listing every reply this site sends")
    parser.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT,
                        help="local port of the SuperNode's Runtime API (default: %(default)s)")
    parser.add_argument("--max-retries", type=int, help="give up after this many failed connection attempts (default: never)")
    parser.add_argument("--max-wait-time", type=float, help="give up after this many seconds without a connection (default: never)")


def node_config(args: argparse.Namespace) -> dict[str, object]:
    """Build the node config of this site, as the ClientApp reads it (`medi_client.site.SiteConfig`)."""
    data = args.data.expanduser().resolve()
    if not data.exists():
        raise ConfigError(f"--data {data} not found; pass the patch store, folder or manifest CSV of this site")
    if args.max_epsilon < 0:
        raise ConfigError(f"--max-epsilon must be >= 0 (0: no differential privacy), got {args.max_epsilon}")
    if args.min_k < 1:
        raise ConfigError(f"--min-k must be an integer >= 1, got {args.min_k}")
    output = args.output_dir.expanduser().resolve()
    config: dict[str, object] = {
        P.NODE_DATA_PATH: str(data),
        P.NODE_SITE_ID: args.site_id,
        P.NODE_OUTPUT_DIR: str(output),
        P.NODE_MAX_EPSILON: float(args.max_epsilon),
        P.NODE_DATA_KIND: args.data_kind,
        P.NODE_DEVICE: args.device,
        P.NODE_MIN_K: int(args.min_k),
    }
    if args.privacy_state_dir is not None:
        config[P.NODE_PRIVACY_STATE_DIR] = str(args.privacy_state_dir.expanduser().resolve())
    if args.audit_log is not None:
        config[P.NODE_AUDIT_LOG] = str(args.audit_log.expanduser().resolve())
    return config


def supernode_command(args: argparse.Namespace, node_config_file: Path) -> list[str]:
    """Build the ``flower-supernode`` command line for these options."""
    cmd = [flower_executable("flower-supernode"), "--superlink", args.superlink,
           "--node-config", str(node_config_file), "--port", str(args.runtime_port)]
    if args.insecure:
        if args.auth_key is not None:
            raise ConfigError("SuperNode authentication needs TLS; drop --insecure or --auth-key")
        cmd.append("--insecure")
    else:
        if args.root_cert is None:
            raise ConfigError("pass --root-cert CA_CERT (the federation's ca.crt) or --insecure for a test")
        if not args.root_cert.is_file():
            raise ConfigError(f"--root-cert {args.root_cert} not found")
        cmd += ["--root-certificates", str(args.root_cert.expanduser().resolve())]
    if args.auth_key is not None:
        if not args.auth_key.is_file():
            raise ConfigError(f"--auth-key {args.auth_key} not found")
        cmd += ["--auth-supernode-private-key", str(args.auth_key.expanduser().resolve())]
    if args.trusted_entities is not None:
        # NOTE: Flower 1.42 verifies signatures only on bundles the SuperLink fetched from Flower
        # Hub (their "valid_license" record). A bundle submitted with `flwr run`, as medi-server
        # does, carries none, so a node with a trust list rejects it with a verification error.
        if not args.trusted_entities.is_file():
            raise ConfigError(f"--trusted-entities {args.trusted_entities} not found")
        cmd += ["--trusted-entities", str(args.trusted_entities.expanduser().resolve())]
    if args.max_retries is not None:
        cmd += ["--max-retries", str(args.max_retries)]
    if args.max_wait_time is not None:
        cmd += ["--max-wait-time", str(args.max_wait_time)]
    return cmd


def check_runtime_port_free(port: int) -> None:
    """Raise `ConfigError` when 127.0.0.1:``port``, where the SuperNode serves its Runtime API, is taken.

    Flower would otherwise stop with a traceback after the node has started.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the Runtime API server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(
                f"--runtime-port {port}: 127.0.0.1:{port} is already in use, for example by another SuperNode on "
                "this machine; each node on one host needs its own port, so pass a free one with --runtime-port"
            ) from None


def run_start(args: argparse.Namespace) -> int:
    """Write the node config and replace this process by the SuperNode (signals reach it directly)."""
    try:
        config = node_config(args)
        output = Path(str(config[P.NODE_OUTPUT_DIR]))
        output.mkdir(parents=True, exist_ok=True)
        config_file = output / "node-config.toml"
        config_file.write_text(tomli_w.dumps(config), encoding="utf-8")
        cmd = supernode_command(args, config_file)
        check_runtime_port_free(args.runtime_port)
    except ConfigError as err:
        logger.error("%s", err)
        return 2
    if args.insecure:
        logger.warning("--insecure: this site talks to %s WITHOUT TLS", args.superlink)
    if args.auth_key is None:
        logger.warning("no --auth-key: the SuperLink accepts this node only if it runs without SuperNode authentication")
    env = flower_environment(output / "flwr-home")
    logger.info("site %s joins %s as a Flower SuperNode (node config %s)", args.site_id, args.superlink, config_file)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached: execve replaces the process
