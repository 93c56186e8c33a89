"""`sensor-agent`: run the Pi-side agent in the foreground."""

from __future__ import annotations

import argparse
import sys

from sensor_edge.config import ConfigError, load_agent_config
from sensor_edge.runtime.logs import setup_logging
from sensor_edge.runtime.service import run_service
from sensor_edge.agent.probe import DEFAULT_READS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sensor-agent",
        usage="sensor-agent --config FILE [--mock] [--verbose]\n"
              "       sensor-agent probe --config FILE [--mock] [--reads N]",
        description="Read GPIO and DHT sensors and stream the readings to a sensor-collector, "
                    "keeping every reading in a durable buffer until it is acknowledged.",
    )
    # Not required here, so that `sensor-agent probe --config FILE` parses; main() checks it.
    p.add_argument("--config", metavar="FILE", help="agent config (YAML); required")
    p.add_argument("--mock", action="store_true",
                   help="use the mock hardware backend whatever the config says")
    p.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")
    commands = p.add_subparsers(dest="command", metavar="COMMAND",
                                description="without a command: run the agent")
    probe = commands.add_parser(
        "probe", prog="sensor-agent probe", help="check the wiring: read each sensor a few times and print a table",
        description="Read each configured sensor a few times and print a table (sensor, pin, "
                    "read time, failure rate, values or the error). Exits 1 if a sensor never "
                    "gave a good read. Stop the agent first: a pin has one user at a time.")
    probe.add_argument("--config", required=True, metavar="FILE", help="agent config (YAML)")
    probe.add_argument("--mock", action="store_true",
                       help="use the mock hardware backend whatever the config says")
    probe.add_argument("--reads", type=int, default=DEFAULT_READS, metavar="N",
                       help=f"reads per sensor (default {DEFAULT_READS})")
    probe.add_argument("--verbose", "-v", action="store_true", help="log debug messages too")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.config is None:
        p.error("the following arguments are required: --config")
    if args.command == "probe" and args.reads < 1:
        p.error("--reads must be at least 1")
    setup_logging(args.verbose)
    try:
        config = load_agent_config(args.config)
    except ConfigError as e:
        print(f"sensor-agent: config error: {e}", file=sys.stderr)
        return 2
    if args.command == "probe":
        from sensor_edge.agent.probe import run_probe

        return run_probe(config, "mock" if args.mock else config.backend, args.reads,
                         sys.stdout)

    from sensor_edge.agent.agent import Agent

    agent = Agent(config, backend="mock" if args.mock else None)
    return run_service("sensor-agent", agent.start, agent.stop, lambda: status_line(agent))


def status_line(agent) -> str:
    """The line `systemctl status sensor-agent` shows: are readings flowing?"""
    stats = agent.sampler.stats.values() if agent.sampler is not None else ()
    read = sum(s.good for s in stats)
    failed = sum(s.failed for s in stats)
    uplink = agent.uplink
    link = "connected" if uplink is not None and uplink.connected else "collector unreachable"
    sent = uplink.sent if uplink is not None else 0
    return f"{link}; {read} good reads ({failed} failed), {sent} readings sent"


if __name__ == "__main__":
    sys.exit(main())
