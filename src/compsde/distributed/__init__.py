"""Real distributed runs on torch.distributed (gloo on CPU), one worker per process.

* ``run(config, out_dir, workers=N)`` — the torch backend of ``compsde run CONFIG --backend torch
  --workers N``: starts N local gloo processes, or joins the group ``torchrun`` describes, and
  produces the simulator's iterates and output files (``compsde.distributed.backend``).
* ``comm_hook(compressor, ...)`` — a DDP communication hook for your own PyTorch models
  (``compsde.distributed.comm_hook``).
* ``wire`` (the formats on the wire, one codec per compressor family), ``collectives`` (all-reduce
  for summable payloads, all-gather otherwise, bytes counted), ``worker`` (one process's loop),
  ``launch`` (process groups), ``checkpoint`` (atomic checkpoints with EF memory and generator states).
"""

from compsde.distributed.backend import RunResult, run
from compsde.distributed.comm_hook import CompressionState, comm_hook

__all__ = ["CompressionState", "RunResult", "comm_hook", "run"]
