"""The body's built-in controller: a small action in, actuator targets out (batched, torch).

Action (6 floats, each in [-1, 1]; values outside are clipped by the envs):

=====  ===============  =============================================================
index  name             meaning at +1
=====  ===============  =============================================================
0      forward          walk forward at ``MAX_FORWARD`` m/s (-1: backwards)
1      lateral          side-step to the left at ``MAX_LATERAL`` m/s
2      yaw_rate         turn left at ``MAX_YAW_RATE`` rad/s
3      head_yaw         head turned left by ``MAX_HEAD_YAW`` rad
4      head_pitch       head tilted down by ``MAX_HEAD_PITCH`` rad
5      arm              right arm: <= 0 hanging, 0.5 reaching forward (horizontal), 1 raised
                        overhead; above ``WAVE_LEVEL`` the forearm waves
=====  ===============  =============================================================

The controller turns the walking command into a gait (hips, knees and ankles swing with a phase
that advances with speed; arms counter-swing; the trunk bobs and twists), so every action moves
the whole body, and the root is driven by velocity servos so that walls and props resist it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .scene import CONTROL_DT, LIMB_JOINT_NAMES, N_ACT_PER_BODY

ACTION_DIM = 6
ACTION_NAMES = ("forward", "lateral", "yaw_rate", "head_yaw", "head_pitch", "arm")
MAX_FORWARD = 1.2
MAX_LATERAL = 0.6
MAX_YAW_RATE = 2.0
MAX_HEAD_YAW = 1.0
MAX_HEAD_PITCH = 0.6
WAVE_LEVEL = 0.75  # arm level (0..1) above which the forearm waves
ARM_DOWN_ABD = -1.35  # shoulder abduction that lets the arms hang by the sides
_J = {name: i for i, name in enumerate(LIMB_JOINT_NAMES)}


@dataclass
class GaitState:
    """Per-world controller state: gait phase and wave phase, (B,) each."""

    phase: torch.Tensor
    wave_phase: torch.Tensor

    @classmethod
    def zeros(cls, n: int, device: torch.device | str = "cpu") -> GaitState:
        return cls(torch.zeros(n, device=device), torch.zeros(n, device=device))

    def reset(self, mask: torch.Tensor) -> None:
        self.phase[mask] = 0.0
        self.wave_phase[mask] = 0.0


def actuator_targets(action: torch.Tensor, yaw: torch.Tensor, gait: GaitState, dt: float = CONTROL_DT) -> torch.Tensor:
    """Actuator controls (B, N_ACT_PER_BODY) for one humanoid; advances ``gait`` in place.

    ``action`` (B, 6) must already be validated and clipped to [-1, 1]; ``yaw`` (B,) is the body's
    current heading. Root controls are world-frame velocities (x, y), a pelvis height offset and
    a yaw rate; limb controls are joint angle targets in ``LIMB_JOINT_NAMES`` order.
    """
    B = action.shape[0]
    fwd = action[:, 0] * MAX_FORWARD
    lat = action[:, 1] * MAX_LATERAL
    yaw_rate = action[:, 2] * MAX_YAW_RATE
    speed = torch.sqrt(fwd * fwd + lat * lat)
    # Stepping intensity: walking, or turning on the spot.
    s = torch.clamp(torch.maximum(speed / MAX_FORWARD, 0.35 * yaw_rate.abs() / MAX_YAW_RATE), 0.0, 1.0)
    freq = 0.9 + 0.9 * s  # gait cycles per second
    moving = s > 0.03
    gait.phase = torch.where(moving, torch.remainder(gait.phase + 2 * math.pi * freq * dt, 2 * math.pi), gait.phase)
    gait.wave_phase = torch.remainder(gait.wave_phase + 2 * math.pi * 2.0 * dt, 2 * math.pi)
    ph = gait.phase
    sin, cos = torch.sin(ph), torch.cos(ph)
    direction = torch.where(fwd < -0.05, -1.0, 1.0)
    amp = s * moving

    ctrl = torch.zeros(B, N_ACT_PER_BODY, device=action.device, dtype=action.dtype)
    c, sn = torch.cos(yaw), torch.sin(yaw)
    ctrl[:, 0] = c * fwd - sn * lat
    ctrl[:, 1] = sn * fwd + c * lat
    ctrl[:, 2] = 0.018 * amp * torch.cos(2 * ph) - 0.02 * amp  # bob: lowest at double support
    ctrl[:, 3] = yaw_rate

    limb = ctrl[:, 4:]
    hip = 0.5 * amp * sin * direction
    limb[:, _J["l_hip_flex"]] = hip
    limb[:, _J["r_hip_flex"]] = -hip
    side = 0.18 * (lat / MAX_LATERAL) * sin.abs()
    limb[:, _J["l_hip_abd"]] = side
    limb[:, _J["r_hip_abd"]] = -side
    limb[:, _J["l_knee"]] = 0.05 + 0.9 * amp * torch.clamp(cos, min=0.0)
    limb[:, _J["r_knee"]] = 0.05 + 0.9 * amp * torch.clamp(-cos, min=0.0)
    limb[:, _J["l_ankle"]] = -0.25 * amp * sin * direction
    limb[:, _J["r_ankle"]] = 0.25 * amp * sin * direction
    limb[:, _J["spine_flex"]] = 0.03 + 0.08 * amp
    limb[:, _J["spine_twist"]] = -0.12 * amp * sin * direction
    head_yaw = action[:, 3] * MAX_HEAD_YAW
    head_pitch = action[:, 4] * MAX_HEAD_PITCH
    limb[:, _J["neck_pitch"]] = 0.3 * head_pitch
    limb[:, _J["head_yaw"]] = head_yaw
    limb[:, _J["head_pitch"]] = 0.7 * head_pitch
    swing = 0.45 * amp * sin * direction
    limb[:, _J["l_sh_flex"]] = -swing
    limb[:, _J["l_sh_abd"]] = ARM_DOWN_ABD
    limb[:, _J["l_elbow"]] = 0.25 + 0.25 * amp
    # Right arm: blend from the walking swing to the commanded level.
    level = torch.clamp(action[:, 5], 0.0, 1.0)  # 0 hanging .. 1 overhead
    w = torch.clamp(level / 0.2, 0.0, 1.0)
    waving = level > WAVE_LEVEL
    limb[:, _J["r_sh_flex"]] = (1 - w) * swing + w * torch.clamp(level * math.pi, max=2.7)
    limb[:, _J["r_sh_abd"]] = ARM_DOWN_ABD + w * 0.25
    limb[:, _J["r_elbow"]] = torch.where(waving, 0.6 + 0.5 * torch.sin(gait.wave_phase), (1 - w) * (0.25 + 0.25 * amp) + w * 0.1)
    return ctrl


def neutral_limb_angles() -> torch.Tensor:
    """(n_limb_joints,) joint angles of the standing pose (what a zero action holds)."""
    ctrl = actuator_targets(torch.zeros(1, ACTION_DIM), torch.zeros(1), GaitState.zeros(1))
    return ctrl[0, 4:]
