"""`sensor-collector`: run the collector in the foreground, or one of its subcommands."""

from __future__ import annotations

import argparse
import sqlite3
import sys

from sensor_edge.config import ConfigError, load_collector_config
from sensor_edge.runtime.logs import setup_logging
from sensor_edge.runtime.service import run_service
from sensor_edge.server.storage.rollups import RAW, TIER_NAMES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sensor-collector",
        description="Receive readings from sensor agents over WebSockets, store them, "
                    "and serve them back (API, dashboard, metrics).",
    )
    # Required unless a subcommand is given (checked in main): `--config FILE` alone runs it.
    p.add_argument("--config", metavar="FILE", help="collector config (YAML)")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    export = commands.add_parser(
        "export", help="write stored readings as CSV or JSON lines",
        description="Stream stored readings, oldest first, as CSV or JSON lines. "
                    "Times are Unix seconds or ISO 8601 (no offset means UTC).")
    export.add_argument("--config", required=True, metavar="FILE", help="collector config (YAML)")
    export.add_argument("--since", metavar="T", help="only readings at or after T")
    export.add_argument("--until", metavar="T", help="only readings at or before T")
    export.add_argument("--agent", metavar="ID", help="only this agent's readings")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                        help="output format (default: csv)")
    export.add_argument("--tier", choices=TIER_NAMES, default=RAW,
                        help="raw readings (default), or the 1-minute or 1-hour rollups: "
                             "agent, sensor, metric, unit, ts (the bucket's start), min, avg, "
                             "max, count")
    export.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    add_agent = commands.add_parser(
        "add-agent", help="let a new agent in: mint its token, store only the token's sha256",
        description="Mint a random token for a new agent, print it once on standard output, "
                    "and append the agent to the config's agents list with only the token's "
                    "sha256 (comments and layout are kept). Restart the collector afterwards.")
    add_agent.add_argument("agent_id", metavar="ID", help="the new agent's id (its agent.id)")
    add_agent.add_argument("--config", required=True, metavar="FILE",
                           help="collector config (YAML) to add it to")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.config is None:
        p.error("the following arguments are required: --config")
    setup_logging(args.verbose)
    try:
        config = load_collector_config(args.config)
    except ConfigError as e:
        print(f"sensor-collector: config error: {e}", file=sys.stderr)
        return 2

    if args.command == "add-agent":
        from sensor_edge.server.commands import admin

        return admin.main(args, config)

    if args.command == "export":
        from sensor_edge.server.commands import export

        return export.main(args, config.storage)

    from sensor_edge.server.collector import Collector

    collector = Collector(config)
    return run_service("sensor-collector", collector.start, collector.stop,
                       startup_errors=(sqlite3.Error,))


if __name__ == "__main__":
    sys.exit(main())
