"""``dreamgym train-wm data=<dir> out=<run>``: train the world model on a dataset.

This module turns ``configs/train_wm.yaml`` into the one trainer's arguments
(``worldmodel.trainer.train_world_model``, where a training step is read top to bottom): the
window sources (``worldmodel.windows``: a dataset's train split streamed through
``rollouts.loader``, at most ``cache_mb`` of it in memory, or an episodes ``.safetensors`` file),
the model (from ``worldmodel.*``, or the pretrained ``init``), a ``TrainingConfig`` and the run's
options. Re-running the same command resumes from the newest checkpoint in ``<out>``; a re-run
with other data, settings or code is refused, listing the differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .config import NoiseConfig, TrainingConfig
from .model import DEFAULT_CHECKPOINT, WorldModel, WorldModelConfig
from .noise import draw_noise
from .train_state import latest_checkpoint
from .trainer import NonFiniteLossError, TrainerOptions, batch_indices, check_training_config, train_world_model
from .windows import OBS_KEYS, PRIOR_KEYS, DatasetSource, EpisodeSource, WindowSource, load_episodes, save_episodes, window_source

__all__ = [
    "NonFiniteLossError",
    "OBS_KEYS",
    "PRIOR_KEYS",
    "batch_indices",
    "draw_noise",
    "latest_checkpoint",
    "load_episodes",
    "run",
    "save_episodes",
    "train",
]


# ----------------------------------------------------------------------------- configs
def training_config_from(cfg: DictConfig) -> TrainingConfig:
    """The ``TrainingConfig`` of a ``train_wm`` config (its top-level keys and ``noise``)."""
    names = {f for f in TrainingConfig.__dataclass_fields__ if f != "noise"}
    noise = OmegaConf.to_container(cfg.noise, resolve=True) if cfg.get("noise") is not None else {}
    assert isinstance(noise, dict)
    return TrainingConfig(**{k: cfg[k] for k in names if k in cfg}, noise=NoiseConfig(**noise))


def trainer_options_from(cfg: DictConfig) -> TrainerOptions:
    """The run's options (logging, checkpoints, device) of a ``train_wm`` config."""
    names = [f for f in TrainerOptions.__dataclass_fields__ if f not in ("name", "files")]
    opts = TrainerOptions(name="train-wm", **{k: cfg[k] for k in names if k in cfg})
    opts.files = {"train_config.yaml": OmegaConf.to_yaml(cfg)}
    return opts


def model_config_from(cfg: DictConfig, data_resolution: int) -> WorldModelConfig:
    d = OmegaConf.to_container(cfg.worldmodel, resolve=True)
    assert isinstance(d, dict)
    d["data_resolution"] = data_resolution
    return WorldModelConfig.from_dict(d, source="configs/worldmodel")


def data_resolution(source: WindowSource, default: int) -> int:
    """The ego frames' size in a source (``default`` when it has no frames)."""
    if isinstance(source, EpisodeSource):
        ep = source.episodes[0] if source.episodes else {}
        return int(ep["ego_rgb"].shape[-1]) if "ego_rgb" in ep else default
    if isinstance(source, DatasetSource) and "ego_rgb" in source.keys:
        return int(source.index.manifests[0].data["env"]["observation_space"]["ego_rgb"]["shape"][-1])
    return default


def _model(cfg: DictConfig, res: int) -> tuple[WorldModel, dict[str, Any]]:
    """The model to train and what the run record says of it: fresh from ``worldmodel.*`` (its
    weights drawn from the seed), or the pretrained ``init`` (architecture and normalisation its own)."""
    init = cfg.get("init")
    if not init:
        torch.manual_seed(int(cfg.seed))
        return WorldModel(model_config_from(cfg, res)), {"init": None}
    init_dir = Path(DEFAULT_CHECKPOINT) if str(init) == "default" else Path(str(init))
    pre = WorldModel.from_pretrained(init_dir)
    if pre.config.data_resolution != res:
        raise ValueError(
            f"train-wm: init={init_dir} was trained on {pre.config.data_resolution}x{pre.config.data_resolution} ego frames, "
            f"but {cfg.data} has {res}x{res}; collect with resolution={pre.config.data_resolution}"
        )
    torch.manual_seed(int(cfg.seed))
    want = bool(cfg.worldmodel.get("ego_render", False))
    if want and not pre.config.ego_render and pre.config.ego_warp and pre.config.occupancy_warp:
        return _grown_with_render(pre), {"init": str(init), "grown": ["ego_render"]}
    model = WorldModel(pre.config)
    model.load_state_dict(pre.state_dict())
    return model, {"init": str(init)}


