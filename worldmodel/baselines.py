"""The baselines every world-model metric is reported beside, each behind the ``imagine`` interface.

Each baseline is a "world model" with the same ``imagine`` call as ``WorldModel``, so the evaluation
rolls it out through the same code, from the same starts, under the same actions:

- ``HoldLastBaseline`` (reported as **copy_last_frame**, **hold_pose** and **static_occupancy**):
  nothing changes after the last context step (joint velocities set to zero).
- ``ConstantVelocityBaseline`` (**constant_velocity**): both bodies keep the velocity of their last
  two context steps (see its docstring for exactly what is extrapolated); props held.
- ``GeometricBaseline`` (**reproject_only** and **analytic_grid**): the world model's own dreamed
  motion (state-only, conditional mean), with frames and grid from geometry alone, no network:
  the last frame reprojected to the dreamed head pose with the rollout's real start frame as scene
  memory (what ``WorldModelNetwork.frame_base`` builds), and the last grid carried under the
  dreamed motion with both dreamed bodies redrawn, the start grid as memory (``occupancy_base``).

``BASELINE_MODALITIES`` names the modalities each reported baseline stands for: its metrics are
those of these modalities. Reward is predicted as 0 and no episode ends, except where the
geometric baseline takes the model's state pass (its reward head).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dreamgym.envs.motion import JOINT_POS, JOINT_VEL, ROOT_POS, ROOT_QUAT, quat_mul, yaw_of_quat
from dreamgym.envs.occupancy import GridSpec

from .data import warp_occupancy
from .warp import warp_frame

# The modalities a world model predicts, in env dtypes (``props`` is (4, 3) prop positions).
MODALITIES: tuple[str, ...] = ("ego_rgb", "ego_depth", "motion", "partner_motion", "props", "occupancy")
MOTION_KEYS = ("motion", "partner_motion")
STATE_KEYS = ("motion", "partner_motion", "props")

# Baseline name -> the modalities it stands for (its metrics are those of these modalities).
BASELINE_MODALITIES: dict[str, tuple[str, ...]] = {
    "copy_last_frame": ("ego_rgb", "ego_depth"),
    "hold_pose": ("motion", "partner_motion", "props"),
    "static_occupancy": ("occupancy",),
    "constant_velocity": ("motion", "partner_motion"),
    "reproject_only": ("ego_rgb", "ego_depth"),
    "analytic_grid": ("occupancy",),
}
# Which object each reported baseline comes from.
BASELINE_SOURCES: dict[str, str] = {
    "copy_last_frame": "hold_last",
    "hold_pose": "hold_last",
    "static_occupancy": "hold_last",
    "constant_velocity": "constant_velocity",
    "reproject_only": "geometric",
    "analytic_grid": "geometric",
}


def _no_reward(out: dict[str, torch.Tensor], actions: torch.Tensor) -> dict[str, torch.Tensor]:
    B = actions.shape[0]
    out["reward"] = torch.zeros(B, device=actions.device)
    out["terminated"] = torch.zeros(B, dtype=torch.bool, device=actions.device)
    return out


class HoldLastBaseline(torch.nn.Module):
    """Predicts the last context step for every modality (motion with zero joint velocities).

    Args:
        modalities: the modalities it returns by default (all that the context holds if None).
    """

    def __init__(self, modalities: Sequence[str] | None = None):
        super().__init__()
        self.modalities = tuple(modalities) if modalities is not None else None

    def _keys(self, context: Mapping[str, torch.Tensor], modalities: Sequence[str] | None) -> list[str]:
        want = modalities if modalities is not None else self.modalities
        return [k for k in (want if want is not None else MODALITIES) if k in context]

    @torch.no_grad()
    def imagine(
        self,
        context: dict[str, torch.Tensor],
        actions: torch.Tensor,
        num_steps: int = 1,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        **unused: Any,
    ) -> dict[str, torch.Tensor]:
        """The next step given ``context`` (B, K, ...) per key and ``actions`` (B, K, 6): the last
        context step, with joint velocities set to zero. Other keywords (a sampler's) are ignored."""
        out = {}
        for k in self._keys(context, modalities):
            v = context[k][:, -1].clone()
            if k in MOTION_KEYS:
                v[..., JOINT_VEL] = 0.0
            out[k] = v
        return _no_reward(out, actions)


def yaw_quat(yaw: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z) of rotations by ``yaw`` about world z."""
    z = torch.zeros_like(yaw)
    return torch.stack((torch.cos(yaw / 2), z, z, torch.sin(yaw / 2)), -1)


def constant_velocity_step(prev: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The next motion vector (B, 227) of a body that keeps the velocity between ``prev`` and ``last``.

    Extrapolated: the root position (world) by its last displacement; the heading (yaw about world
    z) by its last change, applied to the last root quaternion (pitch and roll kept); the 22 joint
    positions in the root frame by their last change. Held: the joint local rotations and the
    joint velocities (already the last finite difference).
    """
    nxt = last.clone()
    nxt[..., ROOT_POS] = 2 * last[..., ROOT_POS] - prev[..., ROOT_POS]
    dyaw = yaw_of_quat(last[..., ROOT_QUAT]) - yaw_of_quat(prev[..., ROOT_QUAT])
    dyaw = torch.remainder(dyaw + math.pi, 2 * math.pi) - math.pi
    nxt[..., ROOT_QUAT] = quat_mul(yaw_quat(dyaw), last[..., ROOT_QUAT])
    nxt[..., JOINT_POS] = 2 * last[..., JOINT_POS] - prev[..., JOINT_POS]
    return nxt


class ConstantVelocityBaseline(HoldLastBaseline):
    """Both bodies (agent and partner) extrapolated from the last two context steps
    (``constant_velocity_step``: root position, heading and joint positions at constant
    velocity); props, frames and occupancy held. With a one-step context the bodies are held."""

    @torch.no_grad()
    def imagine(
        self,
        context: dict[str, torch.Tensor],
        actions: torch.Tensor,
        num_steps: int = 1,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        **unused: Any,
    ) -> dict[str, torch.Tensor]:
        """The next step: bodies at constant velocity, everything else the last context step."""
        out = super().imagine(context, actions, num_steps, modalities, generator)
        for k in MOTION_KEYS:
            if k in out and context[k].shape[1] >= 2:
                out[k] = constant_velocity_step(context[k][:, -2], context[k][:, -1])
        return out


def reproject_frame(
    rgb: torch.Tensor,
    depth: torch.Tensor,
    motion_from: torch.Tensor,
    motion_to: torch.Tensor,
    memory: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The last frame (B, 3, H, W) with its depth (B, 1, H, W), seen from ``motion_from``,
    reprojected to the head pose of ``motion_to`` (B, 227); where the scene memory
    (``memory_rgb``, ``memory_depth``, ``memory_motion``: a real frame of the rollout) reprojected
    to that pose covers a pixel, the memory's pixel. Pixels neither covers keep the last frame.
    Returns float rgb, depth and the covered mask (B, 1, H, W), as ``frame_base`` composes them."""
    nm = motion_to.float()
    wr, wd, wv = warp_frame(rgb.float(), depth.float(), motion_from.float(), nm)
    if memory is not None and "memory_rgb" in memory:
        mr, md, mv = warp_frame(memory["memory_rgb"].float(), memory["memory_depth"].float(), memory["memory_motion"].float(), nm)
        wr, wd, wv = torch.where(mv, mr, wr), torch.where(mv, md, wd), wv | mv
    return wr, wd, wv


def carry_grid(
    occ: torch.Tensor,
    motion_from: torch.Tensor,
    motion_to: torch.Tensor,
    partner_to: torch.Tensor,
    voxel: float,
    memory: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The last grid (B, Z, X, Y) uint8 carried into the heading frame of ``motion_to`` with both
    bodies redrawn (``data.warp_occupancy``); where the memory grid (``memory_occupancy`` seen from
    ``memory_motion``) carried the same way covers a column, the memory's column, as
    ``occupancy_base`` composes them. New ground is free."""
    nm, npart = motion_to.float(), partner_to.float()
    grid, valid = warp_occupancy(occ, motion_from.float(), nm, npart, voxel)
    if memory is not None and "memory_occupancy" in memory:
        mg, mv = warp_occupancy(memory["memory_occupancy"], memory["memory_motion"].float(), nm, npart, voxel)
        grid = torch.where(mv, mg, grid)
    return grid


class GeometricBaseline(torch.nn.Module):
    """Frames and grid from geometry under ``model``'s own dreamed motion (no network for them).

    Each step runs ``model`` state-only (``modalities=["motion", "partner_motion", "props"]``, the
    conditional mean: one step, no initial noise, so the motion is the model's best estimate and
    not a sample); then the frame is ``reproject_frame`` of the last context frame to the dreamed
    head pose, with the rollout's real start frame as memory, and the grid ``carry_grid`` of the
    last context grid under the dreamed motion, both dreamed bodies redrawn, the start grid as
    memory. Bodies, props and reward are the model's state pass.
    """

    def __init__(self, model: Any):
        super().__init__()
        self.model = model
        self.config = model.config
        cfg_voxel = getattr(model.config, "occupancy_voxel", None)
        self.voxel = float(cfg_voxel) if cfg_voxel is not None else GridSpec().voxel

    def scene_memory(self, context: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The rollout's real start frame, depth, grid and motion (the last context step)."""
        mem = {"memory_motion": context["motion"][:, -1]}
        if "ego_rgb" in context and "ego_depth" in context:
            mem |= {"memory_rgb": context["ego_rgb"][:, -1], "memory_depth": context["ego_depth"][:, -1]}
        if "occupancy" in context:
            mem["memory_occupancy"] = context["occupancy"][:, -1]
        return mem

    @torch.no_grad()
    def imagine(
        self,
        context: dict[str, torch.Tensor],
        actions: torch.Tensor,
        num_steps: int = 1,
        modalities: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        partner_actions: torch.Tensor | None = None,
        **unused: Any,
    ) -> dict[str, torch.Tensor]:
        """The next step: the model's state pass, plus the reprojected frame and the carried grid
        when ``modalities`` asks for them (frames need ``ego_depth`` in the context)."""
        want = list(modalities) if modalities is not None else list(MODALITIES)
        extra = {} if partner_actions is None else {"partner_actions": partner_actions}
        state_ctx = {k: v for k, v in context.items() if k in (*STATE_KEYS, "instruction")}
        state = self.model.imagine(
            state_ctx, actions, num_steps=1, init_noise=0.0, modalities=list(STATE_KEYS), generator=generator, **extra
        )
        return self.follow(context, state, want)

    def follow(
        self, context: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], modalities: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The next step given the dreamed ``state`` of this step (``motion``, ``partner_motion``,
        ``props``, reward): its state, and the frame (``ego_rgb``, ``ego_depth``) and grid
        (``occupancy``) of geometry when ``modalities`` asks for them. A world model whose dream
        runs the state pass first (``ego_warp`` / ``occupancy_warp``) dreams the same state as the
        state-only pass ``imagine`` runs, so the evaluation can pass the model's own step here."""
        want = list(modalities)
        out = {k: v for k, v in state.items() if k in (*STATE_KEYS, "reward", "terminated")}
        last_motion = context["motion"][:, -1]
        if "ego_rgb" in want or "ego_depth" in want:  # both: the next reprojection needs this depth
            rgb, depth, _ = reproject_frame(context["ego_rgb"][:, -1], context["ego_depth"][:, -1], last_motion, out["motion"], context)
            out["ego_rgb"] = rgb.round().clamp(0, 255).to(torch.uint8)
            out["ego_depth"] = depth.to(context["ego_depth"].dtype)
            want += [k for k in ("ego_rgb", "ego_depth") if k not in want]
        if "occupancy" in want:
            out["occupancy"] = carry_grid(
                context["occupancy"][:, -1], last_motion, out["motion"], out["partner_motion"], self.voxel, context
            )
        return {k: v for k, v in out.items() if k in want or k in ("reward", "terminated")}


def state_pass_first(model: Any, modalities: Sequence[str]) -> bool:
    """Whether ``model`` dreams its state (bodies, props) in a pass of its own, before and without
    the frames and grid, for every subset of ``modalities`` a rollout may ask for: then its state
    is what ``imagine(modalities=["motion", "partner_motion", "props"])`` gives."""
    c = getattr(model, "config", None)
    frames = any(m in modalities for m in ("ego_rgb", "ego_depth"))
    return bool(getattr(c, "ego_warp", False) or not frames) and bool(getattr(c, "occupancy_warp", False) or "occupancy" not in modalities)
