"""Observation and action spaces shared by the real and the dream environments."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces

from .controller import ACTION_DIM
from .motion import MOTION_DIM
from .occupancy import CLASS_NAMES, GridSpec
from .tasks import INSTRUCTIONS, TASK_OBS_DIM

OBS_KEYS: tuple[str, ...] = ("ego_rgb", "ego_depth", "motion", "occupancy", "partner_motion", "instruction", "task_obs")
IMAGE_KEYS: tuple[str, ...] = ("ego_rgb", "ego_depth")
MAX_DEPTH = 10.0  # metres; farther (or nothing hit) reads as MAX_DEPTH
# The envs' default ego resolution: the frames the shipped world model was trained on and dreams,
# so that the real and the dream env have the same spaces by default (a dream upsampled to a
# larger default would hand a policy blurred frames that the simulator never renders).
DEFAULT_RESOLUTION = 32


def check_obs_keys(keys: Sequence[str] | None) -> tuple[str, ...]:
    """Validate a subset of observation keys (None: all), keeping the canonical order."""
    if keys is None:
        return OBS_KEYS
    keys = tuple(keys)
    unknown = [k for k in keys if k not in OBS_KEYS]
    if unknown or not keys:
        raise ValueError(f"unknown observation keys {unknown}; valid keys: {list(OBS_KEYS)}")
    return tuple(k for k in OBS_KEYS if k in keys)


def check_resolution(resolution) -> tuple[int, int]:
    """(H, W) from an int or a pair; both between 8 and 1024."""
    if isinstance(resolution, (int, np.integer)):
        resolution = (int(resolution), int(resolution))
    try:
        h, w = (int(x) for x in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be an int or (height, width), got {resolution!r}") from None
    if not (8 <= h <= 1024 and 8 <= w <= 1024):
        raise ValueError(f"resolution must be between 8 and 1024 pixels per side, got {(h, w)}")
    return h, w


def observation_space(resolution: tuple[int, int], grid: GridSpec, keys: Sequence[str] = OBS_KEYS) -> spaces.Dict:
    """The Dict observation space of one world."""
    h, w = resolution
    all_spaces = {
        "ego_rgb": spaces.Box(0, 255, (3, h, w), np.uint8),
        "ego_depth": spaces.Box(0.0, MAX_DEPTH, (1, h, w), np.float32),
        "motion": spaces.Box(-np.inf, np.inf, (MOTION_DIM,), np.float32),
        "occupancy": spaces.Box(0, len(CLASS_NAMES) - 1, grid.shape, np.uint8),
        "partner_motion": spaces.Box(-np.inf, np.inf, (MOTION_DIM,), np.float32),
        "instruction": spaces.Discrete(len(INSTRUCTIONS)),
        "task_obs": spaces.Box(-np.inf, np.inf, (TASK_OBS_DIM,), np.float32),
    }
    return spaces.Dict({k: all_spaces[k] for k in keys})


def action_space() -> spaces.Box:
    """Six controller commands in [-1, 1] (see ``controller``); values outside are clipped."""
    return spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
