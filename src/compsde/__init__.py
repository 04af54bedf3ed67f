"""compsde: distributed training with communication compression, and the SDEs that model it.

The public API (see the README's Python section)::

    from compsde import algorithms, compressors, objectives, sde, sim
    from compsde.objectives import Noise, Oracle, problems
    from compsde.algorithms import Schedule

* ``compressors`` — compression operators with their theory declared as data, and payloads;
* ``optim`` — gradient transformations with state (momentum, weight decay, normalisation);
* ``algorithms`` — distributed algorithms (one step: workers' half, exchange, server's half) and
  learning-rate schedules;
* ``optimizers`` — the named optimizers' recipes (SignSGD, Signum, RMSprop, Adam, SAM, game methods), one
  file each: hyperparameters, transforms, plain forms and SDE models;
* ``objectives`` — gradient oracles: problems, noise models, data loaders;
* ``sim`` — N simulated workers × R repetitions (``simulate``) and the reference loop;
* ``sde`` — SDE models, integrators, tracking, scaling rules;
* ``distributed`` — torch.distributed: collectives, one worker per process, the DDP comm hook;
* ``experiments`` — configs, presets, the runner, plots and the ``compsde`` command.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("compsde")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

from compsde import algorithms, compressors, objectives, optim, optimizers, sde, sim  # noqa: E402
from compsde.algorithms.schedules import Schedule  # noqa: E402
from compsde.objectives import Noise, Oracle, problems  # noqa: E402
from compsde.sde import simulate_sde, tracking_error  # noqa: E402
from compsde.sim import simulate, simulate_reference  # noqa: E402

__all__ = ["Noise", "Oracle", "Schedule", "__version__", "algorithms", "compressors", "objectives", "optim", "optimizers", "problems",
           "sde", "sim", "simulate", "simulate_reference", "simulate_sde", "tracking_error"]
