import sys

from sensor_edge.agent.cli import main

sys.exit(main())
