"""File exports of a motion sequence: AMASS-style .npz, BVH and glTF binary (.glb).

All three are in SMPL-X's frame (x left, y up, z forward), which is also glTF's and BVH's usual
y-up frame, and all are written atomically: to a temporary name in the target folder, flushed and
fsynced, then renamed over the target, so a reader never sees a half-written file.

- ``.npz`` (AMASS SMPL-X layout): ``poses`` (T, 165) = global_orient 3 + body 63 + jaw 3 +
  eyes 6 + hands 90 (zeros where the body has no joint; hands flat, i.e. ``flat_hand_mean=True``),
  ``trans`` (T, 3) pelvis position (see ``smplx_params`` for the J_0(betas) offset), ``betas``
  (16,), ``gender``, ``mocap_framerate``, ``surface_model_type`` and, for convenience,
  ``joints`` (T, 22, 3) of our rest skeleton. Angles are axis-angle radians, lengths metres.
- ``.bvh``: the 22-joint skeleton, offsets and root positions in centimetres by default
  (``units_per_metre``), rotation channels ``Zrotation Yrotation Xrotation`` in degrees
  (R = Rz Ry Rx), the root with 6 channels, frame time 1/fps.
- ``.glb``: one node per joint (rest translations = our skeleton's offsets, metres), a skin over
  them with a small octahedron marker per joint so any viewer shows the body, and one animation
  with a rotation channel per joint and a translation channel on the pelvis.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pygltflib
from scipy.spatial.transform import Rotation

from ..envs.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS, SMPLX_FROM_MUJOCO, children
from .kinematics import rest_pelvis_position
from .smplx_params import SMPLX_REST_OFFSETS, SmplxParams, motion_to_smplx

AMASS_POSE_DIM = 165  # SMPL-X: 55 joints x 3 (axis-angle)
AMASS_NUM_BETAS = 16
BVH_END_SITE_LENGTH = 0.1  # metres; end sites only mark the bone tip for viewers
GLB_MARKER_RADIUS = 0.03  # metres; the octahedron drawn at each joint


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:  # "x": never reuse a name; permissions follow the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _check_fps(fps: float) -> float:
    fps = float(fps)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps is {fps}, expected a positive frame rate")
    return fps


def amass_arrays(params: SmplxParams, fps: float) -> dict[str, np.ndarray]:
    """The arrays of an AMASS-style SMPL-X .npz (see the module docstring for the keys)."""
    fps = _check_fps(fps)
    if params.betas.shape[0] > AMASS_NUM_BETAS:
        raise ValueError(f"betas has {params.betas.shape[0]} entries, AMASS stores at most {AMASS_NUM_BETAS}")
    T = params.num_frames
    poses = np.zeros((T, AMASS_POSE_DIM))
    poses[:, :3] = params.global_orient
    poses[:, 3:66] = params.body_pose.reshape(T, -1)
    betas = np.zeros(AMASS_NUM_BETAS)
    betas[: params.betas.shape[0]] = params.betas
    return {
        "poses": poses,
        "trans": params.transl,
        "betas": betas,
        "gender": np.array("neutral"),
        "mocap_framerate": np.array(fps),
        "surface_model_type": np.array("smplx"),
        "joints": params.joints,
    }


def write_amass_npz(path: str | os.PathLike[str], params: SmplxParams, fps: float) -> Path:
    """Write an AMASS-style SMPL-X .npz of ``params`` at ``fps`` frames per second."""
    arrays: dict[str, Any] = amass_arrays(params, fps)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def bvh_text(params: SmplxParams, fps: float, units_per_metre: float = 100.0) -> str:
    """BVH text of ``params``: hierarchy and motion, lengths in metres x ``units_per_metre``."""
    fps = _check_fps(fps)
    scale = float(units_per_metre)
    lines = ["HIERARCHY"]
    order: list[int] = []  # joints in the order their channels appear (depth first)

    def fmt(v: np.ndarray) -> str:
        return " ".join(f"{x:.6f}" for x in v)

    def emit(j: int, depth: int) -> None:
        pad = "\t" * depth
        order.append(j)
        offset = np.zeros(3) if j == 0 else SMPLX_REST_OFFSETS[j] * scale
        lines.append(f"{pad}{'ROOT' if j == 0 else 'JOINT'} {JOINT_NAMES[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}\tOFFSET {fmt(offset)}")
        position = "Xposition Yposition Zposition " if j == 0 else ""
        count = 6 if j == 0 else 3
        lines.append(f"{pad}\tCHANNELS {count} {position}Zrotation Yrotation Xrotation")
        kids = children(j)
        for c in kids:
            emit(c, depth + 1)
        if not kids:  # a bone tip continuing the bone's direction
            bone = SMPLX_REST_OFFSETS[j]
            tip = bone / np.linalg.norm(bone) * BVH_END_SITE_LENGTH * scale
            lines.extend([f"{pad}\tEnd Site", f"{pad}\t{{", f"{pad}\t\tOFFSET {fmt(tip)}", f"{pad}\t}}"])
        lines.append(f"{pad}}}")

    emit(0, 0)
    T = params.num_frames
    local = params.local_rotmats()[:, order]  # (T, 22, 3, 3) in channel order
    with warnings.catch_warnings():  # at +-90 deg the split is arbitrary but the rotation exact
        warnings.filterwarnings("ignore", message="Gimbal lock")
        euler = Rotation.from_matrix(local.reshape(-1, 3, 3)).as_euler("ZYX", degrees=True)
    frames = np.concatenate((params.transl * scale, euler.reshape(T, -1)), axis=1)
    lines += ["MOTION", f"Frames: {T}", f"Frame Time: {1.0 / fps:.8f}"]
    lines += [fmt(row) for row in frames]
    return "\n".join(lines) + "\n"


def write_bvh(path: str | os.PathLike[str], params: SmplxParams, fps: float, units_per_metre: float = 100.0) -> Path:
    """Write ``params`` as BVH (centimetres by default; ``units_per_metre=1`` for metres)."""
    return atomic_write_bytes(path, bvh_text(params, fps, units_per_metre).encode("ascii"))


class _GlbBuilder:
    """Packs numpy arrays into one binary buffer with a bufferView and accessor each."""

    def __init__(self, gltf: pygltflib.GLTF2) -> None:
        self.gltf = gltf
        self.blob = bytearray()

    def add(self, array: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        component = {
            np.dtype(np.float32): pygltflib.FLOAT,
            np.dtype(np.uint16): pygltflib.UNSIGNED_SHORT,
        }[array.dtype]
        data = np.ascontiguousarray(array).tobytes()
        self.gltf.bufferViews.append(pygltflib.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data), target=target))
        self.blob += data + b"\0" * (-len(data) % 4)  # keep every view 4-byte aligned
        flat = array.reshape(array.shape[0], -1)
        self.gltf.accessors.append(
            pygltflib.Accessor(
                bufferView=len(self.gltf.bufferViews) - 1,
                componentType=component,
                count=array.shape[0],
                type=kind,
                min=flat.min(axis=0).tolist() if bounds else None,
                max=flat.max(axis=0).tolist() if bounds else None,
            )
        )
        return len(self.gltf.accessors) - 1


def _marker_mesh(rest_global: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An octahedron at each rest joint position: positions, joint ids, weights, triangle indices."""
    axes = np.concatenate((np.eye(3), -np.eye(3))) * GLB_MARKER_RADIUS  # +x +y +z -x -y -z
    tris = np.array([[0, 1, 2], [1, 3, 2], [3, 4, 2], [4, 0, 2], [1, 0, 5], [3, 1, 5], [4, 3, 5], [0, 4, 5]])
    positions = (rest_global[:, None] + axes[None]).reshape(-1, 3).astype(np.float32)
    joint_ids = np.zeros((NUM_JOINTS * 6, 4), np.uint16)
    joint_ids[:, 0] = np.repeat(np.arange(NUM_JOINTS), 6)
    weights = np.zeros((NUM_JOINTS * 6, 4), np.float32)
    weights[:, 0] = 1.0
    indices = (tris[None] + 6 * np.arange(NUM_JOINTS)[:, None, None]).reshape(-1).astype(np.uint16)
    return positions, joint_ids, weights, indices


