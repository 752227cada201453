"""`medi-client`: the hospital-side command line (``prepare`` tiles local slides into a patch store, ``start`` joins a federation)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medi_client.prepare import EXIT_STATUS_HELP, add_prepare_arguments, run_prepare
from medi_client.start import add_start_arguments, run_start


def build_parser() -> argparse.ArgumentParser:
    """Return the ``medi-client`` parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="medi-client", description="MeDi-Fed hospital client")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare",
        help="tile whole-slide images into a local patch store",
        description="Detect tissue in whole-slide images, cut grid tiles at a fixed resolution and write "
                    "them with their slide metadata to a resumable patch store, with a preview PNG per slide "
                    "and a run report (report.md, report.json).",
        epilog=EXIT_STATUS_HELP,
    )
    add_prepare_arguments(prepare)
    prepare.set_defaults(handler=run_prepare)
    start = commands.add_parser(
        "start",
        help="join a federation as a Flower SuperNode",
        description="Run a Flower SuperNode for this site: TLS to the coordinator, SuperNode authentication, "
                    "the site's data path, site id, output folder and privacy limit as node config.",
    )
    add_start_arguments(start)
    start.set_defaults(handler=run_start)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the chosen command; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
