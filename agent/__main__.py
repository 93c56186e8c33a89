"""`python -m sensor_edge.agent`: the same as the `sensor-agent` command."""

import sys

from sensor_edge.agent.cli import main

sys.exit(main())
