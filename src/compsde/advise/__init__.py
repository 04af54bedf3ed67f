"""Advice on distributed training with compression: measure a model's gradient noise (``probe``), predict
each method's step time and quality, and recommend one."""

from compsde.advise.probe import NoiseProbe, plot_probe, probe_model, probe_oracle, tail_index

__all__ = ["NoiseProbe", "plot_probe", "probe_model", "probe_oracle", "tail_index"]
