"""Test-wide settings.

One intra-op thread per test process: the tests use small tensors, where thread hand-offs cost more
than they gain, and under ``pytest -n 2`` (one process per core) more threads would oversubscribe the
cores and make timings erratic.
"""

import torch

torch.set_num_threads(1)
