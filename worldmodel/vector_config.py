"""The configs of the vector world model (``worldmodel.vector``): what its weights are, and how it samples.

``VectorArchitecture`` is built from a ``dreamgym collect env=<id>`` dataset's manifest
(``from_manifest``): the env's id and keyword arguments, its observation and action spaces as
JSON (``rollouts.gym_spaces``), the stored observation keys and the time limit, beside the network's
sizes. ``VectorSampler`` says how a dream is drawn. Both are written to ``config.json`` /
``sampler.json`` beside the weights, each with ``"kind": "vector"``, so a loader can tell them from the
room's model (``worldmodel.load``), and every value is checked on construction and on load.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KIND = "vector"
FORMAT_VERSION = 1


def _check(cls_name: str, source: str, rules: list[tuple[str, Any, bool, str]]) -> None:
    for key, value, ok, allowed in rules:
        if not ok:
            raise ValueError(f"{source}: {cls_name}.{key}={value!r} is not allowed; it must be {allowed}")


def _from_dict(cls, d: Mapping[str, Any], source: str):
    d = dict(d)
    kind = d.pop("kind", KIND)
    d.pop("format_version", None)
    if kind != KIND:
        raise ValueError(f"{source}: kind={kind!r}, but this is a {KIND} world model's config")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


@dataclass
class ObsPart:
    """One stored observation key: its place in the flat vector, its shape, dtype and Box bounds."""

    key: str
    start: int
    size: int
    shape: tuple[int, ...]
    dtype: str
    low: np.ndarray
    high: np.ndarray


@dataclass
class VectorArchitecture:
    """What a vector world model's weights are: the env they model and the network's sizes."""

    env_id: str = ""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    observation_space: dict[str, Any] = field(default_factory=dict)  # the env's, as JSON
    action_space: dict[str, Any] = field(default_factory=dict)  # the env's, as JSON
    obs_keys: list[str] = field(default_factory=lambda: ["obs"])  # stored keys, in the flat vector's order
    max_episode_steps: int | None = None  # the env's time limit (None: none); the dream truncates there
    context: int = 2  # K: real steps a dream starts from, and steps each prediction reads
    width: int = 256  # hidden width of every MLP
    depth: int = 3  # residual blocks of the denoiser
    sigma_data: float = 1.0  # targets are normalised to unit variance
    sigma_max: float = 20.0
    frame_channels: int = 32  # base channels of the image branch's U-Net and encoders (worldmodel.vector_frames)

    def check(self, source: str = "VectorArchitecture") -> None:
        _check(
            "VectorArchitecture",
            source,
            [
                ("env_id", self.env_id, isinstance(self.env_id, str) and bool(self.env_id), "a Gymnasium env id"),
                ("context", self.context, isinstance(self.context, int) and self.context >= 1, "an integer >= 1"),
                ("width", self.width, isinstance(self.width, int) and self.width >= 8, "an integer >= 8"),
                ("depth", self.depth, isinstance(self.depth, int) and self.depth >= 1, "an integer >= 1"),
                ("sigma_data", self.sigma_data, self.sigma_data > 0, "> 0"),
                ("sigma_max", self.sigma_max, self.sigma_max > 0, "> 0"),
                (
                    "frame_channels",
                    self.frame_channels,
                    isinstance(self.frame_channels, int) and self.frame_channels >= 4,
                    "an integer >= 4",
                ),
                (
                    "max_episode_steps",
                    self.max_episode_steps,
                    self.max_episode_steps is None or (isinstance(self.max_episode_steps, int) and self.max_episode_steps > 0),
                    "a positive integer or null",
                ),
            ],
        )
        self.observation_parts()  # the spaces must be ones the model can read
        if len(self.image_parts()) > 1:
            raise ValueError(f"{source}: {self.env_id} has {len(self.image_parts())} image keys; the model dreams one image key")
        self.action_size()

    def __post_init__(self) -> None:
        self.obs_keys = list(self.obs_keys)
        self.check()

    @classmethod
    def from_manifest(cls, env: Mapping[str, Any], **sizes: Any) -> VectorArchitecture:
        """The architecture for a ``collect env=<id>`` dataset's manifest ``env`` entry, with ``sizes``
        (``context``, ``width``, ``depth``, ``sigma_max``) over the defaults."""
        arch = cls(
            env_id=str(env["env_id"]),
            env_kwargs=dict(env.get("env_kwargs") or {}),
            observation_space=dict(env["observation_space"]),
            action_space=dict(env["action_space"]),
            obs_keys=list(env["obs_keys"]),
            max_episode_steps=env.get("max_episode_steps"),
            **sizes,
        )
        return arch

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> VectorArchitecture:
        return _from_dict(cls, d, source)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **dataclasses.asdict(self)}

    # ------------------------------------------------------------------ the spaces
    def spaces(self):
        """(observation space, action space) as ``gymnasium.spaces`` objects."""
        from dreamgym.rollouts.gym_spaces import space_from_json

        return space_from_json(self.observation_space), space_from_json(self.action_space)

    def _boxes(self) -> dict[str, Any]:
        from dreamgym.rollouts.gym_spaces import space_from_json

        space = space_from_json(self.observation_space)
        boxes = dict(space.spaces) if self.observation_space.get("type") == "Dict" else {"obs": space}
        if list(boxes) != list(self.obs_keys):
            raise ValueError(f"{self.env_id}: obs_keys {self.obs_keys} do not match the observation space's keys {list(boxes)}")
        return boxes

    @staticmethod
    def _is_image(box: Any) -> bool:
        return box.dtype == np.uint8 and len(box.shape) == 3

    def observation_parts(self) -> list[ObsPart]:
        """The stored vector keys as parts of one flat float vector (image keys: ``image_parts``)."""
        parts, start = [], 0
        for key, box in self._boxes().items():
            if self._is_image(box):
                continue
            size = int(np.prod(box.shape)) if box.shape else 1
            parts.append(ObsPart(key, start, size, tuple(box.shape), str(box.dtype), box.low.reshape(-1), box.high.reshape(-1)))
            start += size
        return parts

    def image_parts(self) -> list[ObsPart]:
        """The stored image keys ((H, W, C) uint8 Boxes), dreamed by the U-Net branch."""
        parts = []
        for key, box in self._boxes().items():
            if self._is_image(box):
                h, w, c = box.shape
                if min(h, w) < 8:
                    raise ValueError(f"{self.env_id}: image {key!r} is {box.shape}; the U-Net needs at least 8 x 8 pixels")
                parts.append(ObsPart(key, 0, int(np.prod(box.shape)), tuple(box.shape), "uint8", box.low.reshape(-1), box.high.reshape(-1)))
        return parts

    def obs_size(self) -> int:
        return sum(p.size for p in self.observation_parts())

    def discrete_actions(self) -> bool:
        return self.action_space.get("type") == "Discrete"

    def action_size(self) -> int:
        """The size of one action as the network reads it: n (one-hot) for Discrete, the Box's flat size."""
        t = self.action_space.get("type")
        if t == "Discrete":
            return int(self.action_space["n"])
        if t == "Box":
            return int(math.prod(self.action_space["shape"])) if self.action_space["shape"] else 1
        raise ValueError(f"{self.env_id}: action space {t!r}; the vector world model reads Discrete or Box actions")


@dataclass
class VectorSampler:
    """How a vector world model dreams: EDM Euler steps from noise of ``init_noise`` x sigma_max."""

    num_steps: int = 3  # denoising steps per dreamed transition
    init_noise: float = 1.0  # 1: a sample of the learned distribution; 0: one deterministic dream
    sigma_min: float = 0.002
    rho: float = 7.0
    termination_threshold: float = 0.5  # a dreamed step terminates when the head's probability is above this

    def check(self, source: str = "VectorSampler") -> None:
        _check(
            "VectorSampler",
            source,
            [
                ("num_steps", self.num_steps, isinstance(self.num_steps, int) and self.num_steps >= 1, "an integer >= 1"),
                ("init_noise", self.init_noise, 0 <= self.init_noise <= 1, "in [0, 1]"),
                ("sigma_min", self.sigma_min, self.sigma_min > 0, "> 0"),
                ("rho", self.rho, self.rho > 0, "> 0"),
                ("termination_threshold", self.termination_threshold, 0 < self.termination_threshold < 1, "in (0, 1)"),
            ],
        )

    def __post_init__(self) -> None:
        self.check()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "sampler") -> VectorSampler:
        return _from_dict(cls, d, source)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, **dataclasses.asdict(self)}
