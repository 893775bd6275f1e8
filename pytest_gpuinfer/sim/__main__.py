"""``python -m pytest_gpuinfer.sim``: run the simulator until SIGTERM or SIGINT."""

import sys

from pytest_gpuinfer.sim.launch import main

sys.exit(main())