def glb_bytes(params: SmplxParams, fps: float) -> bytes:
    """A glTF binary of ``params``: skinned joint hierarchy plus one animation, metres, y up."""
    fps = _check_fps(fps)
    gltf = pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0", generator="dreamgym.avatars"))
    build = _GlbBuilder(gltf)
    rest_root = SMPLX_FROM_MUJOCO @ rest_pelvis_position()
    rest_global = np.empty((NUM_JOINTS, 3))
    for j in range(NUM_JOINTS):
        rest_global[j] = rest_root if j == 0 else rest_global[PARENTS[j]] + SMPLX_REST_OFFSETS[j]
        translation = rest_root if j == 0 else SMPLX_REST_OFFSETS[j]
        gltf.nodes.append(pygltflib.Node(name=JOINT_NAMES[j], translation=translation.tolist(), children=children(j)))

    positions, joint_ids, weights, indices = _marker_mesh(rest_global)
    attributes = pygltflib.Attributes(
        POSITION=build.add(positions, pygltflib.VEC3, pygltflib.ARRAY_BUFFER, bounds=True),
        JOINTS_0=build.add(joint_ids, pygltflib.VEC4, pygltflib.ARRAY_BUFFER),
        WEIGHTS_0=build.add(weights, pygltflib.VEC4, pygltflib.ARRAY_BUFFER),
    )
    index_accessor = build.add(indices, pygltflib.SCALAR, pygltflib.ELEMENT_ARRAY_BUFFER)
    primitive = pygltflib.Primitive(attributes=attributes, indices=index_accessor)
    gltf.meshes.append(pygltflib.Mesh(name="joint_markers", primitives=[primitive]))
    inverse_bind = np.tile(np.eye(4, dtype=np.float32), (NUM_JOINTS, 1, 1))
    inverse_bind[:, :3, 3] = -rest_global  # rest frames carry no rotation
    gltf.skins.append(
        pygltflib.Skin(
            name="smplx_body",
            joints=list(range(NUM_JOINTS)),
            skeleton=0,
            inverseBindMatrices=build.add(inverse_bind.transpose(0, 2, 1).copy(), pygltflib.MAT4),  # column-major
        )
    )
    mesh_node = len(gltf.nodes)
    gltf.nodes.append(pygltflib.Node(name="body", mesh=0, skin=0))
    gltf.scenes.append(pygltflib.Scene(nodes=[0, mesh_node]))  # a skinned mesh node must be a root
    gltf.scene = 0

    T = params.num_frames
    times = build.add((np.arange(T) / fps).astype(np.float32), pygltflib.SCALAR, bounds=True)
    quats = Rotation.from_matrix(params.local_rotmats().reshape(-1, 3, 3)).as_quat()  # x, y, z, w
    quats = quats.reshape(T, NUM_JOINTS, 4).astype(np.float32)
    samplers: list[pygltflib.AnimationSampler] = []
    channels: list[pygltflib.AnimationChannel] = []

    def animate(node: int, path: str, values: np.ndarray, kind: str) -> None:
        samplers.append(pygltflib.AnimationSampler(input=times, output=build.add(values, kind), interpolation="LINEAR"))
        target = pygltflib.AnimationChannelTarget(node=node, path=path)
        channels.append(pygltflib.AnimationChannel(sampler=len(samplers) - 1, target=target))

    animate(0, "translation", params.transl.astype(np.float32), pygltflib.VEC3)
    for j in range(NUM_JOINTS):
        animate(j, "rotation", np.ascontiguousarray(quats[:, j]), pygltflib.VEC4)
    gltf.animations.append(pygltflib.Animation(name="motion", samplers=samplers, channels=channels))

    gltf.buffers.append(pygltflib.Buffer(byteLength=len(build.blob)))
    gltf.set_binary_blob(bytes(build.blob))
    return b"".join(gltf.save_to_bytes())


def write_glb(path: str | os.PathLike[str], params: SmplxParams, fps: float) -> Path:
    """Write ``params`` as an animated, skinned glTF binary (.glb)."""
    return atomic_write_bytes(path, glb_bytes(params, fps))


def export_episode(motion: Any, fps: float, out_dir: str | os.PathLike[str], stem: str, betas: Any = None) -> dict[str, Path]:
    """Write ``{stem}.npz``, ``{stem}.bvh`` and ``{stem}.glb`` of a motion sequence (T, 227).

    ``motion`` is numpy or torch, either side, simulator or dream. Returns the paths by format:
    ``{"npz": ..., "bvh": ..., "glb": ...}``.
    """
    if not stem or Path(stem).name != stem:
        raise ValueError(f"stem {stem!r} must be a plain file name without folders")
    params = motion_to_smplx(motion, betas=betas)
    out = Path(out_dir)
    return {
        "npz": write_amass_npz(out / f"{stem}.npz", params, fps),
        "bvh": write_bvh(out / f"{stem}.bvh", params, fps),
        "glb": write_glb(out / f"{stem}.glb", params, fps),
    }
