"""Schemas of ``dreamgym bench <what>``: one per ``configs/bench/<what>.yaml``, field for key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import COMPRESSIONS, check_policy_mix
from .fields import BadValue, group, obs_key_names, setting, task_names
from .policies import PPOConfig, SACConfig
from .top import DiamondWm


def _nonempty(name: str, values: list[Any], example: str) -> None:
    if not values:
        raise BadValue(name, f"{name}=[] measures nothing; e.g. {name}={example}")


@dataclass
class BenchEnvConfig:
    """``configs/bench/env.yaml``"""

    out: str | None = setting()
    task: str = setting(choices=task_names)
    resolution: int = setting(ge=8, le=1024)
    obs_keys: list[str] | None = setting(choices=obs_key_names)
    batch_sizes: list[int] = setting(ge=1)
    async_workers: int = setting(ge=0)
    humanoid: bool = setting()
    humanoid_env: str = setting()
    repeats: int = setting(ge=3)
    warmup_calls: int = setting(ge=0)
    measure_seconds: float = setting(ge=0)
    min_calls: int = setting(ge=1)
    seed: int = setting(ge=0)
    threads: int = setting(ge=1)
    single_threads: int = setting(ge=1)
    path: str | None = setting()


@dataclass
class BenchCollectConfig:
    """``configs/bench/collect.yaml``"""

    out: str | None = setting()
    task: str = setting(choices=task_names)
    num_envs: int = setting(ge=1)
    resolution: int = setting(ge=8, le=1024)
    rounds: int = setting(gt=0)
    round_steps: int = setting(gt=0)
    warmup_steps: int = setting(ge=0)
    seed: int = setting(ge=0)
    threads: int = setting(ge=1)
    policy: Any = setting()
    noise: float = setting(ge=0)
    shard_episodes: int = setting(gt=0)
    queue_episodes: int = setting(gt=0)
    compression: str | None = setting(choices=COMPRESSIONS)
    compression_level: int | None = setting(ge=0, le=9)
    image_chunk_steps: int = setting(gt=0)
    work_dir: str | None = setting(exists=True)
    path: str | None = setting()

    def check(self) -> None:
        check_policy_mix("policy", self.policy)


@dataclass
class LoaderDataset:
    """``dataset:`` of ``configs/bench/loader.yaml``: what to collect when no ``path`` is given."""

    out: str = setting()
    task: str = setting(choices=task_names)
    num_envs: int = setting(ge=1)
    steps: int = setting(gt=0)
    resolution: int = setting(ge=8, le=1024)
    round_steps: int = setting(gt=0)
    seed: int = setting(ge=0)


@dataclass
class BenchLoaderConfig:
    """``configs/bench/loader.yaml``"""

    out: str | None = setting()
    path: str | None = setting(exists=True)
    dataset: LoaderDataset = group(LoaderDataset)
    context: int = setting(ge=1)
    horizon: int = setting(ge=1)
    batch_size: int = setting(gt=0)
    num_workers: int = setting(ge=0)
    in_memory: bool = setting()
    repeats: int = setting(ge=3)
    warmup_calls: int = setting(ge=0)
    measure_seconds: float = setting(ge=0)
    min_calls: int = setting(ge=1)
    single_process_windows: int = setting(gt=0)
    threads: int = setting(ge=1)


@dataclass
class BenchWmConfig:
    """``configs/bench/wm.yaml``"""

    out: str | None = setting()
    checkpoint: str | None = setting(exists=True)
    resolution: int = setting(ge=8, le=1024)
    task: str = setting(choices=task_names)
    batch_sizes: list[int] = setting(ge=1)
    num_steps: list[int] = setting(gt=0)
    train_batch_size: int = setting(gt=0)
    repeats: int = setting(ge=3)
    warmup_calls: int = setting(ge=0)
    measure_seconds: float = setting(ge=0)
    min_calls: int = setting(ge=1)
    sim_baseline: bool = setting()
    seed: int = setting(ge=0)
    device: str = setting(device=True)
    threads: int = setting(ge=1)
    path: str | None = setting()


@dataclass
class BenchDreamConfig:
    """``configs/bench/dream.yaml``"""

    out: str | None = setting()
    checkpoint: str | None = setting(exists=True)
    resolution: int = setting(ge=8, le=1024)
    task: str = setting(choices=task_names)
    batch_sizes: list[int] = setting(ge=1)
    num_denoising_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    precisions: list[str] | None = setting(choices=("float32", "bfloat16"))  # extra dream arms; null: float32 beside a reduced own
    frames: bool = setting()
    repeats: int = setting(ge=3)
    warmup_calls: int = setting(ge=0)
    measure_seconds: float = setting(ge=0)
    min_calls: int = setting(ge=1)
    seed: int = setting(ge=0)
    threads: int = setting(ge=1)
    path: str | None = setting()


@dataclass
class BenchPushConfig:
    """``configs/bench/push.yaml``"""

    out: str | None = setting()
    checkpoints: list[Any] = setting()
    policy: str = setting()
    num_envs: int = setting(ge=1)
    steps: int = setting(gt=0)
    horizon: int = setting(gt=0)
    stride: int = setting(gt=0)
    seed: int = setting(ge=0)
    threads: int = setting(ge=1)
    path: str | None = setting()


@dataclass
class BenchVLAMaxSteps:
    """``max_steps:`` of ``configs/bench/vla.yaml``: steps per evaluation episode, per task."""

    reach: int = setting(gt=0)
    push: int = setting(gt=0)


@dataclass
class BenchVLATarget:
    """``target:`` of ``configs/bench/vla.yaml``: the gain over BC a task must show, and its significance."""

    min_gain: float = setting(ge=-1, le=1)
    alpha: float = setting(gt=0, le=1)


@dataclass
class BenchVLAConfig:
    """``configs/bench/vla.yaml``"""

    checkpoint: str = setting(exists=True)
    out: str | None = setting()
    seed: int = setting(ge=0)
    num_threads: int = setting(ge=1)
    tasks: list[str] = setting(choices=("reach", "push"))
    episodes_per_condition: int = setting(gt=0)
    reference_episodes: int = setting(ge=0)
    max_worlds: int = setting(ge=1)
    room_seed_base: int = setting(ge=0)
    max_steps: BenchVLAMaxSteps = group(BenchVLAMaxSteps)
    bootstrap_resamples: int = setting(ge=1)
    target: BenchVLATarget = group(BenchVLATarget)

    def check(self) -> None:
        _nonempty("tasks", self.tasks, "[reach,push]")
        if self.reference_episodes > self.episodes_per_condition:
            raise BadValue(
                "reference_episodes",
                f"reference_episodes={self.reference_episodes} is more than episodes_per_condition={self.episodes_per_condition}; "
                "the references play the first train_phrasing rooms, so give at most as many",
            )


def _context_policies() -> tuple[str, ...]:
    from dreamgym.worldmodel.starts import CONTEXT_POLICIES

    return CONTEXT_POLICIES


@dataclass
class TransferEnvs:
    """``num_envs:`` of ``configs/bench/transfer.yaml``: worlds per training env."""

    dream: int = setting(ge=1)
    real: int = setting(ge=1)


@dataclass
class TransferTargets:
    """``targets:`` of ``configs/bench/transfer.yaml``."""

    over_real_n: float = setting(ge=0)
    over_real_10n: float = setting(ge=0)
    real_10n_inputs: dict[str, Any] = setting()


@dataclass
class TransferDiamond:
    """``diamond:`` of ``configs/bench/transfer.yaml``: the DIAMOND-style loop arm."""

    budget: int = setting(gt=0)
    collect_steps: int = setting(gt=0)
    collect_envs: int = setting(ge=1)
    exploration_noise: float = setting(ge=0)
    policy_steps: int | None = setting(gt=0)
    wm: DiamondWm = group(DiamondWm)


@dataclass
class BenchTransferConfig:
    """``configs/bench/transfer.yaml``"""

    ppo: PPOConfig = group(PPOConfig)
    out: str | None = setting()
    run_dir: str = setting()
    reuse: bool = setting()
    tasks: list[str] = setting()
    inputs: list[str] = setting()
    obs_keys: dict[str, Any] = setting()
    only_arms: list[str] | None = setting()
    scale: float = setting(gt=0)
    checkpoint: str | None = setting(exists=True)
    wm_data_steps: int = setting(ge=0)
    dream_steps: int = setting(gt=0)
    per_task: dict[str, Any] = setting()
    real_multiplier: int = setting(ge=1)
    diamond: TransferDiamond = group(TransferDiamond)
    num_envs: TransferEnvs = group(TransferEnvs)
    num_denoising_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    checkpoint_every: int = setting(gt=0)
    eval_episodes: int = setting(gt=0)
    eval_max_worlds: int = setting(ge=1)
    eval_max_steps: int | None = setting(ge=2)  # the dream's K-1 = 1 context step and at least one dreamed step
    eval_seed: int = setting(ge=0)
    value_gap_episodes: int = setting(gt=0)
    context_policy: str = setting(choices=_context_policies)
    bootstrap: int = setting(gt=0)
    regime_alpha: float = setting(gt=0, lt=1)
    targets: TransferTargets = group(TransferTargets)
    seed: int = setting(ge=0)
    threads: int = setting(ge=1)
    progress: bool = setting()
    path: str | None = setting()

    def check(self) -> None:
        from dreamgym.benchmarks.transfer import TransferConfigError, check_config

        try:
            check_config(self)
        except TransferConfigError as e:
            raise BadValue(e.key, str(e)) from None


@dataclass
class BenchReliabilityConfig:
    """``configs/bench/reliability.yaml``"""

    out: str | None = setting()
    workdir: str | None = setting()
    cases: list[str] | None = setting()
    path: str | None = setting()


def _check_policy_specs(name: str, specs: dict[str, Any], builtins: bool, tasks: list[str]) -> None:
    """Each of ``specs`` (name -> spec, or for the ladder name -> task -> spec, covering ``tasks``)
    a built-in policy (when ``builtins``) or an existing path."""
    flat = {}
    for key, spec in specs.items():
        if builtins and isinstance(spec, dict):
            missing = [t for t in tasks if t not in spec]
            if missing:
                raise BadValue(f"{name}.{key}", f"{name}.{key} gives no spec for {missing}; give one per task, or one spec for all")
            flat |= {f"{key}.{t}": s for t, s in spec.items()}
        else:
            flat[key] = spec
    _check_specs(name, flat, builtins)


def _check_specs(name: str, specs: dict[str, Any], builtins: bool) -> None:
    from dreamgym.policies.base import load_policy

    for key, spec in specs.items():
        where = f"{name}.{key}"
        if not isinstance(spec, str) or not spec:
            raise BadValue(where, f"{where}={spec!r} is not a policy; give expert[:noise=X], random[:hold=N] or a checkpoint path")
        if spec.split(":")[0] in ("expert", "random"):
            if not builtins:
                raise BadValue(where, f"{where}={spec}: extra_policies are trained checkpoints; put built-ins in policies")
            try:
                load_policy(spec)
            except ValueError as e:
                raise BadValue(where, f"{where}={spec}: {e}") from None
        elif not Path(spec).exists():
            also = " or a built-in (expert[:noise=X], random[:hold=N])" if builtins else ""
            raise BadValue(where, f"{where}={spec}: no such file or directory; give a train-policy run folder{also}")


@dataclass
class BenchVerdictConfig:
    """``configs/bench/verdict.yaml``"""

    out: str | None = setting()
    tasks: list[str] = setting(choices=task_names)
    policies: dict[str, Any] = setting()
    extra_policies: dict[str, Any] = setting()
    only: list[str] | None = setting()
    episodes: int = setting(gt=0)
    max_steps: dict[str, Any] = setting()
    seed: int = setting(ge=0)
    checkpoint: str | None = setting(exists=True)
    context_policy: str = setting(choices=_context_policies)
    num_denoising_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    max_worlds: int = setting(ge=1)
    bootstrap: int = setting(gt=0)
    target: float = setting(ge=-1, le=1)
    threads: int = setting(ge=1)
    progress: bool = setting()
    path: str | None = setting()

    def check(self) -> None:
        _nonempty("tasks", self.tasks, "[reach,push]")
        _check_policy_specs("policies", dict(self.policies), builtins=True, tasks=self.tasks)
        _check_policy_specs("extra_policies", dict(self.extra_policies), builtins=False, tasks=self.tasks)
        for task, cap in self.max_steps.items():
            if task not in task_names():
                raise BadValue(f"max_steps.{task}", f"max_steps.{task}: no such task; choose from {', '.join(task_names())}")
            # >= 2: the dream's K-1 = 1 context step and at least one dreamed step
            if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 2):
                raise BadValue(f"max_steps.{task}", f"max_steps.{task}={cap}: expected a whole number >= 2, or null for the task's own")
        both = sorted(set(self.policies) & set(self.extra_policies))
        if both:
            raise BadValue("extra_policies", f"extra_policies: {both} are named in policies too; give each policy one name")
        names = [*self.policies, *self.extra_policies]
        unknown = sorted(set(self.only or ()) - set(names))
        if unknown:
            raise BadValue("only", f"only: {unknown} are not named in policies or extra_policies; choose from {', '.join(names)}")
        n = len(set(self.only)) if self.only is not None else len(names)
        if n < 3:
            raise BadValue("only" if self.only is not None else "policies", f"{n} policies chosen; a rank correlation needs at least 3")


@dataclass
class BenchSocialConfig:
    """``configs/bench/social.yaml``"""

    checkpoint: str = setting(exists=True)
    baseline: str = setting(exists=True)
    out: str | None = setting()
    seed: int = setting(ge=0)
    num_threads: int = setting(ge=1)
    scenes: int = setting(gt=0)
    room_seed_base: int = setting(ge=0)
    max_worlds: int = setting(ge=1)
    bootstrap_resamples: int = setting(ge=1)
    dream_judge: list[str] = setting(choices=("simulator", "body"))
    world_model: str = setting(exists=True)


@dataclass
class BenchLiveConfig:
    """``configs/bench/live.yaml``"""

    out: str | None = setting()
    arms: list[str] = setting(choices=("mujoco", "warp", "dream"))
    room_seed: int = setting(ge=0)
    steps: int = setting(gt=10)
    rate_hz: float = setting(gt=0)
    warmup_steps: int = setting(ge=0)
    wave_rooms: int = setting(ge=0)
    num_threads: int = setting(ge=1)
    path: str | None = setting()


@dataclass
class BenchGymVerdictConfig:
    """``configs/bench/gym_verdict.yaml``"""

    out: str | None = setting()
    loop: str | None = setting(exists=True)
    env: str | None = setting()
    env_kwargs: dict[str, Any] | None = setting()
    checkpoint: str | None = setting(exists=True)
    policies: list[str] = setting()
    random: bool = setting()
    episodes: int = setting(ge=2)
    seed: int = setting(ge=0)
    worlds: int = setting(ge=1)
    bootstrap: int = setting(gt=0)
    device: str = setting(device=True)
    threads: int = setting(ge=1)
    path: str | None = setting()

    def check(self) -> None:
        if self.loop is None and (self.env is None or self.checkpoint is None):
            raise BadValue("loop", "give loop=<a diamond env=<id> run>, or env=<id> and checkpoint=<its world model> with policies=[...]")
        for p in self.policies:
            if p != "random" and not Path(p).exists():
                raise BadValue("policies", f"policies: {p}: no such file or directory; give train-policy source_env=<id> runs")


@dataclass
class BenchGymPPO(PPOConfig):
    """``ppo:`` of ``configs/bench/gym.yaml``: SB3 PPO's settings and its worlds in the env."""

    num_envs: int = setting(ge=1)


