"""Hydra configs shipped with the package: one file per command, groups per concern."""

from __future__ import annotations

from omegaconf import DictConfig


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides (``key=value``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise SystemExit(f"dreamgym: overrides must look like key=value, got {bad}")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="dreamgym.configs", version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)
