"""`medi-server`: run the coordinator of a MeDi-Fed federation.

Starts a Flower SuperLink (TLS and SuperNode authentication by default),
registers the sites' public keys, submits the MeDi run, streams its log and
exits non-zero with the reason when the run fails::

    medi-server --run-dir runs/brca --certs certs \\
        --supernode-key certs/supernodes/A7.pub --supernode-key certs/supernodes/AC.pub \\
        --run-config 'num-server-rounds=20 model-preset="small"'

    medi-server --resume runs/brca          # continue after a crash

Everything the resume needs (address, certificates, keys, run config) is kept
in ``RUN_DIR/federation.json``. The SuperLink's database
(``RUN_DIR/superlink.db``) keeps the registered keys and node ids, so the
sites reconnect by themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from medi_core.errors import ConfigError, FederationError, MediError
from medi_server import superlink as sl
from medi_server.app_bundle import write_app_folder
from medi_server.settings import FederationSettings

logger = logging.getLogger("medi_server.cli")

STATE_FILE = "federation.json"
DEFAULT_PORT = 9092  # Flower's classic Fleet API port; all SuperLink APIs share it in Flower 1.42
DEFAULT_TIMEOUT = 7 * 24 * 3600.0  # seconds; a medi-paper run may take days


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medi-server", description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--run-dir", type=Path, help="new run folder: checkpoints, metrics, sampler, logs")
    target.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last complete round")
    parser.add_argument("--host", default="127.0.0.1", help="address the SuperLink binds (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="SuperLink port (default: %(default)s)")
    parser.add_argument("--certs", type=Path, help="folder with ca.crt, server.crt, server.key (deploy/certs/generate_certs.py)")
    parser.add_argument("--insecure", action="store_true", help="run without TLS (testing only; traffic is unencrypted)")
    parser.add_argument("--supernode-key", type=Path, action="append", default=[], metavar="PUB",
                        help="public key (OpenSSH, EC) of a site's SuperNode; repeat per site")
    parser.add_argument("--no-supernode-auth", action="store_true",
                        help="accept any SuperNode (testing only; by default only registered keys may join)")
    parser.add_argument("--superlink-state", default="database", choices=["database", "memory"],
                        help="where the SuperLink keeps its state: 'database' (RUN_DIR/superlink.db, survives a "
                             "restart, so sites reconnect by themselves) or 'memory' (faster for large models)")
    parser.add_argument("--run-config", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="run settings as TOML key=value pairs, or a .toml file (see [tool.flwr.app.config])")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="give up after this many seconds (default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


# Flower 1.42's pattern for one KEY=VALUE pair of --run-config (flwr.common.config.parse_config_args).
RUN_CONFIG_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")
RUN_CONFIG_EXAMPLE = "--run-config 'num-server-rounds=2 beta-schedule=\"squaredcos_cap_v2\"'"


def run_config_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse the ``--run-config`` values: one ``.toml`` file, or TOML ``KEY=VALUE`` pairs.

    Flower's parser ignores text that is not a pair, so a mistyped file name
    such as ``run-config.tml`` would run with the package defaults.
    """
    files = [item for item in items if item.endswith(".toml")]
    if files and len(items) > 1:
        raise ConfigError(
            f"--run-config {files[0]} is a file, which cannot be combined with other --run-config values; "
            "put every setting into the file"
        )
    if files:
        path = Path(files[0]).expanduser()
        if not path.is_file():
            raise ConfigError(f"run config file {path} not found; check the path given to --run-config")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"run config file {path} is not valid TOML: {err}") from None
        return parse_config_args(items)
    for item in items:
        leftover = RUN_CONFIG_PAIR.sub("", item).strip()
        if leftover:
            hint = (f"a run config file must end in .toml, so rename {item}" if Path(item).expanduser().is_file()
                    else f"pass a .toml file or KEY=VALUE pairs, for example {RUN_CONFIG_EXAMPLE}")
            raise ConfigError(f"--run-config {item!r}: {leftover!r} is not a KEY=VALUE pair; {hint}")
        pairs = "\n".join(f"{key} = {value}" for key, value in RUN_CONFIG_PAIR.findall(item))
        try:
            tomllib.loads(pairs)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(
                f"--run-config {item!r} is invalid ({err}); text values need double quotes inside the shell's "
                f"single quotes, for example {RUN_CONFIG_EXAMPLE}"
            ) from None
    return parse_config_args(items)


