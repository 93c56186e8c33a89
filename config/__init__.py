"""How both programs are set up: config files, logging, the service manager."""

from sensor_edge.config.loader import ConfigError, load_agent_config, load_collector_config
from sensor_edge.config.model import AgentConfig, CollectorConfig, SensorConfig

__all__ = [
    "AgentConfig",
    "CollectorConfig",
    "ConfigError",
    "SensorConfig",
    "load_agent_config",
    "load_collector_config",
]
