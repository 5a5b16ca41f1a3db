"""Procedural rooms: one fixed MJCF structure, varied per seed through model fields.

Every room has the same *structure* -- four walls, ``N_FURNITURE`` furniture boxes, ``N_PROPS``
movable props (box, ball, box, ball), a goal mat, the agent and the partner -- so that a batch of
B different rooms is one MuJoCo model whose per-world fields (``geom_pos``, ``geom_size``,
``geom_rgba``, ``geom_aabb``, ``geom_rbound``) and initial ``qpos`` differ. ``RoomSpec`` holds what a
seed decides; ``room_geom_fields`` turns it into the values of those fields, and both backends
write exactly those values, so a seed gives the same room on every backend.

Collision filtering (contype / conaffinity bits):
  1 static world (walls, furniture)   2 floor   4 props and hands/feet   8 body colliders
The humanoids never touch the floor (their root is carried by actuated slide joints) and do not
collide with themselves; their torso collider is blocked by walls and furniture and pushes props.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import skeleton

N_FURNITURE = 3
N_PROPS = 4
PROP_SHAPES: tuple[str, ...] = ("box", "ball", "box", "ball")
PROP_BOX_HALF = 0.2  # metres
PROP_BALL_RADIUS = 0.18
WALL_HEIGHT = 2.2
WALL_THICK = 0.1
MAX_HALF_EXTENT = 4.0  # the template is built at the largest room so bounds stay conservative
MIN_HALF_EXTENT = 3.0
MAT_HALF = 0.45
EGO_CAM_POS = (0.13, 0.0, 0.1)  # the agent's head camera, in the head body's frame (looks along +x, +z up)
EGO_CAM_FOVY = 90.0  # degrees, vertical (square images: also horizontal)
FURNITURE_MAX = (0.8, 0.4, 0.9)  # half sizes
FURNITURE_MIN = (0.3, 0.25, 0.3)
COLLIDER_RADIUS = 0.22

# Prop colours: a name (used in instructions) and an RGBA.
COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.1, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
    "green": (0.1, 0.7, 0.2, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.15, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.05, 1.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
AGENT_RGBA = (0.25, 0.55, 0.95, 1.0)
PARTNER_RGBA = (0.95, 0.35, 0.55, 1.0)
MAT_RGBA = (0.15, 0.15, 0.15, 1.0)

CONTROL_DT = 0.05  # seconds per env step (20 Hz)
SIM_TIMESTEP = 0.025
FRAME_SKIP = int(round(CONTROL_DT / SIM_TIMESTEP))

# Hinge joints of each humanoid: (skeleton joint index, joint suffix, axis, kp, range in rad).
# Axes are chosen so that a positive angle means: leg/arm forward (flex), arm raised (abd),
# knee/elbow bent, head turned left (yaw) / down (pitch), trunk leaning forward.
LIMB_JOINTS: tuple[tuple[int, str, tuple[float, float, float], float], ...] = (
    (1, "l_hip_flex", (0, -1, 0), 400.0),
    (1, "l_hip_abd", (1, 0, 0), 400.0),
    (2, "r_hip_flex", (0, -1, 0), 400.0),
    (2, "r_hip_abd", (-1, 0, 0), 400.0),
    (3, "spine_flex", (0, 1, 0), 400.0),
    (3, "spine_twist", (0, 0, 1), 400.0),
    (4, "l_knee", (0, 1, 0), 250.0),
    (5, "r_knee", (0, 1, 0), 250.0),
    (7, "l_ankle", (0, -1, 0), 80.0),
    (8, "r_ankle", (0, -1, 0), 80.0),
    (12, "neck_pitch", (0, 1, 0), 80.0),
    (15, "head_yaw", (0, 0, 1), 60.0),
    (15, "head_pitch", (0, 1, 0), 60.0),
    (16, "l_sh_flex", (0, -1, 0), 120.0),
    (16, "l_sh_abd", (1, 0, 0), 120.0),
    (17, "r_sh_flex", (0, -1, 0), 120.0),
    (17, "r_sh_abd", (-1, 0, 0), 120.0),
    (18, "l_elbow", (0, 0, -1), 60.0),
    (19, "r_elbow", (0, 0, 1), 60.0),
)
LIMB_JOINT_NAMES: tuple[str, ...] = tuple(j[1] for j in LIMB_JOINTS)
ROOT_JOINTS: tuple[str, ...] = ("root_x", "root_y", "root_z", "root_yaw")
# Per humanoid: 4 root actuators (x vel, y vel, z pos, yaw vel) then one position servo per limb joint.
N_ACT_PER_BODY = len(ROOT_JOINTS) + len(LIMB_JOINTS)
HUMANOID_PREFIXES = ("a_", "p_")  # agent, partner


@dataclass
class RoomSpec:
    """Everything a seed decides about a room (MuJoCo frame, metres, radians)."""

    seed: int
    half_extent: np.ndarray  # (2,) room half size in x, y (inner faces of the walls)
    wall_rgba: np.ndarray  # (4,)
    floor_rgba: np.ndarray  # (4,)
    furniture_pos: np.ndarray  # (N_FURNITURE, 3) centres
    furniture_size: np.ndarray  # (N_FURNITURE, 3) half sizes
    furniture_rgba: np.ndarray  # (N_FURNITURE, 4)
    prop_colour: np.ndarray  # (N_PROPS,) indices into COLOUR_NAMES, all different
    prop_pos: np.ndarray  # (N_PROPS, 2) initial xy
    mat_pos: np.ndarray  # (2,) centre of the goal mat
    agent_pos: np.ndarray  # (2,)
    agent_yaw: float
    partner_pos: np.ndarray  # (2,)
    partner_yaw: float
    extra: dict = field(default_factory=dict)

    def prop_name(self, i: int) -> str:
        """Instruction name of prop ``i``, e.g. ``"red box"``."""
        return f"{COLOUR_NAMES[int(self.prop_colour[i])]} {PROP_SHAPES[i]}"


def _far_enough(p: np.ndarray, others: list[np.ndarray], dmin: float) -> bool:
    return all(np.linalg.norm(p - o) >= dmin for o in others)


def generate_room(seed: int) -> RoomSpec:
    """The room of ``seed``: furniture along the walls, props, mat and bodies in the free interior.

    Placement is by rejection sampling with a fixed RNG, so it is a pure function of the seed.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    hx, hy = rng.uniform(MIN_HALF_EXTENT, MAX_HALF_EXTENT, size=2)
    grey = rng.uniform(0.55, 0.85)
    wall_rgba = np.array([grey, grey * rng.uniform(0.9, 1.0), grey * rng.uniform(0.85, 1.0), 1.0])
    f = rng.uniform(0.3, 0.5)
    floor_rgba = np.array([f * rng.uniform(0.9, 1.1), f * rng.uniform(0.8, 1.0), f * rng.uniform(0.6, 0.9), 1.0])

    # Furniture: each against a distinct wall (0:+x 1:-x 2:+y 3:-y).
    walls = rng.permutation(4)[:N_FURNITURE]
    furniture_pos = np.zeros((N_FURNITURE, 3))
    furniture_size = np.zeros((N_FURNITURE, 3))
    for k, w in enumerate(walls):
        sx, sy, sz = (rng.uniform(lo, hi) for lo, hi in zip(FURNITURE_MIN, FURNITURE_MAX))
        if w in (0, 1):  # long side along the wall (y)
            size = np.array([sy, sx, sz])
            y = rng.uniform(-hy + sx + 0.1, hy - sx - 0.1)
            x = (hx - sy) if w == 0 else (-hx + sy)
            furniture_pos[k] = (x, y, sz)
        else:
            size = np.array([sx, sy, sz])
            x = rng.uniform(-hx + sx + 0.1, hx - sx - 0.1)
            y = (hy - sy) if w == 2 else (-hy + sy)
            furniture_pos[k] = (x, y, sz)
        furniture_size[k] = size
    furniture_rgba = np.concatenate([rng.uniform(0.25, 0.6, size=(N_FURNITURE, 3)), np.ones((N_FURNITURE, 1))], axis=1)

    # Free interior: keep 1.1 m off the walls (the furniture is at most 0.8 m deep).
    lo = np.array([-hx + 1.1, -hy + 1.1])
    hi = np.array([hx - 1.1, hy - 1.1])
    placed: list[np.ndarray] = []

    def sample(dmin: float) -> np.ndarray:
        for _ in range(500):
            p = rng.uniform(lo, hi)
            if _far_enough(p, placed, dmin):
                placed.append(p)
                return p
        raise RuntimeError(f"room {seed}: could not place an object (internal layout error)")

    agent_pos = sample(1.0)
    partner_pos = sample(1.4)
    prop_pos = np.stack([sample(1.0) for _ in range(N_PROPS)])
    mat_pos = sample(1.2)
    prop_colour = rng.permutation(len(COLOUR_NAMES))[:N_PROPS]
    return RoomSpec(
        seed=int(seed),
        half_extent=np.array([hx, hy]),
        wall_rgba=wall_rgba,
        floor_rgba=floor_rgba,
        furniture_pos=furniture_pos,
        furniture_size=furniture_size,
        furniture_rgba=furniture_rgba,
        prop_colour=prop_colour,
        prop_pos=prop_pos,
        mat_pos=mat_pos,
        agent_pos=agent_pos,
        agent_yaw=float(rng.uniform(-np.pi, np.pi)),
        partner_pos=partner_pos,
        partner_yaw=float(rng.uniform(-np.pi, np.pi)),
    )


