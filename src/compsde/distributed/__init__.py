"""Real distributed runs on torch.distributed (gloo on CPU, NCCL on CUDA), one worker per process.

* ``collectives`` — the exchange of a step over collectives (all-reduce for summable payloads,
  all-gather of serialised payloads otherwise), bytes counted per event;
* ``worker`` — one process's part of a series: the simulator's loop with ``held = [rank]``;
* ``launch`` — join a torchrun group or start N local processes, failure reporting, agreement of the
  ranks' settings;
* ``backend`` — a run of several series over one group: each rank's session, idle ranks,
  checkpoints and resume (``compsde run --backend torch`` hands it the series);
* ``checkpoint`` — atomic checkpoints of every rank's state;
* ``comm_hook`` — a DDP communication hook for your own PyTorch models;
* ``local_sgd`` — ``LocalSGD``: periodic parameter averaging (constant, post-local, QSR) around any
  optimizer, for your own training loops.

``compsde run CONFIG --backend torch`` (``compsde.experiments.torch_backend``) runs a whole experiment
this way and writes the simulator's files.
"""

from compsde.distributed.comm_hook import CompressionState, comm_hook
from compsde.distributed.local_sgd import LocalSGD

__all__ = ["CompressionState", "LocalSGD", "comm_hook"]
