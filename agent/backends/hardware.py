"""The real thing: gpiozero's default pin factory, adafruit_dht, sysfs."""

from __future__ import annotations

from ...config.model import SensorConfig
from ...config.service import StartupError
from . import CPU_TEMPERATURE_FILE, Backend, DHTDevice


class HardwareBackend(Backend):
    name = "hardware"

    def dht(self, sensor: SensorConfig) -> DHTDevice:
        # Imported here, not at the top: off a Pi, Blinka's board detection warns
        # or raises, and on a Pi it costs start-up time when no DHT is configured.
        try:
            import adafruit_dht
            import board
        except ImportError:
            raise StartupError(
                f"sensor {sensor.name!r}: reading a {sensor.type} needs the adafruit DHT "
                "library: pip install 'sensor-edge[dht]'"
            ) from None
        except (NotImplementedError, RuntimeError) as e:
            raise StartupError(f"sensor {sensor.name!r}: no usable GPIO board here: {e}") from None
        pin = getattr(board, f"D{sensor.pin}", None)
        if pin is None:
            raise StartupError(f"sensor {sensor.name!r}: this board has no pin D{sensor.pin}")
        cls = adafruit_dht.DHT22 if sensor.type == "dht22" else adafruit_dht.DHT11
        return cls(pin)

    def cpu_temperature(self) -> float:
        with open(CPU_TEMPERATURE_FILE) as f:
            return int(f.read().strip()) / 1000.0
