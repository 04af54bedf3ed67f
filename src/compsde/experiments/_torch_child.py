"""Entry point of a locally launched rank: ``python -m compsde.experiments._torch_child JOBFILE``.

A module of its own (not imported by the package) so that ``-m`` runs it without the runpy
warning about a module already imported by its package.
"""

import sys

from compsde.experiments.torch_backend import _child_main

if __name__ == "__main__":
    _child_main(sys.argv[1])
