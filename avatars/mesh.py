"""SMPL-X body meshes of a motion sequence, for users who own the SMPL-X model files.

SMPL-X's model files are licensed per user and are not shipped; point ``smplx_model_dir`` at the
folder holding ``SMPLX_NEUTRAL.npz`` (or ``.pkl``), or at its parent with a ``smplx/`` subfolder
(the layout of the SMPL-X download). Hands are flat (``flat_hand_mean=True``), face and
expression neutral, as in the AMASS-style export.

Output format (our choice): one ``.npz`` per sequence with ``vertices`` (T, V, 3) float32 metres
in SMPL-X's frame (y up), ``faces`` (F, 3) int32, ``joints`` (T, 22, 3) of the model, ``fps``;
``write_obj`` writes a single frame as Wavefront .obj for a quick look in any 3D tool.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import smplx
import torch

from ..envs.skeleton import NUM_JOINTS
from .exports import atomic_write_bytes
from .smplx_params import SmplxParams, motion_to_smplx

SMPLX_DOWNLOAD = "https://smpl-x.is.tue.mpg.de"


@dataclass(frozen=True)
class MeshSequence:
    """Posed SMPL-X meshes of T frames, SMPL-X frame, metres."""

    vertices: np.ndarray  # (T, V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    joints: np.ndarray  # (T, 22, 3) float32, the model's own body joints


def find_smplx_model_file(smplx_model_dir: str | os.PathLike[str], gender: str = "neutral") -> Path:
    """The SMPL-X model file for ``gender`` under ``smplx_model_dir``.

    Raises FileNotFoundError naming every path looked at when there is none.
    """
    root = Path(smplx_model_dir).expanduser()
    name = f"SMPLX_{gender.upper()}"
    candidates = [folder / f"{name}.{ext}" for folder in (root, root / "smplx") for ext in ("npz", "pkl")]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"no SMPL-X model file {name}.npz or {name}.pkl for gender {gender!r}: looked for {looked}. "
        f"Download the SMPL-X model files (licence required) from {SMPLX_DOWNLOAD} and set "
        "smplx_model_dir to the folder that holds them."
    )


def smplx_meshes(
    params: SmplxParams,
    smplx_model_dir: str | os.PathLike[str],
    gender: str = "neutral",
    chunk_size: int = 64,
) -> MeshSequence:
    """Pose a SMPL-X model with ``params``; the model's pelvis lands on ``params.transl``.

    SMPL-X adds ``transl`` to a body whose rest pelvis is at ``J_0(betas)``; that offset is
    subtracted so the mesh sits where our body is. Frames are posed ``chunk_size`` at a time.
    """
    model_file = find_smplx_model_file(smplx_model_dir, gender)
    if chunk_size < 1:
        raise ValueError(f"chunk_size is {chunk_size}, expected at least 1")
    T = params.num_frames
    batch = min(chunk_size, T)
    model = smplx.create(
        str(model_file),
        model_type="smplx",
        gender=gender,
        use_pca=False,
        flat_hand_mean=True,
        num_betas=params.betas.shape[0],
        batch_size=batch,
        ext=model_file.suffix[1:],
    )
    if model.num_betas < params.betas.shape[0] and np.any(params.betas[model.num_betas :]):
        raise ValueError(
            f"betas has {params.betas.shape[0]} entries but the model at {model_file} has only {model.num_betas} shape components"
        )
    betas = torch.as_tensor(params.betas[: model.num_betas], dtype=torch.float32).expand(batch, -1)
    with torch.no_grad():
        rest_pelvis = model(betas=betas).joints[0, 0].numpy()  # transl = 0, pose = 0
        vertices, joints = [], []
        for start in range(0, T, batch):
            frames = np.arange(start, start + batch).clip(max=T - 1)  # pad the last chunk
            out = model(
                betas=betas,
                global_orient=torch.as_tensor(params.global_orient[frames], dtype=torch.float32),
                body_pose=torch.as_tensor(params.body_pose[frames].reshape(batch, -1), dtype=torch.float32),
                transl=torch.as_tensor(params.transl[frames] - rest_pelvis, dtype=torch.float32),
            )
            keep = min(batch, T - start)
            vertices.append(out.vertices[:keep].numpy())
            joints.append(out.joints[:keep, :NUM_JOINTS].numpy())
    return MeshSequence(
        vertices=np.concatenate(vertices).astype(np.float32),
        faces=np.asarray(model.faces, dtype=np.int32),
        joints=np.concatenate(joints).astype(np.float32),
    )


def write_mesh_npz(path: str | os.PathLike[str], mesh: MeshSequence, fps: float) -> Path:
    """Write a mesh sequence as .npz (vertices, faces, joints, fps), atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, vertices=mesh.vertices, faces=mesh.faces, joints=mesh.joints, fps=np.array(float(fps)))
    return atomic_write_bytes(path, buffer.getvalue())


def write_obj(path: str | os.PathLike[str], vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write one frame (V, 3) with faces (F, 3) as a Wavefront .obj, atomically."""
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices has shape {tuple(vertices.shape)}, expected (V, 3) for one frame")
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]  # .obj indices start at 1
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("ascii"))


def export_mesh(
    motion: Any,
    fps: float,
    smplx_model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    stem: str,
    betas: Any = None,
    gender: str = "neutral",
) -> Path:
    """Pose SMPL-X with a motion sequence (T, 227) and write ``{stem}_mesh.npz``; returns its path."""
    if not stem or Path(stem).name != stem:
        raise ValueError(f"stem {stem!r} must be a plain file name without folders")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps is {fps}, expected a positive frame rate")
    mesh = smplx_meshes(motion_to_smplx(motion, betas=betas), smplx_model_dir, gender=gender)
    return write_mesh_npz(Path(out_dir) / f"{stem}_mesh.npz", mesh, fps)