# ----------------------------------------------------------------------------------------------
# MJCF


def _fmt(v) -> str:
    return " ".join(f"{float(x):.4g}" for x in v)


def _humanoid_xml(prefix: str, rgba: tuple[float, ...], with_camera: bool) -> str:
    """MJCF of one humanoid whose bodies are the 22 SMPL-X joints (named ``prefix + joint``)."""
    names = skeleton.JOINT_NAMES
    joints_of: dict[int, list[tuple[str, tuple, float]]] = {}
    for j, suffix, axis, kp in LIMB_JOINTS:
        joints_of.setdefault(j, []).append((suffix, axis, kp))
    col = _fmt(rgba)
    bone_radius = {
        0: 0.09,
        3: 0.1,
        6: 0.11,
        9: 0.11,
        1: 0.07,
        2: 0.07,
        4: 0.055,
        5: 0.055,
        16: 0.045,
        17: 0.045,
        18: 0.038,
        19: 0.038,
        12: 0.05,
        13: 0.05,
        14: 0.05,
    }

    def body(j: int, depth: int) -> str:
        ind = "  " * depth
        off = skeleton.REST_OFFSETS[j] if j else np.array([0.0, 0.0, skeleton.PELVIS_HEIGHT])
        lines = [f'{ind}<body name="{prefix}{names[j]}" pos="{_fmt(off)}" gravcomp="1">']
        if j == 0:
            for rj, (typ, axis) in zip(ROOT_JOINTS, (("slide", "1 0 0"), ("slide", "0 1 0"), ("slide", "0 0 1"), ("hinge", "0 0 1"))):
                lines.append(f'{ind}  <joint name="{prefix}{rj}" type="{typ}" axis="{axis}" damping="5" armature="1" limited="false"/>')
            # Torso collider: the only part of the body that meets walls, furniture and the other body.
            lines.append(
                f'{ind}  <geom name="{prefix}collider" type="capsule" fromto="0 0 -0.45 0 0 0.6" size="{COLLIDER_RADIUS}" '
                f'mass="0" contype="12" conaffinity="9" group="3" rgba="0 0 0 0"/>'
            )
            lines.append(
                f'{ind}  <geom type="capsule" fromto="0 0.08 -0.04 0 -0.08 -0.04" size="0.1" contype="0" conaffinity="0" rgba="{col}"/>'
            )
        for suffix, axis, _kp in joints_of.get(j, []):
            lines.append(
                f'{ind}  <joint name="{prefix}{suffix}" type="hinge" axis="{_fmt(axis)}" damping="2" armature="0.05" limited="false"/>'
            )
        for c in skeleton.children(j):
            if j in (9,) and c in (13, 14):  # collars: the chest is drawn by the spine capsules
                continue
            r = bone_radius.get(j, 0.04)
            lines.append(
                f'{ind}  <geom type="capsule" fromto="0 0 0 {_fmt(skeleton.REST_OFFSETS[c])}" size="{r}" '
                f'contype="0" conaffinity="0" rgba="{col}"/>'
            )
        if j == 15:  # head
            lines.append(f'{ind}  <geom type="sphere" pos="0.01 0 0.09" size="0.105" contype="0" conaffinity="0" rgba="{col}"/>')
            lines.append(
                f'{ind}  <geom type="box" pos="0.09 0 0.1" size="0.02 0.06 0.025" contype="0" conaffinity="0" rgba="0.1 0.1 0.1 1"/>'
            )
            if with_camera:
                # Looks along the head's +x with +z up.
                lines.append(f'{ind}  <camera name="ego" pos="{_fmt(EGO_CAM_POS)}" xyaxes="0 -1 0 0 0 1" fovy="{EGO_CAM_FOVY:g}"/>')
        if j in (20, 21):  # hands push props
            sign = 1.0 if j == 20 else -1.0
            lines.append(
                f'{ind}  <geom name="{prefix}{names[j]}_hand" type="sphere" pos="0 {0.06 * sign:.3f} 0" size="0.05" '
                f'contype="4" conaffinity="0" rgba="{col}"/>'
            )
        if j in (10, 11):  # toes
            lines.append(f'{ind}  <geom type="box" pos="0.02 0 0.0" size="0.05 0.045 0.02" contype="0" conaffinity="0" rgba="{col}"/>')
        if j in (7, 8):  # feet push props too
            lines.append(f'{ind}  <geom type="box" pos="0.05 0 -0.03" size="0.09 0.045 0.03" contype="4" conaffinity="0" rgba="{col}"/>')
        for c in skeleton.children(j):
            lines.append(body(c, depth + 1))
        lines.append(f"{ind}</body>")
        return "\n".join(lines)

    return body(0, 2)


