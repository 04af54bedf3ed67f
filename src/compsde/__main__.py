"""``python -m compsde`` = the ``compsde`` command."""

import sys

from compsde.cli import main

sys.exit(main())
