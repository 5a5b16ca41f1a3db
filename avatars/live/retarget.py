"""A headset and two controllers onto the partner's SMPL-X skeleton (one world, numpy + C MuJoCo).

Frames. The page sends poses in its WebXR reference space (``local-floor``: x right, y up, -z
forward, metres, the floor at y = 0), whose origin and forward direction at the session's start
are put on the partner's start position and heading in the room. A WebXR vector (x, y, z) is
(-z, -x, y) in a MuJoCo body frame (x forward, y left, z up); ``SessionFrame`` adds the start pose.

Retargeting (``Retargeter.retarget``), per frame:
- **root** from the head's floor projection: the pelvis sits where the avatar's rest pose puts it
  under the eyes; the heading is the head's yaw; the pelvis height follows the eye height relative
  to the eye height of the first frame (crouching lowers it, at most ``CROUCH`` metres);
- **head and neck** from the head's pitch, split between neck and head as the body's controller
  splits a commanded head pitch (0.3 / 0.7);
- **wrists** from the controllers (or hand-tracking wrists): shoulder flex/abduction and the elbow
  solved by damped least squares on the body's own kinematics (C MuJoCo ``mj_jacBody``), so the
  wrist lands where the controller is when it can be reached; a missing controller leaves that
  arm hanging. Wrist orientation is not used (the skeleton has no wrist joint);
- **legs** step with the walking gait of the body's controller at the root's measured velocity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from dreamgym.envs import scene, skeleton
from dreamgym.envs.controller import MAX_FORWARD, MAX_HEAD_PITCH, MAX_LATERAL, MAX_YAW_RATE, GaitState, actuator_targets

CROUCH = 0.45  # metres the pelvis may drop below standing
IK_ITERATIONS = 8
IK_DAMPING = 0.02
IK_TOLERANCE = 0.005  # metres: a wrist this close to its controller is done
XR_TO_MJ = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # WebXR vector -> MuJoCo body frame
HEAD, LEFT_WRIST, RIGHT_WRIST = 15, 20, 21
ARM_JOINTS = {LEFT_WRIST: ("l_sh_flex", "l_sh_abd", "l_elbow"), RIGHT_WRIST: ("r_sh_flex", "r_sh_abd", "r_elbow")}
LIMB = {n: i for i, n in enumerate(scene.LIMB_JOINT_NAMES)}


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a unit quaternion (x, y, z, w), WebXR's order."""
    x, y, z, w = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class SessionFrame:
    """Where the WebXR origin lies in the room: the partner's start position (x, y) and heading."""

    origin: tuple[float, float]
    yaw: float

    def point_to_world(self, p: np.ndarray) -> np.ndarray:
        """A WebXR point (3,) as a MuJoCo world point."""
        return yaw_matrix(self.yaw) @ (XR_TO_MJ @ np.asarray(p, float)) + np.array([*self.origin, 0.0])

    def rotation_to_world(self, q: np.ndarray) -> np.ndarray:
        """A WebXR orientation (x, y, z, w) as a MuJoCo world rotation (3, 3) of a body frame (x forward)."""
        r = XR_TO_MJ @ quat_to_matrix(q) @ XR_TO_MJ.T
        return yaw_matrix(self.yaw) @ r

    def points_from_world(self, p: np.ndarray) -> np.ndarray:
        """MuJoCo world points (..., 3) in the WebXR frame (what the page draws)."""
        local = (np.asarray(p, float) - np.array([*self.origin, 0.0])) @ yaw_matrix(self.yaw)  # R^T p
        return local @ XR_TO_MJ  # XR_TO_MJ^T applied to row vectors


@dataclass
class PartnerPose:
    """The retargeted partner: joint angles and velocities (23,) in ``EgoRoomVecEnv.set_partner_pose``
    order, and the 22 joints' world positions (22, 3) and orientations (22, 4, w first)."""

    qpos: np.ndarray
    qvel: np.ndarray
    joints: np.ndarray
    quats: np.ndarray


