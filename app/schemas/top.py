"""Schemas of the commands that assemble the rest: demo, diamond, avatar-demo.

Each field mirrors the key of the same name in ``configs/<command>.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .data import check_policy_mix
from .fields import BadValue, behaviour_names, group, obs_key_names, require, setting, task_names, validate_keys
from .policies import ALGOS, REWARD_SOURCES, PPOConfig, SACConfig


@dataclass
class DemoStageOverrides:
    """``overrides:`` of ``configs/demo.yaml``: extra ``key=value`` arguments per stage command."""

    collect: list[str] = setting()
    train_wm: list[str] = setting()
    eval_wm: list[str] = setting()
    train_policy: list[str] = setting()

    def check(self) -> None:
        from omegaconf import OmegaConf

        from dreamgym.configs import UserError, compose

        from . import schema_of

        # each stage command's keys, types and the rules of the values given, checked now rather
        # than when the stage starts (the stage's own keys, e.g. out=, come from the demo)
        for stage in ("collect", "train_wm", "eval_wm", "train_policy"):
            given = list(getattr(self, stage))
            try:
                cfg = compose(stage, given, schema=schema_of(stage))
                validate_keys(OmegaConf.to_object(cfg), [a.split("=", 1)[0] for a in given])
            except UserError as e:
                raise BadValue(f"overrides.{stage}", f"overrides.{stage}: {e}") from None


@dataclass
class DemoConfig:
    """``configs/demo.yaml``"""

    out: str = setting()
    task: str = setting(choices=task_names)
    tasks: list[str] = setting(choices=task_names)
    seed: int = setting(ge=0)
    resolution: int = setting(ge=8, le=1024)
    video_scale: int = setting(ge=1)
    collect_steps: int = setting(gt=0)
    num_envs: int = setting(ge=1)
    behaviour: str = setting()
    wm_resolution: int = setting(ge=8, le=1024)
    wm_init: str | None = setting(exists=True, keywords=("default",))
    wm_steps: int = setting(ge=0)
    eval_wm_starts: int = setting(gt=0)
    policy_steps: int = setting(gt=0)
    policy_envs: int = setting(ge=1)
    eval_episodes: int = setting(gt=0)
    overrides: DemoStageOverrides = group(DemoStageOverrides)
    path: str | None = setting()

    def check(self) -> None:
        check_policy_mix("behaviour", self.behaviour)


@dataclass
class DiamondWm:
    """``wm:`` of ``configs/diamond.yaml``: the world-model update of each iteration."""

    steps: int = setting(gt=0)
    batch_size: int = setting(gt=0)
    lr: float = setting(gt=0)
    ema_decay: float = setting(ge=0, lt=1)


@dataclass
class DiamondConfig:
    """``configs/diamond.yaml``"""

    ppo: PPOConfig = group(PPOConfig)
    sac: SACConfig = group(SACConfig)
    task: str = setting(choices=task_names)
    env: str | None = setting()  # a Gymnasium id: the loop on that env (policies.gym_diamond)
    env_kwargs: Any = setting()
    gym_wm_steps: int = setting(gt=0)
    budget: int = setting(gt=0)
    out: str | None = setting()
    checkpoint: str | None = setting(exists=True)
    seed: int = setting(ge=0)
    collect_steps: int = setting(gt=0)
    collect_envs: int = setting(ge=1)
    first_policy: str = setting()
    exploration_noise: float = setting(ge=0)
    wm: DiamondWm = group(DiamondWm)
    policy_steps: int = setting(gt=0)
    algo: str = setting(choices=ALGOS)
    num_envs: int = setting(ge=1)
    obs_keys: list[str] = setting(choices=obs_key_names)
    num_denoising_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    horizon: int | None = setting(gt=0)
    reward_source: str = setting(choices=REWARD_SOURCES)
    stats_steps: int = setting(gt=0)
    checkpoint_every: int = setting(gt=0)
    eval_episodes: int = setting(ge=0)
    device: str = setting(device=True)
    num_threads: int = setting(ge=1)
    progress: bool = setting()
    path: str | None = setting()

    def check(self) -> None:
        require(self, "out", hint="give out=<run dir>, e.g. `dreamgym diamond out=runs/diamond`")
        if not self.obs_keys:
            raise BadValue("obs_keys", "obs_keys=[] gives the policy nothing to read; e.g. obs_keys=[task_obs]")


@dataclass
class AvatarDemoConfig:
    """``configs/avatar_demo.yaml``"""

    out: str = setting()
    checkpoint: str = setting(exists=True, keywords=("default",))
    num_threads: int = setting(ge=1)
    conversation: list[str] = setting(choices=behaviour_names)
    segment: int = setting(gt=0)
    steps: int = setting(gt=0)
    room_seed: int = setting(ge=0)
    scenes: int = setting(gt=0)

    def check(self) -> None:
        if not self.conversation:
            raise BadValue("conversation", "conversation=[] has nothing to respond to; e.g. conversation=[wave,point]")


@dataclass
class LiveConfig:
    """``configs/live.yaml``"""

    host: str = setting()
    port: int = setting(ge=0, le=65535)
    secure: bool | None = setting()
    cert_dir: str = setting()
    backend: str = setting(choices=("sim", "dream"))
    physics: str = setting(choices=("mujoco", "warp"))
    room_seed: int = setting(ge=0)
    avatar: str | None = setting(exists=True)
    world_model: str | None = setting(exists=True)
    save: str | None = setting()
    log: str | None = setting()
    gesture_words: bool = setting()
    threads: int = setting(ge=1)
