"""Motion vectors (either side, simulator or dream) to SMPL-X parameters, and back.

The body's joints are the 22 SMPL-X body joints with SMPL-X's tree, and each joint's rest frame is
aligned with the world, as in SMPL-X. So a local rotation in the motion vector is SMPL-X's local
rotation expressed in MuJoCo axes, and converting is a change of basis: with
``C = skeleton.SMPLX_FROM_MUJOCO``, ``R_smplx = C R_mujoco C^T`` for every rotation and
``p_smplx = C p_mujoco`` for every position.

What carries over and what does not: the joint topology and the rotation semantics are SMPL-X's,
so the parameters drive a real SMPL-X model. The rest skeleton is ours (``skeleton.REST_OFFSETS``,
an approximate adult of about 1.7 m), not a SMPL-X body shape; ``joints`` here are forward
kinematics of *our* skeleton. With a SMPL-X model the body shape comes from ``betas`` (zeros: the
mean shape), so its joints sit a few centimetres from ours while moving the same way.

``transl`` is the pelvis position in SMPL-X's frame (y up, z forward), metres. SMPL-X itself adds
``transl`` to a body whose rest pelvis sits at ``J_0(betas)``, not at the origin; ``avatars.mesh``
subtracts ``J_0(betas)`` so the mesh's pelvis lands on ours, and a consumer driving its own model
should do the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..envs.motion import split_motion
from ..envs.skeleton import NUM_JOINTS, REST_OFFSETS, SMPLX_FROM_MUJOCO
from .kinematics import (
    as_float_array,
    as_motion_array,
    check_finite,
    forward_kinematics,
    motion_from_pose,
    quat_wxyz_to_rotmat,
    rotmat_to_quat_wxyz,
)

NUM_BETAS = 10
NUM_BODY_POSE_JOINTS = NUM_JOINTS - 1  # SMPL-X body_pose: every body joint but the pelvis

# Rest offsets of our skeleton in SMPL-X's frame, metres.
SMPLX_REST_OFFSETS = REST_OFFSETS @ SMPLX_FROM_MUJOCO.T


@dataclass(frozen=True)
class SmplxParams:
    """SMPL-X parameters of a T-frame sequence, SMPL-X frame (x left, y up, z forward), metres."""

    global_orient: np.ndarray  # (T, 3) axis-angle of the pelvis, world
    body_pose: np.ndarray  # (T, 21, 3) axis-angle of joints 1..21 relative to their parents
    transl: np.ndarray  # (T, 3) pelvis position
    betas: np.ndarray  # (num_betas,) shape coefficients; zeros = SMPL-X mean shape
    joints: np.ndarray  # (T, 22, 3) joint positions by forward kinematics of our rest skeleton

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.transl.shape[0])

    def local_rotmats(self) -> np.ndarray:
        """(T, 22, 3, 3) local rotation matrices in SMPL-X's frame; joint 0 is the global one."""
        return pose_to_rotmats(self.global_orient, self.body_pose)


def pose_to_rotmats(global_orient: np.ndarray, body_pose: np.ndarray) -> np.ndarray:
    """(T, 3) and (T, 21, 3) axis-angle to (T, 22, 3, 3) local rotation matrices."""
    rotvecs = np.concatenate((global_orient[:, None], body_pose), axis=1)
    return Rotation.from_rotvec(rotvecs.reshape(-1, 3)).as_matrix().reshape(-1, NUM_JOINTS, 3, 3)


def _check_betas(betas: Any) -> np.ndarray:
    if betas is None:
        return np.zeros(NUM_BETAS)
    array = as_float_array(betas, "betas")
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"betas has shape {tuple(array.shape)}, expected (num_betas,), e.g. (10,)")
    check_finite(array, "betas")
    return array


def motion_to_smplx(motion: Any, betas: Any = None) -> SmplxParams:
    """SMPL-X parameters of a motion sequence (T, 227), numpy or torch.

    Rotations are read from the motion's quaternions (normalised here, so slightly off-norm dreamed
    quaternions are fine); the pelvis position from its root position. ``betas`` (num_betas,)
    defaults to zeros(10). Raises ValueError for a wrong shape, NaN/inf or a zero quaternion.
    """
    array = as_motion_array(motion)
    parts = split_motion(torch.from_numpy(array))
    local_mj = quat_wxyz_to_rotmat(parts["joint_rot"].numpy())  # (T, 22, 3, 3)
    C = SMPLX_FROM_MUJOCO
    local = C @ local_mj @ C.T
    transl = parts["root_pos"].numpy() @ C.T
    rotvecs = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_rotvec().reshape(-1, NUM_JOINTS, 3)
    joints, _ = forward_kinematics(transl, local, SMPLX_REST_OFFSETS)
    return SmplxParams(
        global_orient=rotvecs[:, 0],
        body_pose=rotvecs[:, 1:],
        transl=transl,
        betas=_check_betas(betas),
        joints=joints,
    )


def smplx_to_joints(global_orient: Any, body_pose: Any, transl: Any) -> np.ndarray:
    """Joint positions (T, 22, 3), SMPL-X frame, by forward kinematics of our rest skeleton.

    global_orient (T, 3) and body_pose (T, 21, 3) or (T, 63) are axis-angle; transl (T, 3) is the
    pelvis position (the convention of ``motion_to_smplx``).
    """
    orient = as_float_array(global_orient, "global_orient")
    pose = as_float_array(body_pose, "body_pose")
    root = as_float_array(transl, "transl")
    if orient.ndim != 2 or orient.shape[1] != 3:
        raise ValueError(f"global_orient has shape {tuple(orient.shape)}, expected (T, 3)")
    T = orient.shape[0]
    if pose.shape == (T, NUM_BODY_POSE_JOINTS * 3):
        pose = pose.reshape(T, NUM_BODY_POSE_JOINTS, 3)
    if pose.shape != (T, NUM_BODY_POSE_JOINTS, 3):
        raise ValueError(f"body_pose has shape {tuple(pose.shape)}, expected ({T}, 21, 3) or ({T}, 63)")
    if root.shape != (T, 3):
        raise ValueError(f"transl has shape {tuple(root.shape)}, expected ({T}, 3)")
    for name, value in (("global_orient", orient), ("body_pose", pose), ("transl", root)):
        check_finite(value, name)
    joints, _ = forward_kinematics(root, pose_to_rotmats(orient, pose), SMPLX_REST_OFFSETS)
    return joints


def smplx_to_motion(params: SmplxParams, dt: float) -> np.ndarray:
    """Motion vectors (T, 227), MuJoCo frame, of SMPL-X parameters (the inverse of
    ``motion_to_smplx``). ``dt`` is the time between frames, for the joint velocities."""
    C = SMPLX_FROM_MUJOCO
    local_mj = C.T @ params.local_rotmats() @ C
    root_pos = params.transl @ C  # row-vector form of C^T p
    return motion_from_pose(root_pos, rotmat_to_quat_wxyz(local_mj), dt)
