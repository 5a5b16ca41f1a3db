"""Trivial baselines that every world-model metric is reported beside.

Each baseline is a "world model" with the same ``imagine`` interface as ``WorldModel`` (so the
evaluation rolls them out through the same code), and predicts that nothing changes after
the last context step:

- **copy last frame**: the next ego frame (and depth) is the last context frame;
- **hold pose**: the body keeps its last pose and root (joint velocities zero), for the agent
  and the partner; props stay where they were;
- **static occupancy**: the occupancy grid is the last context grid.

These are one class, ``HoldLastBaseline``; the evaluation reports each under its own name with
the metrics of its modality (``BASELINE_MODALITIES``). Reward is predicted as 0 and no episode ends.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dreamgym.envs.motion import JOINT_VEL

# The modalities a world model predicts, in env dtypes (``props`` is (4, 3) prop positions).
MODALITIES: tuple[str, ...] = ("ego_rgb", "ego_depth", "motion", "partner_motion", "props", "occupancy")
MOTION_KEYS = ("motion", "partner_motion")

# Baseline name -> the modalities it stands for (its metrics are those of these modalities).
BASELINE_MODALITIES: dict[str, tuple[str, ...]] = {
    "copy_last_frame": ("ego_rgb", "ego_depth"),
    "hold_pose": ("motion", "partner_motion", "props"),
    "static_occupancy": ("occupancy",),
}


class HoldLastBaseline(torch.nn.Module):
    """Predicts the last context step for every modality (motion with zero joint velocities).

    Args:
        modalities: the modalities it returns by default (all that the context holds if None).
    """

    def __init__(self, modalities: Sequence[str] | None = None):
        super().__init__()
        self.modalities = tuple(modalities) if modalities is not None else None

    @torch.no_grad()
    def imagine(
        self,
        context: dict[str, torch.Tensor],
        actions: torch.Tensor,
        num_steps: int = 1,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The next step given ``context`` (B, K, ...) per key and ``actions`` (B, K, 6): the last
        context step, with joint velocities set to zero."""
        want = modalities if modalities is not None else self.modalities
        keys = [k for k in (want if want is not None else MODALITIES) if k in context]
        out = {}
        for k in keys:
            v = context[k][:, -1].clone()
            if k in MOTION_KEYS:
                v[..., JOINT_VEL] = 0.0
            out[k] = v
        B = actions.shape[0]
        out["reward"] = torch.zeros(B, device=actions.device)
        out["terminated"] = torch.zeros(B, dtype=torch.bool, device=actions.device)
        return out
