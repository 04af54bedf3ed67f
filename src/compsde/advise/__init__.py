"""Advice for a user's own model: which communication method to train it with.

* ``cost`` — the cost model: predicted seconds per training step for each method on a model and link.
"""

from compsde.advise.cost import (
    Codec,
    Compute,
    Link,
    StepPrediction,
    ddp_buckets,
    measure_codec,
    measure_compute,
    measure_hook_overhead,
    predict_step_seconds,
)

__all__ = ["Codec", "Compute", "Link", "StepPrediction", "ddp_buckets", "measure_codec", "measure_compute",
           "measure_hook_overhead", "predict_step_seconds"]