@dataclass
class BenchGymSAC(SACConfig):
    """``sac:`` of ``configs/bench/gym.yaml``."""

    num_envs: int = setting(ge=1)


@dataclass
class BenchGymLoop:
    """``loop:`` of ``configs/bench/gym.yaml``: the loop's settings (``configs/diamond.yaml`` keys)."""

    collect_steps: int = setting(gt=0)
    collect_envs: int = setting(ge=1)
    exploration_noise: float = setting(ge=0)
    gym_wm_steps: int = setting(gt=0)
    policy_steps: int = setting(gt=0)
    num_envs: int = setting(ge=1)
    horizon: int | None = setting(gt=0)


@dataclass
class BenchGymConfig:
    """``configs/bench/gym.yaml``"""

    out: str | None = setting()
    run_dir: str = setting()
    reuse: bool = setting()
    envs: list[str] = setting()
    env_kwargs: Any = setting()
    seeds: list[int] = setting(ge=0)
    budget: int = setting(gt=0)
    arms: list[str] = setting(choices=("loop", "ppo", "sac"))
    eval_episodes: int = setting(gt=0)
    eval_seed: int = setting(ge=0)
    ppo: BenchGymPPO = group(BenchGymPPO)
    sac: BenchGymSAC = group(BenchGymSAC)
    loop: BenchGymLoop = group(BenchGymLoop)
    threads: int = setting(ge=1)
    progress: bool = setting()
    path: str | None = setting()

    def check(self) -> None:
        _nonempty("envs", self.envs, "[InvertedPendulum-v5]")
        kw = self.env_kwargs
        if kw is not None and (not isinstance(kw, (list, tuple)) or len(kw) != len(self.envs)):
            raise BadValue("env_kwargs", f"env_kwargs={kw!r}: give one mapping (or null) per entry of envs={list(self.envs)}, in its order")
        if kw is not None and not all(k is None or isinstance(k, dict) for k in kw):
            raise BadValue("env_kwargs", f"env_kwargs={kw!r}: each entry is a mapping of gym.make keyword arguments or null")
        _nonempty("seeds", self.seeds, "[0,1,2]")
