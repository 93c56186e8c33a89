"""`sensor-collector`: run the collector in the foreground."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, load_collector_config
from ..config.logs import setup_logging
from ..config.service import run_service


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sensor-collector",
        description="Receive readings from sensor agents over WebSockets, store them, "
                    "and serve them back (API, dashboard, metrics).",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="collector config (YAML)")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = load_collector_config(args.config)
    except ConfigError as e:
        print(f"sensor-collector: config error: {e}", file=sys.stderr)
        return 2

    from .collector import Collector

    collector = Collector(config)
    return run_service("sensor-collector", collector.start, collector.stop)


if __name__ == "__main__":
    sys.exit(main())
