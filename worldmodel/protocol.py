"""What the dream env needs of a world model: a small ``typing.Protocol``.

``DreamVecEnv`` steps any object that meets ``DreamModel``: the shipped ``WorldModel`` does, and so
can a baseline or a model from elsewhere. Only the architecture is read from ``config`` (what the
weights were trained as); how a dream is sampled stays the model's own business, so sampler
settings can move or change without touching the env.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch


class DreamArchitecture(Protocol):
    """The architecture fields the dream env reads (``worldmodel.config.ArchitectureConfig`` has them)."""

    context: int  # K: real steps a dreamed episode starts from, and steps each prediction looks back
    modalities: Sequence[str]  # branches: "ego", "motion", "partner_motion", "props", "occupancy"
    resolution: int  # side of the frames the network denoises
    data_resolution: int  # side of the ego frames it takes and returns (the env's observation size)
    occupancy_shape: Sequence[int]  # (Z, X, Y) of the occupancy grid it takes and returns
    occupancy_voxel: float  # metres per voxel of that grid
    partner_actions: bool  # whether the partner's scripted commands are a condition of ``imagine``


@runtime_checkable
class DreamModel(Protocol):
    """A world model the dream env can step: the next observation from K context steps and actions."""

    config: DreamArchitecture

    def to(self, device: str | torch.device) -> DreamModel:
        """The model on ``device`` (``torch.nn.Module.to``)."""
        ...

    def eval(self) -> DreamModel:
        """The model in inference mode (``torch.nn.Module.eval``)."""
        ...

    def output_keys(self) -> list[str]:
        """The observation keys the model can generate (e.g. ``["ego_rgb", "ego_depth", "motion", ...]``)."""
        ...

    def scene_memory(self, context: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Entries to add to every ``imagine`` context of a rollout that starts from ``context``
        (B, K, ...) (e.g. the real start's last frame, for a model that reprojects it); may be empty."""
        ...

    def imagine(
        self,
        context: Mapping[str, torch.Tensor],
        actions: torch.Tensor,
        *,
        num_steps: int | None = None,
        init_noise: float | None = None,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        partner_actions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The next step of B worlds.

        ``context``: observation key -> (B, K, ...) in env dtypes (plus scene memory entries and
        ``instruction`` (B,)); ``actions`` (B, K, 6), the last row being the action applied now;
        ``partner_actions`` (B, K, 6), given when ``config.partner_actions``. Returns the
        generated keys (B, ...) in env dtypes, ``reward`` (B,), ``terminated`` (B,) bool and,
        when the model learned it, ``success`` (B,) bool. ``num_steps`` and ``init_noise`` come
        only when the user overrides the model's own sampler (None: sample as the model does).
        """
        ...
