"""The body-motion vector: layout, and its computation from simulator state (batched, torch).

One motion vector describes one humanoid (agent or partner) at one step. Frames: *world* is the
room (MuJoCo, z up); the *root frame* is the heading frame at the pelvis (origin at the pelvis,
x along the body's facing direction, z up). Layout of the ``MOTION_DIM = 227`` floats:

==========  =======  =====================================================================
slice       shape    meaning
==========  =======  =====================================================================
[0:3]       (3,)     root (pelvis) position, world, metres
[3:7]       (4,)     root orientation, world, unit quaternion (w, x, y, z)
[7:73]      (22, 3)  joint positions in the root frame, metres, SMPL-X joint order
[73:161]    (22, 4)  joint local rotations (w, x, y, z): each joint's rotation relative to its
                     parent's, measured from the T-pose rest frame; joint 0 (pelvis) holds the
                     global orientation. With the rest frames of ``skeleton`` these are SMPL-X's
                     local joint rotations expressed in MuJoCo axes.
[161:227]   (22, 3)  joint linear velocities in the root frame, m/s (finite difference over one
                     control step; zero on the first step of an episode)
==========  =======  =====================================================================
"""

from __future__ import annotations

import torch

from .skeleton import NUM_JOINTS, PARENTS

ROOT_POS = slice(0, 3)
ROOT_QUAT = slice(3, 7)
JOINT_POS = slice(7, 7 + NUM_JOINTS * 3)
JOINT_ROT = slice(JOINT_POS.stop, JOINT_POS.stop + NUM_JOINTS * 4)
JOINT_VEL = slice(JOINT_ROT.stop, JOINT_ROT.stop + NUM_JOINTS * 3)
MOTION_DIM = JOINT_VEL.stop
assert MOTION_DIM == 227

_PARENT_IDX = torch.tensor([max(p, 0) for p in PARENTS])
_PARENT_IDX_ON: dict[torch.device, torch.Tensor] = {}


def _parent_index(device: torch.device) -> torch.Tensor:
    """``_PARENT_IDX`` on ``device``, copied there once rather than every step."""
    if device not in _PARENT_IDX_ON:
        _PARENT_IDX_ON[device] = _PARENT_IDX.to(device)
    return _PARENT_IDX_ON[device]


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of (..., 4) quaternions (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_conj(q: torch.Tensor) -> torch.Tensor:
    """Conjugate (the inverse for unit quaternions) of (..., 4) quaternions."""
    return torch.cat((q[..., :1], -q[..., 1:]), dim=-1)  # no constant tensor: that would be a host-to-device copy per call


def yaw_of_quat(q: torch.Tensor) -> torch.Tensor:
    """Heading angle (rotation about world z) of (..., 4) quaternions."""
    w, x, y, z = q.unbind(-1)
    return torch.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def rotate_to_heading(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Express world vectors (B, ..., 3) in the heading frame of ``yaw`` (B,)."""
    c = torch.cos(yaw).view(-1, *([1] * (v.dim() - 2)))
    s = torch.sin(yaw).view(-1, *([1] * (v.dim() - 2)))
    x, y, z = v.unbind(-1)
    return torch.stack((c * x + s * y, -s * x + c * y, z), dim=-1)


def compute_motion(joint_xpos: torch.Tensor, joint_xquat: torch.Tensor, prev_joint_xpos: torch.Tensor | None, dt: float) -> torch.Tensor:
    """Motion vectors (B, 227) from world joint positions (B, 22, 3) and orientations (B, 22, 4).

    ``joint_xquat`` are the bodies' world orientations; because every body's rest frame is aligned
    with the world, the local rotation of joint j is ``conj(q_parent) * q_j``. ``prev_joint_xpos``
    (B, 22, 3) is the previous step's world positions (None on the first step: zero velocities).
    """
    B = joint_xpos.shape[0]
    root_pos = joint_xpos[:, 0]
    root_quat = joint_xquat[:, 0]
    yaw = yaw_of_quat(root_quat)
    rel = rotate_to_heading(joint_xpos - root_pos[:, None], yaw)
    parent_q = joint_xquat[:, _parent_index(joint_xquat.device)]
    local = quat_mul(quat_conj(parent_q), joint_xquat)
    local[:, 0] = root_quat
    local = local * torch.where(local[..., :1] < 0, -1.0, 1.0)  # canonical sign: w >= 0
    if prev_joint_xpos is None:
        vel = torch.zeros_like(rel)
    else:
        vel = rotate_to_heading((joint_xpos - prev_joint_xpos) / dt, yaw)
    return torch.cat((root_pos, root_quat, rel.reshape(B, -1), local.reshape(B, -1), vel.reshape(B, -1)), dim=-1).to(torch.float32)


def split_motion(motion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named views of (..., 227) motion vectors: root_pos, root_quat, joint_pos, joint_rot, joint_vel."""
    lead = motion.shape[:-1]
    return {
        "root_pos": motion[..., ROOT_POS],
        "root_quat": motion[..., ROOT_QUAT],
        "joint_pos": motion[..., JOINT_POS].reshape(*lead, NUM_JOINTS, 3),
        "joint_rot": motion[..., JOINT_ROT].reshape(*lead, NUM_JOINTS, 4),
        "joint_vel": motion[..., JOINT_VEL].reshape(*lead, NUM_JOINTS, 3),
    }
