"""``python -m compsde`` = the ``compsde`` command."""

import sys

from compsde.experiments.cli import main

sys.exit(main())
