"""Where things are in the compiled model, and the per-room values both backends write.

``SceneIndex`` finds bodies, geoms, joints and actuators by name once. ``room_geom_fields`` and
``initial_qpos`` turn a ``RoomSpec`` into the model-field values and initial state of one world;
the C MuJoCo backend writes them into its ``MjModel``/``MjData`` and the MuJoCo Warp backend into
row ``i`` of its per-world arrays, so both see the same room for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from . import scene, skeleton
from .controller import neutral_limb_angles


def _id(m: mujoco.MjModel, kind: mujoco.mjtObj, name: str) -> int:
    i = mujoco.mj_name2id(m, kind, name)
    if i < 0:
        raise KeyError(f"model has no {kind.name} named {name!r}")
    return i


@dataclass(frozen=True)
class SceneIndex:
    """Indices into a model compiled from ``scene.build_mjcf()``."""

    agent_bodies: np.ndarray  # (22,) body ids in SMPL-X joint order
    partner_bodies: np.ndarray  # (22,)
    prop_bodies: np.ndarray  # (N_PROPS,)
    prop_geoms: np.ndarray  # (N_PROPS,)
    wall_geoms: np.ndarray  # (4,)
    furniture_geoms: np.ndarray  # (N_FURNITURE,)
    floor_geom: int
    mat_geom: int
    agent_root_qpos: np.ndarray  # (4,) qpos addresses of x, y, z, yaw
    partner_root_qpos: np.ndarray  # (4,)
    prop_qpos: np.ndarray  # (N_PROPS,) address of each free joint's 7 numbers
    agent_act: slice
    partner_act: slice
    ego_camera: int
    overhead_camera: int

    @classmethod
    def from_model(cls, m: mujoco.MjModel) -> SceneIndex:
        B, G, J, C = mujoco.mjtObj.mjOBJ_BODY, mujoco.mjtObj.mjOBJ_GEOM, mujoco.mjtObj.mjOBJ_JOINT, mujoco.mjtObj.mjOBJ_CAMERA
        names = skeleton.JOINT_NAMES
        n_act = scene.N_ACT_PER_BODY
        return cls(
            agent_bodies=np.array([_id(m, B, "a_" + n) for n in names]),
            partner_bodies=np.array([_id(m, B, "p_" + n) for n in names]),
            prop_bodies=np.array([_id(m, B, f"prop{k}") for k in range(scene.N_PROPS)]),
            prop_geoms=np.array([_id(m, G, f"prop{k}") for k in range(scene.N_PROPS)]),
            wall_geoms=np.array([_id(m, G, f"wall{k}") for k in range(4)]),
            furniture_geoms=np.array([_id(m, G, f"furniture{k}") for k in range(scene.N_FURNITURE)]),
            floor_geom=_id(m, G, "floor"),
            mat_geom=_id(m, G, "mat"),
            agent_root_qpos=np.array([m.jnt_qposadr[_id(m, J, "a_" + r)] for r in scene.ROOT_JOINTS]),
            partner_root_qpos=np.array([m.jnt_qposadr[_id(m, J, "p_" + r)] for r in scene.ROOT_JOINTS]),
            prop_qpos=np.array([m.jnt_qposadr[_id(m, J, f"prop{k}_free")] for k in range(scene.N_PROPS)]),
            agent_act=slice(0, n_act),
            partner_act=slice(n_act, 2 * n_act),
            ego_camera=_id(m, C, "ego"),
            overhead_camera=_id(m, C, "overhead"),
        )


@dataclass
class GeomFields:
    """Per-geom model values of one room: the fields a backend writes per world."""

    pos: np.ndarray  # (ngeom, 3)
    size: np.ndarray  # (ngeom, 3)
    rgba: np.ndarray  # (ngeom, 4)
    aabb: np.ndarray  # (ngeom, 6): local box centre (3) and half sizes (3), as MjModel.geom_aabb
    rbound: np.ndarray  # (ngeom,)


def room_geom_fields(m: mujoco.MjModel, idx: SceneIndex, spec: scene.RoomSpec) -> GeomFields:
    """Geom positions, sizes, colours and bounds of ``spec``'s room, starting from the template."""
    pos = m.geom_pos.copy()
    size = m.geom_size.copy()
    rgba = m.geom_rgba.copy()
    aabb = m.geom_aabb.copy()
    rbound = m.geom_rbound.copy()
    hx, hy = spec.half_extent
    T, H = scene.WALL_THICK, scene.WALL_HEIGHT / 2
    wall_pos = [(hx + T, 0, H), (-hx - T, 0, H), (0, hy + T, H), (0, -hy - T, H)]
    wall_size = [(T, hy + 2 * T, H), (T, hy + 2 * T, H), (hx + 2 * T, T, H), (hx + 2 * T, T, H)]
    boxes = list(zip(idx.wall_geoms, wall_pos, wall_size)) + list(zip(idx.furniture_geoms, spec.furniture_pos, spec.furniture_size))
    for g, p, s in boxes:
        pos[g] = p
        size[g] = s
        aabb[g] = (0, 0, 0, *s)
        rbound[g] = float(np.linalg.norm(s))
    rgba[idx.wall_geoms] = spec.wall_rgba
    rgba[idx.furniture_geoms] = spec.furniture_rgba
    rgba[idx.floor_geom] = spec.floor_rgba
    pos[idx.mat_geom, :2] = spec.mat_pos
    for k, g in enumerate(idx.prop_geoms):
        rgba[g] = scene.COLOURS[scene.COLOUR_NAMES[int(spec.prop_colour[k])]]
    return GeomFields(pos=pos, size=size, rgba=rgba, aabb=aabb, rbound=rbound)


def initial_qpos(m: mujoco.MjModel, idx: SceneIndex, spec: scene.RoomSpec) -> np.ndarray:
    """(nq,) initial positions: bodies at their start poses, props at rest on the floor."""
    q = m.qpos0.copy()
    ax, ay, az, ayaw = idx.agent_root_qpos
    q[ax], q[ay], q[az], q[ayaw] = spec.agent_pos[0], spec.agent_pos[1], 0.0, spec.agent_yaw
    px, py, pz, pyaw = idx.partner_root_qpos
    q[px], q[py], q[pz], q[pyaw] = spec.partner_pos[0], spec.partner_pos[1], 0.0, spec.partner_yaw
    neutral = neutral_limb_angles().numpy()
    for prefix in scene.HUMANOID_PREFIXES:
        for name, angle in zip(scene.LIMB_JOINT_NAMES, neutral):
            q[m.jnt_qposadr[_id(m, mujoco.mjtObj.mjOBJ_JOINT, prefix + name)]] = angle
    for k, a in enumerate(idx.prop_qpos):
        z = scene.PROP_BOX_HALF if scene.PROP_SHAPES[k] == "box" else scene.PROP_BALL_RADIUS
        q[a : a + 7] = (spec.prop_pos[k, 0], spec.prop_pos[k, 1], z, 1.0, 0.0, 0.0, 0.0)
    return q
