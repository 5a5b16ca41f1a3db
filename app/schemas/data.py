"""Schemas of the data commands: collect, dataset verify/info, video, export, view.

Each field mirrors the key of the same name in ``configs/<command>.yaml`` (same order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import SPLITS, BadValue, check_dataset, obs_key_names, require, setting, task_names

COMPRESSIONS = ("gzip", "lzf")


def check_policy_mix(name: str, spec: Any) -> None:
    """A behaviour mix of ``collect`` (``"expert:0.5,random:0.5"`` or a mapping; None: the default)."""
    from dreamgym.rollouts.collect import parse_policy

    if spec is None:
        return
    try:
        parse_policy(spec)
    except ValueError as e:
        raise BadValue(name, f"{name}: {e}") from None


def check_resolution(name: str, value: Any) -> None:
    """An image size: an int or [height, width], 8 to 1024 pixels per side."""
    from dreamgym.envs.spaces import check_resolution as check

    try:
        check(value)
    except ValueError as e:
        raise BadValue(name, f"{name}: {e}; e.g. {name}=64") from None


@dataclass
class CollectConfig:
    """``configs/collect.yaml``"""

    out: str | None = setting()
    env: str | None = setting()
    env_kwargs: Any = setting()
    task: str = setting(choices=task_names)
    steps: int = setting(gt=0)
    num_envs: int = setting(ge=1)
    policy: Any = setting()
    noise: float = setting(ge=0)
    seed: int = setting(ge=0)
    resolution: Any = setting()
    obs_keys: list[str] | None = setting(choices=obs_key_names)
    round_steps: int = setting(gt=0)
    shard_episodes: int = setting(gt=0)
    heldout_fraction: float = setting(ge=0, lt=1)
    compression: str | None = setting(choices=COMPRESSIONS)
    compression_level: int | None = setting(ge=0, le=9)
    image_chunk_steps: int = setting(gt=0)
    queue_episodes: int = setting(gt=0)
    stop_after_steps: int | None = setting(gt=0)
    progress: bool = setting()
    path: str | None = setting()

    def check(self) -> None:
        require(self, "out", "path", hint="say where to write, e.g. `dreamgym collect out=data/reach`")
        check_policy_mix("policy", self.policy)
        check_resolution("resolution", self.resolution)
        if self.env_kwargs is not None and not isinstance(self.env_kwargs, dict):
            raise BadValue("env_kwargs", f"env_kwargs={self.env_kwargs!r} is not a mapping; write it as 'env_kwargs={{g:9.81}}'")
        if self.env_kwargs and not self.env:
            raise BadValue("env_kwargs", "env_kwargs are passed to gym.make and need env=<a Gymnasium id>; the room takes none")
        if self.env:
            from dreamgym.rollouts.gym_collect import parse_gym_policy

            try:
                parse_gym_policy(self.policy, self.env)
            except ValueError as e:
                raise BadValue("policy", str(e)) from None
        if self.obs_keys is not None and not self.obs_keys:
            raise BadValue("obs_keys", "obs_keys=[] names no observation; give some keys or obs_keys=null for all")


@dataclass
class DatasetConfig:
    """``configs/dataset.yaml`` (``dataset verify`` and ``dataset info``)"""

    path: str | None = setting()
    checksum: bool = setting()

    def check(self) -> None:
        require(self, "path", hint="give the dataset directory, e.g. `dreamgym dataset info data/reach`")
        check_dataset("path", self.path)


@dataclass
class VideoConfig:
    """``configs/video.yaml``"""

    path: str | None = setting()
    out: str | None = setting()
    episode: int = setting(ge=0)
    size: int = setting(ge=8, le=4096)
    fps: float | None = setting(gt=0)

    def check(self) -> None:
        require(self, "path", hint="give a dataset directory, e.g. `dreamgym video data/reach episode=0`")
        check_dataset("path", self.path)


@dataclass
class ExportConfig:
    """``configs/export.yaml``"""

    data: str | None = setting(exists=True)
    out: str | None = setting()
    smplx_model_dir: str | None = setting()
    gender: str = setting(choices=("neutral", "male", "female"))
    checkpoint: str | None = setting(exists=True, keywords=("auto", "none"))
    split: str = setting(choices=("auto", *SPLITS))
    episodes: list[int] | None = setting(ge=0)
    max_episodes: int | None = setting(gt=0)
    streams: list[str] = setting(choices=("real", "dream"))
    dream_steps: int | None = setting(gt=0)
    num_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    seed: int = setting(ge=0)
    device: str = setting(device=True)
    threads: int = setting(ge=1)
    bvh_units_per_metre: float = setting(gt=0)
    progress: bool = setting()
    path: str | None = setting(exists=True)


@dataclass
class ViewConfig:
    """``configs/view.yaml``"""

    path: str | None = setting(exists=True)
    port: int = setting(ge=0, le=65535)
    data: str | None = setting(exists=True)
    checkpoint: str | None = setting(exists=True, keywords=("auto", "none"))
    out: str | None = setting()
    split: str = setting(choices=("auto", *SPLITS))
    episodes: list[int] | None = setting(ge=0)
    max_episodes: int | None = setting(gt=0)
    dream_steps: int | None = setting(gt=0)
    num_steps: int | None = setting(gt=0)  # null: the world model's own sampler (its sampler.json)
    init_noise: float | None = setting(ge=0)
    seed: int = setting(ge=0)
    device: str = setting(device=True)
    threads: int = setting(ge=1)
    rebuild: bool = setting()
    progress: bool = setting()
    open_browser: bool = setting()
    verbose: bool = setting()
    screenshot: str | None = setting()
    frame: int | None = setting(ge=0)
    episode: str | None = setting()
    width: int = setting(gt=0)
    height: int = setting(gt=0)
    timeout: float = setting(gt=0)

    def check(self) -> None:
        require(self, "path", hint="give a dataset, an eval-wm run or a viewer bundle, e.g. `dreamgym view data/reach`")
