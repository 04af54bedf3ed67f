"""Experiments: configuration (TOML files, presets, ``--set`` overrides) turned into objects in one
place, the runner that writes a run's files, the plots, and the command line."""
