"""`sensor-agent`: run the Pi-side agent in the foreground."""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, load_agent_config
from ..config.logs import setup_logging
from ..config.service import run_service


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sensor-agent",
        description="Read GPIO and DHT sensors and stream the readings to a sensor-collector, "
                    "keeping every reading in a durable buffer until it is acknowledged.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="agent config (YAML)")
    p.add_argument("--mock", action="store_true",
                   help="use the mock hardware backend whatever the config says")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = load_agent_config(args.config)
    except ConfigError as e:
        print(f"sensor-agent: config error: {e}", file=sys.stderr)
        return 2

    from .agent import Agent

    agent = Agent(config, backend="mock" if args.mock else None)
    return run_service("sensor-agent", agent.start, agent.stop)


if __name__ == "__main__":
    sys.exit(main())
