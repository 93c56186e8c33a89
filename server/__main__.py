"""`python -m sensor_edge.server`: the same as the `sensor-collector` command."""

import sys

from sensor_edge.server.commands.cli import main

sys.exit(main())
