"""Entry point of a rank of ``compsde.advise.ranks.measure_series``: ``python -m compsde.advise._ranks_child JOBFILE``.

A module of its own (not imported by the package) so that ``-m`` runs it without the runpy
warning about a module already imported by its package.
"""

import sys

from compsde.advise.ranks import rank_main
from compsde.distributed.backend import child_main

if __name__ == "__main__":
    child_main(sys.argv[1], rank_main)
