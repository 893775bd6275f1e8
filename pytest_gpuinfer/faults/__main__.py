"""``python -m pytest_gpuinfer.faults``: the fault proxy process."""

import sys

from pytest_gpuinfer.faults.proxy import main

sys.exit(main())
