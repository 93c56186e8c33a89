import sys

from sensor_edge.server.commands.cli import main

sys.exit(main())
