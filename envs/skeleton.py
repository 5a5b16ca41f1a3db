"""The body's kinematic tree: the 22 SMPL-X body joints.

Joint names and parents follow ``smplx.joint_names.JOINT_NAMES[:22]`` and the SMPL-X kinematic
tree. Rest offsets are an adult of about 1.7 m in the T-pose, expressed in MuJoCo's frame
(x forward, y to the body's left, z up). SMPL-X's own canonical frame is (x left, y up, z forward),
so ``SMPLX_FROM_MUJOCO`` maps a MuJoCo vector into SMPL-X coordinates.
"""

from __future__ import annotations

import numpy as np

try:  # the names are the smplx package's; the fallback keeps this module importable alone
    from smplx.joint_names import JOINT_NAMES as _SMPLX_NAMES

    JOINT_NAMES: tuple[str, ...] = tuple(_SMPLX_NAMES[:22])
except ImportError:  # pragma: no cover - smplx is a declared dependency
    JOINT_NAMES = (
        "pelvis",
        "left_hip",
        "right_hip",
        "spine1",
        "left_knee",
        "right_knee",
        "spine2",
        "left_ankle",
        "right_ankle",
        "spine3",
        "left_foot",
        "right_foot",
        "neck",
        "left_collar",
        "right_collar",
        "head",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
    )

NUM_JOINTS = 22

# SMPL-X kinematic tree for the first 22 joints (parent index, -1 for the root).
PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)

# Offset of each joint from its parent in the rest (T-)pose, metres, MuJoCo frame.
REST_OFFSETS = np.array(
    [
        [0.0, 0.0, 0.0],  # pelvis (placed at PELVIS_HEIGHT)
        [0.0, 0.07, -0.09],  # left_hip
        [0.0, -0.07, -0.09],  # right_hip
        [-0.02, 0.0, 0.11],  # spine1
        [0.01, 0.0, -0.38],  # left_knee
        [0.01, 0.0, -0.38],  # right_knee
        [0.0, 0.0, 0.13],  # spine2
        [-0.04, 0.0, -0.40],  # left_ankle
        [-0.04, 0.0, -0.40],  # right_ankle
        [0.02, 0.0, 0.055],  # spine3
        [0.12, 0.0, -0.04],  # left_foot
        [0.12, 0.0, -0.04],  # right_foot
        [-0.03, 0.0, 0.21],  # neck
        [-0.01, 0.08, 0.12],  # left_collar
        [-0.01, -0.08, 0.12],  # right_collar
        [0.05, 0.0, 0.09],  # head
        [-0.02, 0.12, 0.045],  # left_shoulder
        [-0.02, -0.12, 0.045],  # right_shoulder
        [0.0, 0.26, 0.0],  # left_elbow
        [0.0, -0.26, 0.0],  # right_elbow
        [0.0, 0.25, 0.0],  # left_wrist
        [0.0, -0.25, 0.0],  # right_wrist
    ],
    dtype=np.float64,
)

PELVIS_HEIGHT = 0.93  # pelvis above the floor when standing, metres

# Maps a MuJoCo-frame vector v to SMPL-X coordinates: SMPLX_FROM_MUJOCO @ v.
SMPLX_FROM_MUJOCO = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def children(joint: int) -> list[int]:
    """Indices of the joints whose parent is ``joint``."""
    return [j for j, p in enumerate(PARENTS) if p == joint]


def rest_positions() -> np.ndarray:
    """(22, 3) joint positions of the rest pose relative to the pelvis, MuJoCo frame."""
    pos = np.zeros((NUM_JOINTS, 3))
    for j in range(1, NUM_JOINTS):
        pos[j] = pos[PARENTS[j]] + REST_OFFSETS[j]
    return pos


# Bones drawn between a joint and its parent (child index), used by occupancy and viewers.
BONES: tuple[tuple[int, int], ...] = tuple((PARENTS[j], j) for j in range(1, NUM_JOINTS))
