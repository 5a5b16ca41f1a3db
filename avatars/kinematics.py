"""Forward kinematics of the 22-joint skeleton, and motion vectors built from a pose sequence.

Everything here is numpy, time first: a sequence of T frames has shapes like (T, 22, 3). The
functions are frame-agnostic: fed MuJoCo offsets and rotations they answer in MuJoCo's frame,
fed offsets and rotations mapped into SMPL-X's frame they answer in SMPL-X's frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..envs.motion import MOTION_DIM, compute_motion, split_motion
from ..envs.skeleton import NUM_JOINTS, PARENTS, PELVIS_HEIGHT, REST_OFFSETS


def as_float_array(value: Any, name: str) -> np.ndarray:
    """``value`` (numpy array, torch tensor or nested sequence) as a float64 numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be read as a float array: {err}") from err


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ValueError naming the first non-finite entry of ``array``."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s), first {array[first]} at index {first}")


def as_motion_array(motion: Any) -> np.ndarray:
    """Validate a motion sequence (T, 227), numpy or torch, and return it as float64 numpy.

    Raises ValueError for a wrong shape, an empty sequence, NaN/inf entries or a zero
    quaternion (which no rotation can be read from).
    """
    array = as_float_array(motion, "motion")
    if array.ndim != 2 or array.shape[1] != MOTION_DIM:
        raise ValueError(f"motion has shape {tuple(array.shape)}, expected (T, {MOTION_DIM})")
    if array.shape[0] == 0:
        raise ValueError("motion has no frames (shape (0, 227)); expected at least one")
    check_finite(array, "motion")
    parts = split_motion(torch.from_numpy(array))
    for name in ("root_quat", "joint_rot"):
        norms = np.linalg.norm(parts[name].numpy(), axis=-1)
        if (norms < 1e-6).any():
            frame = int(np.argwhere(norms < 1e-6)[0][0])
            raise ValueError(f"motion {name} has a zero-length quaternion at frame {frame}")
    return array


def forward_kinematics(root_pos: np.ndarray, local_rotmats: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions and global rotations of the 22-joint tree.

    root_pos (T, 3): the pelvis position. local_rotmats (T, 22, 3, 3): each joint's rotation
    relative to its parent (joint 0: the global orientation). offsets (22, 3): rest offset of each
    joint from its parent, in the same frame. Returns positions (T, 22, 3) and global rotation
    matrices (T, 22, 3, 3).
    """
    T = root_pos.shape[0]
    positions = np.empty((T, NUM_JOINTS, 3))
    global_rot = np.empty((T, NUM_JOINTS, 3, 3))
    positions[:, 0] = root_pos
    global_rot[:, 0] = local_rotmats[:, 0]
    for j in range(1, NUM_JOINTS):  # parents come before children in SMPL-X order
        p = PARENTS[j]
        global_rot[:, j] = global_rot[:, p] @ local_rotmats[:, j]
        positions[:, j] = positions[:, p] + global_rot[:, p] @ offsets[j]
    return positions, global_rot


def quat_wxyz_to_rotmat(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z), normalised here, to (..., 3, 3) rotation matrices."""
    flat = quat.reshape(-1, 4)
    return Rotation.from_quat(flat, scalar_first=True).as_matrix().reshape(*quat.shape[:-1], 3, 3)


def rotmat_to_quat_wxyz(rotmat: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices to (..., 4) unit quaternions (w, x, y, z) with w >= 0."""
    flat = Rotation.from_matrix(rotmat.reshape(-1, 3, 3)).as_quat(canonical=True, scalar_first=True)
    return flat.reshape(*rotmat.shape[:-2], 4)


def motion_from_pose(root_pos: Any, local_quats: Any, dt: float) -> np.ndarray:
    """Motion vectors (T, 227) of a pose sequence, MuJoCo frame.

    root_pos (T, 3): pelvis position, world. local_quats (T, 22, 4): joint rotations (w, x, y, z)
    relative to the parent, joint 0 holding the global orientation (the layout of
    ``envs.motion``). dt: seconds between frames, for the joint velocities (zero on frame 0).
    The vector is computed by ``envs.motion.compute_motion``, the simulator's own code, from the
    world joint poses that forward kinematics of the rest skeleton gives. Returns float32.
    """
    root = as_float_array(root_pos, "root_pos")
    quats = as_float_array(local_quats, "local_quats")
    if root.ndim != 2 or root.shape[1] != 3:
        raise ValueError(f"root_pos has shape {tuple(root.shape)}, expected (T, 3)")
    if quats.shape != (root.shape[0], NUM_JOINTS, 4):
        raise ValueError(f"local_quats has shape {tuple(quats.shape)}, expected ({root.shape[0]}, 22, 4)")
    if not dt > 0:
        raise ValueError(f"dt is {dt}, expected a positive number of seconds")
    check_finite(root, "root_pos")
    check_finite(quats, "local_quats")
    positions, global_rot = forward_kinematics(root, quat_wxyz_to_rotmat(quats), REST_OFFSETS)
    xpos = torch.from_numpy(positions)
    xquat = torch.from_numpy(rotmat_to_quat_wxyz(global_rot))
    prev = torch.cat((xpos[:1], xpos[:-1]))  # frame 0 is its own predecessor: zero velocity
    return compute_motion(xpos, xquat, prev, dt).numpy()


def stored_joint_positions_world(motion: Any) -> np.ndarray:
    """World joint positions (T, 22, 3), MuJoCo frame, from the motion's root-frame positions.

    These are the positions the motion vector stores (slice [7:73]), not forward kinematics of its
    rotations; for simulator motion the two agree, for dreamed motion they may not.
    """
    parts = split_motion(torch.from_numpy(as_motion_array(motion)))
    w, x, y, z = parts["root_quat"].numpy().T
    yaw = np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))
    heading = Rotation.from_euler("z", yaw[:, None]).as_matrix()  # (T, 3, 3), root frame -> world
    rel = parts["joint_pos"].numpy()
    return parts["root_pos"].numpy()[:, None] + np.einsum("tij,tkj->tki", heading, rel)


def rest_pelvis_position() -> np.ndarray:
    """(3,) pelvis position of the standing rest pose in the world, MuJoCo frame."""
    return np.array([0.0, 0.0, PELVIS_HEIGHT])