def _new_state(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = args.run_dir.expanduser().resolve()
    if (run_dir / STATE_FILE).exists():
        raise ConfigError(f"{run_dir} already contains a run; continue it with `medi-server --resume {run_dir}` or pick a new --run-dir")
    if args.insecure:
        logger.warning("--insecure: the SuperLink runs WITHOUT TLS; weights and metadata counts travel unencrypted")
        certs = None
    else:
        if args.certs is None:
            raise ConfigError("pass --certs CERTS_DIR (create it with deploy/certs/generate_certs.py) or --insecure for a test")
        certs = str(args.certs.expanduser().resolve())
        sl.TlsFiles.from_folder(Path(certs))
    auth = not args.no_supernode_auth
    if auth and certs is None:
        raise ConfigError("SuperNode authentication needs TLS; pass --certs, or add --no-supernode-auth to --insecure")
    if auth and not args.supernode_key:
        raise ConfigError("SuperNode authentication is on but no --supernode-key was given; pass one public key per site")
    if not auth:
        logger.warning("--no-supernode-auth: any SuperNode that reaches %s:%d may join the federation", args.host, args.port)
    overrides = run_config_overrides(args.run_config) if args.run_config else {}
    overrides = {k: v for k, v in overrides.items() if k not in ("run-dir", "resume")}
    overrides["run-dir"] = str(run_dir)
    FederationSettings.from_run_config(overrides)  # reject invalid settings before anything starts
    keys = [str(Path(k).expanduser().resolve()) for k in args.supernode_key]
    for key in keys:
        sl.check_supernode_public_key(Path(key))
    return {"host": args.host, "port": args.port, "certs": certs, "supernode_auth": auth,
            "superlink_state": args.superlink_state,
            "supernode_keys": keys, "registered": [], "run_config": overrides, "runs": []}


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def serve(run_dir: Path, state: dict[str, Any], *, resume: bool, timeout: float) -> str:
    """Start the SuperLink, register keys, submit the run and wait; return the final run status."""
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / "flwr-home"
    env = sl.flower_environment(flwr_home)
    tls = sl.TlsFiles.from_folder(Path(state["certs"])) if state["certs"] else None
    in_memory = state.get("superlink_state") == "memory"
    if in_memory:
        # NOTE: an in-memory SuperLink forgets registrations, so keys are registered again on resume.
        # Whether running SuperNodes reconnect to the new SuperLink by themselves is untested; restart
        # `medi-client start` at the sites if they do not.
        state["registered"] = []
    # SQLite also stores every message payload; with a medi-paper model (0.8-1.6 GB per message)
    # a 2-core test machine saw "database is locked" errors, hence the in-memory option.
    link = sl.start_process(
        sl.superlink_command(host=state["host"], port=state["port"], tls=tls, supernode_auth=state["supernode_auth"],
                             database=None if in_memory else run_dir / "superlink.db"),
        env=env, log_path=run_dir / "logs" / "superlink.log",
    )
    state["superlink_pid"] = link.pid  # lets an operator (or a test) find the SuperLink of this run
    _save_state(run_dir, state)
    streamer = None
    try:
        connect_host = "127.0.0.1" if state["host"] in ("0.0.0.0", "::") else state["host"]
        sl.wait_for_port(connect_host, state["port"], process=link)
        sl.write_connection(flwr_home, address=f"{connect_host}:{state['port']}",
                            root_certificate=tls.ca_cert if tls else None)
        for key in state["supernode_keys"]:
            if key not in state["registered"]:
                sl.register_supernode(Path(key), env=env, name=Path(key).stem)
                state["registered"].append(key)
                _save_state(run_dir, state)
        run_config = dict(state["run_config"], resume=resume)
        app_dir = write_app_folder(run_dir / "app")
        run_id = sl.submit_run(app_dir, env=env, run_config=run_config, config_file=run_dir / "run-config.toml")
        state["runs"].append(run_id)
        _save_state(run_dir, state)
        logger.info("run %d submitted; SuperLink at %s:%d; run log in %s", run_id, connect_host, state["port"],
                    run_dir / "server.log")
        streamer = sl.stream_logs(run_id, env=env)
        status = sl.wait_for_run(run_id, env=env, timeout=timeout)
        return status
    finally:
        if streamer is not None:
            sl.stop_process(streamer, name="flwr log", grace=5)
        sl.stop_process(link, name="SuperLink")


def failure_reason(run_dir: Path) -> str:
    """Return the last error line the ServerApp wrote to ``server.log``, if any."""
    log = run_dir / "server.log"
    if not log.is_file():
        return "the ServerApp wrote no log; see the SuperLink log"
    errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
    return errors[-1].split(": ", 1)[-1] if errors else "no error line in server.log"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.resume is not None:
            run_dir = args.resume.expanduser().resolve()
            if not (run_dir / STATE_FILE).is_file():
                raise ConfigError(f"{run_dir / STATE_FILE} not found; --resume needs a folder started by medi-server")
            if args.run_config:
                raise ConfigError(
                    f"--resume takes no --run-config: the run keeps the settings stored under \"run_config\" in "
                    f"{run_dir / STATE_FILE}; edit that file to change one (prediction-type and beta-schedule "
                    "must match the checkpoints)"
                )
            state = json.loads((run_dir / STATE_FILE).read_text())
            logger.info("resuming the run in %s", run_dir)
        else:
            state = _new_state(args)
            run_dir = Path(state["run_config"]["run-dir"])
            run_dir.mkdir(parents=True, exist_ok=True)
            _save_state(run_dir, state)
        status = serve(run_dir, state, resume=args.resume is not None, timeout=args.timeout)
    except MediError as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; continue later with `medi-server --resume %s`", args.resume or args.run_dir)
        return 130
    if status != "finished:completed":
        logger.error("the run ended with status %s: %s (full logs: %s, %s)", status, failure_reason(run_dir),
                     run_dir / "server.log", run_dir / "logs")
        return 1
    logger.info("run finished; sampler in %s", run_dir / "sampler")
    return 0


if __name__ == "__main__":
    sys.exit(main())