def _humanoid_actuators(prefix: str) -> str:
    lines = [
        f'    <velocity name="{prefix}act_root_x" joint="{prefix}root_x" kv="400" forcerange="-500 500"/>',
        f'    <velocity name="{prefix}act_root_y" joint="{prefix}root_y" kv="400" forcerange="-500 500"/>',
        f'    <position name="{prefix}act_root_z" joint="{prefix}root_z" kp="4000" kv="400"/>',
        f'    <velocity name="{prefix}act_root_yaw" joint="{prefix}root_yaw" kv="200" forcerange="-300 300"/>',
    ]
    for _j, suffix, _axis, kp in LIMB_JOINTS:
        lines.append(f'    <position name="{prefix}act_{suffix}" joint="{prefix}{suffix}" kp="{kp}" kv="{kp * 0.08:.3g}"/>')
    return "\n".join(lines)


def build_mjcf() -> str:
    """The template MJCF shared by every room and every backend.

    Sizes are the largest any seed uses (walls of the largest room, the largest furniture), so the
    compiled bounding volumes stay conservative when a room shrinks them through model fields.
    """
    H = MAX_HALF_EXTENT
    walls = []
    for k, (pos, size) in enumerate(
        (
            ((H + WALL_THICK, 0, WALL_HEIGHT / 2), (WALL_THICK, H + 2 * WALL_THICK, WALL_HEIGHT / 2)),
            ((-H - WALL_THICK, 0, WALL_HEIGHT / 2), (WALL_THICK, H + 2 * WALL_THICK, WALL_HEIGHT / 2)),
            ((0, H + WALL_THICK, WALL_HEIGHT / 2), (H + 2 * WALL_THICK, WALL_THICK, WALL_HEIGHT / 2)),
            ((0, -H - WALL_THICK, WALL_HEIGHT / 2), (H + 2 * WALL_THICK, WALL_THICK, WALL_HEIGHT / 2)),
        )
    ):
        walls.append(
            f'    <geom name="wall{k}" type="box" pos="{_fmt(pos)}" size="{_fmt(size)}" contype="1" conaffinity="0" rgba="0.7 0.7 0.7 1"/>'
        )
    furniture = [
        f'    <geom name="furniture{k}" type="box" pos="0 0 {FURNITURE_MAX[2]}" size="{_fmt(FURNITURE_MAX)}" contype="1" conaffinity="0" rgba="0.4 0.3 0.2 1"/>'
        for k in range(N_FURNITURE)
    ]
    props = []
    for k, shape in enumerate(PROP_SHAPES):
        if shape == "box":
            g = f'type="box" size="{PROP_BOX_HALF} {PROP_BOX_HALF} {PROP_BOX_HALF}" mass="3"'
            z = PROP_BOX_HALF
        else:
            g = f'type="sphere" size="{PROP_BALL_RADIUS}" mass="2"'
            z = PROP_BALL_RADIUS
        props.append(
            f'    <body name="prop{k}" pos="0 0 {z}">\n'
            f'      <freejoint name="prop{k}_free"/>\n'
            f'      <geom name="prop{k}" {g} contype="4" conaffinity="7" friction="0.5 0.02 0.002" rgba="1 1 1 1"/>\n'
            f"    </body>"
        )
    return f"""<mujoco model="dreamgym_egoroom">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{SIM_TIMESTEP}" solver="Newton" iterations="6" ls_iterations="4" integrator="implicitfast"/>
  <visual>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
    <global offwidth="640" offheight="640"/>
  </visual>
  <default>
    <geom solref="0.01 1" solimp="0.9 0.95 0.001"/>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 6" dir="0.3 0.2 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="floor" type="plane" size="{H + 1} {H + 1} 0.1" contype="2" conaffinity="0" rgba="0.4 0.35 0.3 1"/>
    <geom name="mat" type="box" pos="0 0 0.004" size="{MAT_HALF} {MAT_HALF} 0.004" contype="0" conaffinity="0" rgba="{_fmt(MAT_RGBA)}"/>
{chr(10).join(walls)}
{chr(10).join(furniture)}
{chr(10).join(props)}
    <camera name="overhead" pos="0 0 11" xyaxes="1 0 0 0 1 0" fovy="45"/>
{_humanoid_xml("a_", AGENT_RGBA, with_camera=True)}
{_humanoid_xml("p_", PARTNER_RGBA, with_camera=False)}
  </worldbody>
  <actuator>
{_humanoid_actuators("a_")}
{_humanoid_actuators("p_")}
  </actuator>
</mujoco>
"""
