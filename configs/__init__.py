"""Hydra configs shipped with the package: one file per command, groups per concern."""
