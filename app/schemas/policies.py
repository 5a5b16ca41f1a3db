"""Schemas of the policy commands: train-policy (with configs/sb3/*), eval-policy, train-vla, train-social.

Each field mirrors the key of the same name in ``configs/<command>.yaml`` (``configs/sb3/<algo>.yaml``
for ``PPOConfig`` and ``SACConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import BadValue, group, obs_key_names, require, setting, task_names

ALGOS = ("ppo", "sac")
ENVS = ("dream", "real")
REWARD_SOURCES = ("task", "learned")
VLA_TASKS = ("reach", "push")  # the tasks the VLA's instructions cover (``policies.vla.TRAIN_TEMPLATES``)


def _list(xs) -> str:
    return "[" + ",".join(str(x) for x in xs) + "]"


@dataclass
class PPOConfig:
    """``configs/sb3/ppo.yaml``"""

    algo: str = setting(choices=("ppo",))
    learning_rate: float = setting(gt=0)
    n_steps: int = setting(gt=0)
    batch_size: int = setting(gt=0)
    n_epochs: int = setting(gt=0)
    gamma: float = setting(ge=0, le=1)
    gae_lambda: float = setting(ge=0, le=1)
    clip_range: float = setting(gt=0)
    ent_coef: float = setting(ge=0)
    vf_coef: float = setting(ge=0)
    max_grad_norm: float = setting(gt=0)
    log_std_init: float = setting()
    net_arch: list[int] = setting(gt=0)


@dataclass
class SACConfig:
    """``configs/sb3/sac.yaml``"""

    algo: str = setting(choices=("sac",))
    learning_rate: float = setting(gt=0)
    buffer_size: int = setting(gt=0)
    learning_starts: int = setting(ge=0)
    batch_size: int = setting(gt=0)
    tau: float = setting(gt=0, le=1)
    gamma: float = setting(ge=0, le=1)
    train_freq: int = setting(gt=0)
    gradient_steps: int = setting(gt=0)
    ent_coef: Any = setting()  # "auto", "auto_0.1" or a number
    net_arch: list[int] = setting(gt=0)

    def check(self) -> None:
        e = self.ent_coef
        if isinstance(e, str) and e.startswith("auto"):
            return
        if isinstance(e, bool) or not isinstance(e, (int, float)) or e < 0:
            raise BadValue("sac.ent_coef", f"sac.ent_coef={e} is not allowed; give a number >= 0, auto or auto_<initial value>")


@dataclass
class TrainPolicyConfig:
    """``configs/train_policy.yaml``"""

    ppo: PPOConfig = group(PPOConfig)
    sac: SACConfig = group(SACConfig)
    env: str = setting(choices=ENVS)
    source_env: str | None = setting()  # a Gymnasium id: train on it (env=real) or on its dream (env=dream)
    env_kwargs: Any = setting()
    starts: str = setting()
    task: str = setting(choices=task_names)
    checkpoint: str | None = setting(exists=True)  # null: the shipped default
    algo: str = setting(choices=ALGOS)
    out: str | None = setting()
    steps: int = setting(gt=0)
    num_envs: int = setting(ge=1)
    obs_keys: list[str] = setting(choices=obs_key_names)
    seed: int = setting(ge=0)
    num_denoising_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    horizon: int | None = setting(gt=0)
    reward_source: str = setting(choices=REWARD_SOURCES)
    init: str | None = setting(exists=True)
    allow_pickle: bool = setting()
    restart: bool = setting()
    stats_steps: int = setting(gt=0)
    checkpoint_every: int = setting(gt=0)
    log_every: int = setting(gt=0)
    tb_name: str | None = setting()
    device: str = setting(device=True)
    num_threads: int = setting(ge=1)
    progress: bool = setting()
    path: str | None = setting()

    def check(self) -> None:
        require(self, "out", hint="give out=<run dir>, e.g. `dreamgym train-policy out=runs/ppo`")
        if self.env_kwargs is not None and not isinstance(self.env_kwargs, dict):
            raise BadValue("env_kwargs", f"env_kwargs={self.env_kwargs!r} is not a mapping; write it as 'env_kwargs={{g:9.81}}'")
        if self.env_kwargs and not self.source_env:
            raise BadValue("env_kwargs", "env_kwargs are passed to gym.make and need source_env=<a Gymnasium id>")
        if not self.obs_keys:
            raise BadValue("obs_keys", "obs_keys=[] gives the policy nothing to read; e.g. obs_keys=[task_obs]")


@dataclass
class EvalPolicyConfig:
    """``configs/eval_policy.yaml``"""

    policy: str | None = setting()
    allow_pickle: bool = setting()
    env: str = setting(choices=ENVS)
    source_env: str | None = setting()
    env_kwargs: Any = setting()
    task: str = setting(choices=task_names)
    episodes: int = setting(gt=0)
    seed: int = setting(ge=0)
    max_worlds: int = setting(ge=1)
    deterministic: bool = setting()
    checkpoint: str | None = setting(exists=True)  # null: the shipped default
    num_denoising_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    device: str = setting(device=True)
    num_threads: int = setting(ge=1)
    progress: bool = setting()
    out: str | None = setting()
    path: str | None = setting()

    def check(self) -> None:
        require(self, "policy", "path", hint="give policy=<checkpoint | expert | random>, e.g. `dreamgym eval-policy expert`")


@dataclass
class TrainVLADreamHorizon:
    """``dream_horizon:`` of ``configs/train_vla.yaml``: dreamed steps per episode, per task."""

    reach: int = setting(gt=0)
    push: int = setting(gt=0)


@dataclass
class TrainVLAConfig:
    """``configs/train_vla.yaml``"""

    out: str = setting()
    seed: int = setting(ge=0)
    init: str | None = setting(exists=True)
    num_threads: int = setting(ge=1)
    tasks: list[str] = setting(choices=VLA_TASKS)
    resolution: int = setting(ge=8, le=1024)
    num_envs: int = setting(ge=1)
    rounds: int = setting(ge=0)
    steps_per_round: int = setting(gt=0)
    expert_noise: float = setting(ge=0)
    dagger_policy_fraction: float = setting(ge=0, le=1)
    updates_per_round: int = setting(ge=0)
    batch: int = setting(gt=0)
    lr: float = setting(gt=0)
    aux_weight: float = setting(ge=0)
    world_model: str | None = setting(exists=True)
    dream_tasks: list[str] = setting(choices=VLA_TASKS)
    dream_envs: int = setting(ge=1)
    dream_group: int = setting(ge=1)
    dream_iterations: int = setting(ge=0)
    dream_horizon: TrainVLADreamHorizon = group(TrainVLADreamHorizon)
    dream_advantage: str = setting(choices=("reward_to_go", "episode"))
    dream_denoising_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    dream_init_noise: float | None = setting(ge=0)
    dream_noise: float = setting(ge=0)
    awr_temperature: float = setting(gt=0)
    awr_max_weight: float = setting(gt=0)
    dream_updates: int = setting(ge=0)
    dream_lr: float = setting(gt=0)
    dream_bc_weight: float = setting(ge=0)

    def check(self) -> None:
        if not self.tasks:
            raise BadValue("tasks", "tasks=[] trains on nothing; e.g. tasks=[reach,push]")
        missing = [t for t in self.dream_tasks if t not in self.tasks]
        if missing:
            raise BadValue(
                "dream_tasks",
                f"dream_tasks={_list(self.dream_tasks)} dreams {_list(missing)}, which tasks={_list(self.tasks)} does not clone; "
                "add it to tasks (the dream's BC anchor needs its samples) or drop it from dream_tasks",
            )
        if self.dream_envs % self.dream_group:
            raise BadValue("dream_group", f"dream_envs={self.dream_envs} is not a multiple of dream_group={self.dream_group}; make it one")


@dataclass
class TrainSocialConfig:
    """``configs/train_social.yaml``"""

    out: str = setting()
    seed: int = setting(ge=0)
    num_threads: int = setting(ge=1)
    num_envs: int = setting(ge=1)
    batches: int = setting(gt=0)
    train_seed_base: int = setting(ge=0)
    eval_seed_base: int = setting(ge=0)
    eval_scenes: int = setting(gt=0)
    expert_noise: float = setting(ge=0)
    codebook: int = setting(gt=1)
    context: int = setting(gt=0)
    vq_updates: int = setting(ge=0)
    inv_updates: int = setting(ge=0)
    gen_updates: int = setting(ge=0)
    fe_updates: int = setting(ge=0)
    heading_head: bool = setting()
    heading_weight: float = setting(ge=0)
    scene_objects: bool = setting()
    pointer_weight: float = setting(ge=0)
    init: str | None = setting(exists=True)
    world_model: str | None = setting(exists=True)
    dream_iterations: int = setting(ge=0)
    dream_envs: int = setting(ge=1)
    dream_group: int = setting(ge=1)
    dream_seed_base: int = setting(ge=0)
    dream_rooms: int = setting(ge=1)
    dream_context_policy: str = setting(choices=("noisy_expert", "expert", "random", "still"))
    dream_temperature: float = setting(gt=0)
    dream_heading_noise: float = setting(ge=0)
    dream_pointer_temperature: float = setting(gt=0)
    dream_gamma: float = setting(ge=0, le=1)
    awr_temperature: float = setting(gt=0)
    awr_max_weight: float = setting(gt=0)
    dream_updates: int = setting(ge=0)
    dream_batch: int = setting(ge=1)
    dream_lr: float = setting(gt=0)
    dream_anchor_weight: float = setting(ge=0)
    dream_checks: str = setting(choices=("simulator", "body"))
    dream_token_weight: float = setting(ge=0)

    def check(self) -> None:
        if self.dream_envs % self.dream_group:
            raise BadValue("dream_group", f"dream_envs={self.dream_envs} is not a multiple of dream_group={self.dream_group}; make it one")
        if self.world_model is not None and self.dream_seed_base + self.dream_rooms > self.eval_seed_base:
            raise BadValue(
                "dream_seed_base",
                f"dream_seed_base={self.dream_seed_base} + dream_rooms={self.dream_rooms} reaches the held-out rooms "
                f"(eval_seed_base={self.eval_seed_base} on); the dream starts in training rooms below it",
            )
        if self.scene_objects and not self.heading_head:
            raise BadValue("scene_objects", "scene_objects=true needs heading_head=true; set both, or scene_objects=false")