class Retargeter:
    """Headset (+ controllers) -> partner pose, one frame at a time (see the module docstring)."""

    def __init__(self, frame: SessionFrame, mjm: mujoco.MjModel | None = None, dt: float = scene.CONTROL_DT):
        self.frame = frame
        self.dt = float(dt)
        self.m = mjm if mjm is not None else mujoco.MjModel.from_xml_string(scene.build_mjcf())
        self.d = mujoco.MjData(self.m)
        J = mujoco.mjtObj.mjOBJ_JOINT
        names = [f"p_{n}" for n in (*scene.ROOT_JOINTS, *scene.LIMB_JOINT_NAMES)]
        ids = [mujoco.mj_name2id(self.m, J, n) for n in names]
        self.qadr = np.array([self.m.jnt_qposadr[i] for i in ids])
        self.dadr = np.array([self.m.jnt_dofadr[i] for i in ids])
        self.bodies = np.array([mujoco.mj_name2id(self.m, mujoco.mjtObj.mjOBJ_BODY, "p_" + n) for n in skeleton.JOINT_NAMES])
        rest = skeleton.rest_positions()
        self.eye_rest = rest[HEAD] + np.array(scene.EGO_CAM_POS)  # eyes from the pelvis, standing, facing +x
        self.gait = GaitState.zeros(1)
        self.eye_height0: float | None = None
        self.prev: np.ndarray | None = None
        self._jacp = np.zeros((3, self.m.nv))

    def retarget(self, head_pos, head_quat, wrists: dict[int, np.ndarray] | None = None) -> PartnerPose:
        """The partner pose for a head pose (WebXR position (3,), quaternion (4,) x y z w) and the
        wrist positions present (``{LEFT_WRIST: (3,), RIGHT_WRIST: (3,)}``, WebXR frame)."""
        eye = self.frame.point_to_world(head_pos)
        rot = self.frame.rotation_to_world(head_quat)
        fwd = rot[:, 0]
        yaw = math.atan2(fwd[1], fwd[0])
        pitch = -math.asin(max(-1.0, min(1.0, fwd[2])))  # positive: looking down
        if self.eye_height0 is None:
            self.eye_height0 = float(eye[2])
        root_xy = eye[:2] - (yaw_matrix(yaw) @ self.eye_rest)[:2]
        root_z = float(np.clip(eye[2] - self.eye_height0, -CROUCH, 0.05))
        q = np.zeros(len(self.qadr))
        q[:4] = root_xy[0], root_xy[1], root_z, yaw
        if self.prev is not None:  # keep the yaw continuous so its rate is right
            q[3] = self.prev[3] + (yaw - self.prev[3] + math.pi) % (2 * math.pi) - math.pi
        q[4:] = self._gait_angles(q)
        head_pitch = float(np.clip(pitch, -MAX_HEAD_PITCH, MAX_HEAD_PITCH))
        q[4 + LIMB["neck_pitch"]] = 0.3 * head_pitch
        q[4 + LIMB["head_pitch"]] = 0.7 * head_pitch
        q[4 + LIMB["head_yaw"]] = 0.0  # the body turns with the head
        self._solve_arms(q, {j: self.frame.point_to_world(p) for j, p in (wrists or {}).items()})
        qvel = np.zeros_like(q) if self.prev is None else (q - self.prev) / self.dt
        self.prev = q.copy()
        return PartnerPose(q, qvel, self.d.xpos[self.bodies].copy(), self.d.xquat[self.bodies].copy())

    def _gait_angles(self, q: np.ndarray) -> np.ndarray:
        """Limb angles (19,) of the controller's gait at the root's velocity since the last frame."""
        act = torch.zeros(1, 6)
        if self.prev is not None:
            v = (q[:2] - self.prev[:2]) / self.dt
            c, s = math.cos(q[3]), math.sin(q[3])
            act[0, 0] = (c * v[0] + s * v[1]) / MAX_FORWARD
            act[0, 1] = (-s * v[0] + c * v[1]) / MAX_LATERAL
            act[0, 2] = (q[3] - self.prev[3]) / self.dt / MAX_YAW_RATE
        act = act.clamp(-1.0, 1.0)
        act[:, 0:3] = torch.where(act[:, 0:3].abs() < 0.08, 0.0, act[:, 0:3])  # headset jitter is not a step
        return actuator_targets(act, torch.tensor([float(q[3])]), self.gait)[0, 4:].numpy().astype(np.float64)

    def _solve_arms(self, q: np.ndarray, targets: dict[int, np.ndarray]) -> None:
        """Set the arm angles in ``q`` so that the wrists reach ``targets`` (world); leaves the
        model's kinematics at the final pose. Each arm starts from its last frame's solution (a
        hand moves little in 50 ms), and the iterations stop once every wrist is within
        ``IK_TOLERANCE`` of its target."""
        if self.prev is not None:
            for j in targets:
                cols = [4 + LIMB[n] for n in ARM_JOINTS[j]]
                q[cols] = self.prev[cols]
        self._kinematics(q, jacobians=bool(targets))
        for _ in range(IK_ITERATIONS if targets else 0):
            errs = {j: target - self.d.xpos[self.bodies[j]] for j, target in targets.items()}
            if max(float(np.abs(e).max()) for e in errs.values()) < IK_TOLERANCE:
                break
            for j, target in targets.items():
                cols = [4 + LIMB[n] for n in ARM_JOINTS[j]]
                err = target - self.d.xpos[self.bodies[j]]
                mujoco.mj_jacBody(self.m, self.d, self._jacp, None, int(self.bodies[j]))
                Jm = self._jacp[:, self.dadr[cols]]
                step = Jm.T @ np.linalg.solve(Jm @ Jm.T + IK_DAMPING * np.eye(3), err)
                q[cols] += np.clip(step, -0.5, 0.5)
            self._kinematics(q, jacobians=True)

    def _kinematics(self, q: np.ndarray, jacobians: bool) -> None:
        self.d.qpos[self.qadr] = q
        mujoco.mj_kinematics(self.m, self.d)
        if jacobians:
            mujoco.mj_comPos(self.m, self.d)  # the joint axes mj_jacBody reads
