"""Schemas of the world-model commands: train-wm (with its ``worldmodel:`` group) and eval-wm.

Each field mirrors the key of the same name in ``configs/train_wm.yaml`` / ``configs/eval_wm.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dreamgym.worldmodel.model import WorldModelConfig

from .fields import SPLITS, BadValue, check_dataset, fmt, group, modality_names, require, setting

# The `worldmodel:` group (configs/worldmodel/*.yaml) is typed by the dataclass the trainer builds
# the model from (``worldmodel.train.model_config_from``); its own ``__post_init__`` checks run
# before training starts. The group's defaults are that dataclass's, overridden by the YAML.
WORLDMODEL_GROUP: type = WorldModelConfig


@dataclass
class TrainingNoise:
    """``noise:`` of ``configs/train_wm.yaml``: the log-normal sigma and probabilities, each in [0, 1]."""

    p_mean: float = setting()
    p_std: float = setting(gt=0)
    p_clean: float = setting(ge=0, le=1)
    p_sigma_max: float = setting(ge=0, le=1)
    p_skip_frames: float = setting(ge=0, le=1)
    p_skip_occupancy: float = setting(ge=0, le=1)
    p_warp: float = setting(ge=0, le=1)
    p_drop_partner_actions: float = setting(ge=0, le=1)


@dataclass
class VectorModel:
    """``vector:`` of ``configs/train_wm.yaml``: the sizes of a Gymnasium env's vector world model."""

    context: int = setting(ge=1)
    width: int = setting(ge=8)
    depth: int = setting(ge=1)
    sigma_max: float = setting(gt=0)
    batch_size: int = setting(gt=0)
    frame_channels: int = setting(ge=4)
    image_batch_size: int = setting(gt=0)


@dataclass
class TrainWmConfig:
    """``configs/train_wm.yaml``"""

    worldmodel: WORLDMODEL_GROUP = group(WORLDMODEL_GROUP)  # type: ignore[valid-type]
    data: Any = setting()  # a dataset dir, an episodes .safetensors, or a list of dataset dirs
    heldout_data: Any = setting()
    init: str | None = setting(exists=True, keywords=("default",))
    out: str | None = setting()
    steps: int = setting(gt=0)
    batch_size: int = setting(gt=0)
    prior_batch: int = setting(ge=0)
    prior_rollout: int = setting(ge=0)
    lr: float = setting(gt=0)
    warmup_steps: int = setting(ge=0)
    weight_decay: float = setting(ge=0)
    grad_clip: float = setting(gt=0)
    ema_decay: float = setting(ge=0, lt=1)
    root_loss_weight: float = setting(gt=0)
    noise: TrainingNoise = group(TrainingNoise)
    stats_windows: int = setting(gt=0)
    props_rollout_steps: int = setting(ge=0)
    props_rollout_horizon: int = setting(gt=0)
    props_rollout_batch: int = setting(gt=0)
    props_rollout_lr: float = setting(gt=0)
    vector: VectorModel = group(VectorModel)
    cache_mb: int | None = setting(ge=0)
    num_workers: int = setting(ge=0)
    seed: int = setting(ge=0)
    device: str = setting(device=True)
    num_threads: int = setting(ge=1)
    resume: bool = setting()
    log_every: int = setting(gt=0)
    eval_every: int = setting(ge=0)
    eval_batch: int = setting(gt=0)
    eval_num_steps: int = setting(gt=0)
    ckpt_every: int = setting(gt=0)
    keep_checkpoints: int = setting(ge=1)
    stop_after: int | None = setting(gt=0)
    progress: bool = setting()
    path: str | None = setting()

    def check(self) -> None:
        require(self, "data", hint="give data=<dataset dir or episodes .safetensors> and out=<run dir>")
        require(self, "out", hint="give out=<run dir> (re-running into it resumes)")
        for name in ("data", "heldout_data"):
            value = getattr(self, name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, (list, tuple, dict)):
                    raise BadValue(name, f"{name}={fmt(value)}: give a dataset dir or a flat list of dataset dirs")
                check_dataset(name, v, files=not isinstance(value, (list, tuple)))


