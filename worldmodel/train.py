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

from . import data as D
from . import edm
from .config import NoiseConfig, TrainingConfig
from .model import DEFAULT_CHECKPOINT, WorldModel, WorldModelConfig
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


def draw_noise(
    model_cfg: WorldModelConfig, tcfg: Mapping[str, Any], step: int, positions: list[int], seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Unit noise and sigmas (per modality, per sample) and the branches that run at ``step``.

    Sample j of the local batch is sample ``positions[j]`` of the global batch; its draws depend
    only on (seed, step, positions[j]).
    """
    c = model_cfg
    p = c.edm
    g = torch.Generator().manual_seed(seed * 7_919 + step * 104_729 + 1)
    u = torch.rand(2, generator=g)
    branches = []
    if "ego" in c.modalities and u[0] >= float(tcfg["p_skip_frames"]):
        branches.append("ego")
    if "occupancy" in c.modalities and u[1] >= float(tcfg["p_skip_occupancy"]):
        branches.append("occupancy")
    shapes = {
        "ego": (c.n_frame_channels, c.resolution, c.resolution),
        "motion": (227,),
        "partner_motion": (227,),
        "props": (D.N_PROPS, 3),
        "occupancy": (c.n_occ_channels, *c.occupancy_shape[1:]),
    }
    mods = [m for m in D.MODALITIES if m in D.STATE_MODALITIES or m in branches]
    noise = {m: [] for m in mods}
    sigma = {m: [] for m in mods}
    known: list[bool] = []
    for pos in positions:
        gs = torch.Generator().manual_seed(seed * 1_000_033 + step * 9_973 + pos * 31 + 7)
        for m in mods:
            s = float(edm.sample_training_sigma(1, p, gs)[0])
            r = float(torch.rand(1, generator=gs)[0])
            if r < float(tcfg["p_clean"]):
                s = 0.0
            elif r < float(tcfg["p_clean"]) + float(tcfg["p_sigma_max"]):
                s = p.sigma_max
            sigma[m].append(s)
            noise[m].append(torch.randn(shapes[m], generator=gs))
        if c.ego_warp and "ego" in mods and float(torch.rand(1, generator=gs)[0]) < float(tcfg.get("p_warp", 0.7)):
            # frames predicted given the next motion: relative to the last frame warped to it
            sigma["motion"][-1] = 0.0
        if c.occupancy_warp and "occupancy" in mods and float(torch.rand(1, generator=gs)[0]) < float(tcfg.get("p_warp", 0.7)):
            # occupancy predicted given both next bodies: relative to the last grid carried to them
            sigma["motion"][-1] = 0.0
            sigma["partner_motion"][-1] = 0.0
        if c.partner_actions:
            # some samples train without the partner's commands, so that the model also dreams
            # when a caller has none
            known.append(float(torch.rand(1, generator=gs)[0]) >= float(tcfg.get("p_drop_partner_actions", 0.2)))
        # every sample must have something to learn: if all were given clean, denoise motion
        # (frames, for a warping model given its motion)
        if all(sigma[m][-1] == 0.0 for m in mods):
            fix = "ego" if (c.ego_warp and "ego" in mods) else "motion"
            sigma[fix][-1] = float(edm.sample_training_sigma(1, p, gs)[0])
    noise_out = {m: torch.stack(v) for m, v in noise.items()}
    if c.partner_actions:
        noise_out["partner_known"] = torch.tensor(known, dtype=torch.bool)
    return (
        noise_out,
        {m: torch.tensor(v, dtype=torch.float32) for m, v in sigma.items()},
        branches,
    )


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
    model = WorldModel(pre.config)
    model.load_state_dict(pre.state_dict())
    return model, {"init": str(init)}


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
    source = window_source(cfg.data, "train", cache)
    if source is None:
        raise ValueError(f"{cfg.data}: no training episodes")
    # the held-out batch is read once: nothing of it is cached
    held = window_source(cfg.heldout_data, None, 0) if cfg.get("heldout_data") else window_source(cfg.data, "heldout", 0)
    model, record = _model(cfg, data_resolution(source, int(cfg.worldmodel.resolution)))
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
