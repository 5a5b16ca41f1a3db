"""One structured config (a dataclass) per command, the YAML of ``configs/`` merged onto it.

``SCHEMAS`` maps a config name (``configs/<name>.yaml``) to its schema, imported when used so that
one command does not import every package. ``dreamgym.configs.compose(name, overrides,
schema=schema_of(name))`` refuses a wrong type or an unknown key by name; ``check`` then runs the
range and path rules (``fields.validate``) on the merged values.

Adding a key to a YAML file is one line in its schema here: ``name: type = setting(rules)``.
"""

from __future__ import annotations

import importlib

from omegaconf import DictConfig, OmegaConf

from dreamgym.configs import UserError

from .fields import BadValue, validate

# config name -> "module:class" under dreamgym.app.schemas
SCHEMAS: dict[str, str] = {
    "collect": "data:CollectConfig",
    "dataset": "data:DatasetConfig",
    "video": "data:VideoConfig",
    "export": "data:ExportConfig",
    "view": "data:ViewConfig",
    "train_wm": "worldmodel:TrainWmConfig",
    "eval_wm": "worldmodel:EvalWmConfig",
    "train_probe": "probe:TrainProbeConfig",
    "train_policy": "policies:TrainPolicyConfig",
    "eval_policy": "policies:EvalPolicyConfig",
    "train_vla": "policies:TrainVLAConfig",
    "train_social": "policies:TrainSocialConfig",
    "demo": "top:DemoConfig",
    "diamond": "top:DiamondConfig",
    "avatar_demo": "top:AvatarDemoConfig",
    "live": "top:LiveConfig",
    "bench/live": "bench:BenchLiveConfig",
    "bench/env": "bench:BenchEnvConfig",
    "bench/collect": "bench:BenchCollectConfig",
    "bench/loader": "bench:BenchLoaderConfig",
    "bench/wm": "bench:BenchWmConfig",
    "bench/dream": "bench:BenchDreamConfig",
    "bench/push": "bench:BenchPushConfig",
    "bench/vla": "bench:BenchVLAConfig",
    "bench/transfer": "bench:BenchTransferConfig",
    "bench/verdict": "bench:BenchVerdictConfig",
    "bench/gym": "bench:BenchGymConfig",
    "bench/gym_verdict": "bench:BenchGymVerdictConfig",
    "bench/reliability": "bench:BenchReliabilityConfig",
    "bench/social": "bench:BenchSocialConfig",
}

__all__ = ["SCHEMAS", "BadValue", "check", "schema_of"]


def schema_of(config_name: str) -> type | None:
    """The schema of ``configs/<config_name>.yaml`` (None: it has none)."""
    target = SCHEMAS.get(config_name)
    if target is None:
        return None
    module, name = target.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def check(cfg: DictConfig) -> None:
    """Run every field's rules and every ``check()`` on a config composed with its schema.

    Building the schema objects also runs the ``__post_init__`` checks of nested dataclasses that
    have them (the world model's config); their ``ValueError`` becomes a ``UserError``.
    """
    try:
        obj = OmegaConf.to_object(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None
    validate(obj)