def _grown_with_render(pre: WorldModel) -> WorldModel:
    """``pre`` with the rendered-state input of the frame branch added (``ego_render``): every
    weight is ``pre``'s, and the frame branch's first convolution reads the new input channels
    (appended last) through zero weights: it starts out as ``pre``, but for the base's holes, which
    the painted render now fills."""
    import dataclasses

    model = WorldModel(dataclasses.replace(pre.config, ego_render=True))
    model.sampler = pre.sampler
    new = model.state_dict()
    for k, v in pre.state_dict().items():
        if new[k].shape == v.shape:
            new[k] = v
        else:  # the first convolution of the frame branch: old input channels first, the render's zero
            grown = torch.zeros_like(new[k])
            grown[:, : v.shape[1]] = v
            new[k] = grown
    model.load_state_dict(new)
    return model


# ----------------------------------------------------------------------------- the command
def _cache_bytes(cfg: Mapping[str, Any]) -> int | None:
    mb = cfg.get("cache_mb")
    if mb is None:
        return None
    if float(mb) < 0:
        raise ValueError(f"cache_mb={mb} is not allowed; it must be >= 0 (or null: no limit)")
    return int(float(mb) * 2**20)


def train(cfg: DictConfig) -> Path:
    """Train (or resume) a world model as configured (``configs/train_wm.yaml``); returns ``<out>/final``."""
    if cfg.data is None or cfg.out is None:
        raise SystemExit("dreamgym train-wm: give data=<dataset dir or episodes .safetensors> and out=<run dir>")
    training, options = training_config_from(cfg), trainer_options_from(cfg)
    check_training_config(training, options)
    torch.set_num_threads(int(cfg.num_threads))
    cache = _cache_bytes(cfg)
    env = gym_dataset_env(cfg.data)
    if env is not None:
        return _train_vector(cfg, env, training, options, cache)
    source = window_source(cfg.data, "train", cache)
    if source is None:
        raise ValueError(f"{cfg.data}: no training episodes")
    # the held-out batch is read once: nothing of it is cached
    held = window_source(cfg.heldout_data, None, 0) if cfg.get("heldout_data") else window_source(cfg.data, "heldout", 0)
    model, record = _model(cfg, data_resolution(source, int(cfg.worldmodel.resolution)))
    return train_world_model(model, source, training, cfg.out, held, options, record)


# ----------------------------------------------------------------------------- a Gymnasium env's data
def gym_dataset_env(data: Any) -> dict[str, Any] | None:
    """The manifest ``env`` entry of a ``collect env=<id>`` dataset (the first of a list), else None."""
    from dreamgym.rollouts.dataset import MANIFEST, Manifest, is_gym

    first = data[0] if isinstance(data, (list, tuple)) or (hasattr(data, "__len__") and not isinstance(data, (str, Path))) else data
    p = Path(str(first)) if first is not None else None
    if p is None or not p.is_dir() or not (p / MANIFEST).is_file():
        return None
    env = Manifest.load(p).data["env"]
    return env if is_gym(env) else None


def _train_vector(cfg: DictConfig, env: Mapping[str, Any], training: Any, options: TrainerOptions, cache: int | None) -> Path:
    """train-wm on a Gymnasium env's dataset: the vector world model (``worldmodel.vector``), sized by ``vector.*``."""
    import dataclasses

    from .vector import VectorWorldModel
    from .vector_config import VectorArchitecture

    v = cfg.vector
    source = window_source(cfg.data, "train", cache, gym=True)
    if source is None:
        raise ValueError(f"{cfg.data}: no training episodes")
    held = (
        window_source(cfg.heldout_data, None, 0, gym=True) if cfg.get("heldout_data") else window_source(cfg.data, "heldout", 0, gym=True)
    )
    images = any(bool(o.get("image")) for o in env.get("observations", {}).values())
    batch = int(v.image_batch_size if images else v.batch_size)
    training = dataclasses.replace(training, batch_size=batch, prior_batch=0, prior_rollout=0, props_rollout_steps=0)
    init = cfg.get("init")
    torch.manual_seed(int(cfg.seed))
    if init:
        if str(init) == "default":
            raise ValueError("init=default is the room's model; a Gymnasium env's model starts fresh or from a vector model's folder")
        pre = VectorWorldModel.from_pretrained(str(init))
        if pre.config.env_id != env["env_id"] or pre.config.observation_space != env["observation_space"]:
            raise ValueError(f"init={init} models {pre.config.env_id}, but {cfg.data} holds {env['env_id']} (or other spaces)")
        model, record = VectorWorldModel(pre.config, pre.sampler), {"init": str(init)}
        model.load_state_dict(pre.state_dict())
    else:
        sizes = {k: v[k] for k in ("context", "width", "depth", "sigma_max", "frame_channels")}
        model, record = VectorWorldModel(VectorArchitecture.from_manifest(env, **sizes)), {"init": None}
    return train_world_model(model, source, training, cfg.out, held, options, record)


def run(cfg: DictConfig) -> int:
    """Entry point of ``dreamgym train-wm``: a user error is one line, not a traceback."""
    from dreamgym.rollouts.dataset import CorruptShardError

    try:
        train(cfg)
    except (ValueError, FileNotFoundError, CorruptShardError) as e:
        msg = str(e).removeprefix("train-wm: ")
        raise SystemExit(f"dreamgym train-wm: {msg}") from None
    return 0