@dataclass
class Counterfactual:
    """``counterfactual:`` of ``configs/eval_wm.yaml``."""

    enabled: bool = setting()
    num_contexts: int = setting(gt=0)
    start: int | None = setting(ge=0)
    horizon: int = setting(gt=0)
    sequences: dict[str, Any] = setting()

    def check(self) -> None:
        if self.enabled and not self.sequences:
            raise BadValue("counterfactual.sequences", "counterfactual.sequences is empty; name some, or counterfactual.enabled=false")
        for name, seq in self.sequences.items():
            ok = seq == "random" or (isinstance(seq, list) and len(seq) == 6 and all(isinstance(x, (int, float)) for x in seq))
            if not ok:
                raise BadValue(
                    f"counterfactual.sequences.{name}",
                    f"counterfactual.sequences.{name}={seq!r} is not an action; give 6 numbers "
                    "(forward, lateral, yaw_rate, head_yaw, head_pitch, arm) or random",
                )


@dataclass
class PushWindows:
    """``push:`` of ``configs/eval_wm.yaml``: the windows of the push-displacement figures."""

    horizon: int = setting(gt=0)
    threshold_m: float = setting(gt=0)


@dataclass
class EvalWmConfig:
    """``configs/eval_wm.yaml``"""

    checkpoint: str | None = setting(exists=True)
    mse_checkpoint: str | None = setting(exists=True)
    data: Any = setting()  # a dataset directory or a list of them
    split: str = setting(choices=SPLITS)
    out: str = setting()
    horizons: list[int] = setting(gt=0)
    frame_horizon: int | None = setting(ge=0)
    grid_horizon: int | None = setting(ge=0)
    modalities: list[str] | None = setting(choices=modality_names)
    starts_per_task: int | None = setting(gt=0)
    batch_size: int = setting(gt=0)
    best_of: int = setting(ge=1)
    best_of_starts: int = setting(ge=0)
    best_of_batch: int = setting(gt=0)
    resamples: int = setting(ge=0)
    frechet_resamples: int = setting(ge=0)
    probe: str | None = setting(exists=True)
    push: PushWindows = group(PushWindows)
    max_episodes: int | None = setting(gt=0)
    fit_data: Any = setting()  # a dataset directory or a list of them (a Gymnasium env's model)
    mlp_steps: int = setting(gt=0)
    num_videos: int = setting(ge=0)
    seed: int = setting(ge=0)
    device: str = setting(device=True)
    threads: int = setting(ge=1)
    progress: bool = setting()
    counterfactual: Counterfactual = group(Counterfactual)
    path: str | None = setting()

    def check(self) -> None:
        hint = "give checkpoint=<dir or .safetensors> and data=<held-out dataset dir, or [dir, dir, ...]>"
        require(self, "checkpoint", hint=hint)
        require(self, "data", hint=hint)
        dirs = self.data if isinstance(self.data, (list, tuple)) else [self.data]
        if not dirs or not all(isinstance(d, str) for d in dirs):
            raise BadValue("data", f"data={self.data!r} is not a dataset directory or a list of them; {hint}")
        for d in dirs:
            check_dataset("data", d)
        fits = self.fit_data if isinstance(self.fit_data, (list, tuple)) else [] if self.fit_data is None else [self.fit_data]
        if not all(isinstance(d, str) for d in fits):
            raise BadValue("fit_data", f"fit_data={self.fit_data!r} is not a dataset directory or a list of them")
        for d in fits:
            check_dataset("fit_data", d)
        if not self.horizons:
            raise BadValue("horizons", "horizons=[] has no horizon; give some, e.g. horizons=[1,4,16,64]")
