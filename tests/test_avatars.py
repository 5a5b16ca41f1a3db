"""Avatars: motion -> SMPL-X parameters, file exports read back by independent readers, meshes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
from bvh import Bvh
from scipy.spatial.transform import Rotation

from dreamgym.avatars.exports import export_episode, write_amass_npz, write_bvh
from dreamgym.avatars.kinematics import (
    forward_kinematics,
    motion_from_pose,
    quat_wxyz_to_rotmat,
    stored_joint_positions_world,
)
from dreamgym.avatars.mesh import export_mesh, find_smplx_model_file, smplx_meshes, write_obj
from dreamgym.avatars.smplx_params import motion_to_smplx, smplx_to_joints, smplx_to_motion
from dreamgym.envs.motion import MOTION_DIM, split_motion
from dreamgym.envs.skeleton import (
    JOINT_NAMES,
    NUM_JOINTS,
    PELVIS_HEIGHT,
    REST_OFFSETS,
    SMPLX_FROM_MUJOCO,
    rest_positions,
)

FPS = 30.0
T = 48
C = SMPLX_FROM_MUJOCO

# Tolerances: float32 motion vectors and glTF accessors carry ~1e-6 relative error; BVH text
# keeps 6 decimals of centimetres and degrees.
# Measured: about 1e-7 m for every path below.
SMPLX_TOL = 1e-5  # metres
BVH_TOL = 1e-5  # metres
GLB_TOL = 1e-5  # metres


def synthetic_pose(num_frames: int = T, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A walking-like pose sequence: root path and sinusoidal joint rotations (MuJoCo frame)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames) / FPS
    root_pos = np.stack((0.8 * t, 0.2 * np.sin(t), PELVIS_HEIGHT + 0.03 * np.sin(6 * t)), axis=1)
    axes = rng.normal(size=(NUM_JOINTS, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    amplitude = rng.uniform(0.2, 1.2, size=NUM_JOINTS)
    freq = rng.uniform(0.5, 2.5, size=NUM_JOINTS)
    angles = amplitude * np.sin(2 * np.pi * freq * t[:, None] + rng.uniform(0, 6, NUM_JOINTS))
    rotvec = angles[..., None] * axes  # (T, 22, 3)
    rotvec[:, 0] = np.stack((0.1 * np.sin(t), 0.05 * np.cos(t), 1.5 * t), axis=1)  # turning root
    quats = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_quat(scalar_first=True).reshape(num_frames, NUM_JOINTS, 4)
    return root_pos, quats


@pytest.fixture(scope="module")
def pose() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_pose()


@pytest.fixture(scope="module")
def motion(pose: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return motion_from_pose(*pose, dt=1.0 / FPS)


@pytest.fixture(scope="module")
def source_joints_smplx(pose: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(T, 22, 3) joint positions of the source pose, SMPL-X frame (float64 FK, MuJoCo frame, mapped)."""
    world, _ = forward_kinematics(pose[0], quat_wxyz_to_rotmat(pose[1]), REST_OFFSETS)
    return world @ C.T


def max_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_motion_from_pose_is_consistent(pose, motion) -> None:
    assert motion.shape == (T, MOTION_DIM) and motion.dtype == np.float32
    world, _ = forward_kinematics(pose[0], quat_wxyz_to_rotmat(pose[1]), REST_OFFSETS)
    # the stored root-frame positions, put back in the world, are the FK positions
    assert max_err(stored_joint_positions_world(motion), world) < 1e-5
    # the stored local rotations are the input ones (up to the quaternion sign)
    stored = split_motion(torch.from_numpy(motion))["joint_rot"].numpy()
    assert np.abs(np.abs((stored * pose[1]).sum(-1)) - 1.0).max() < 1e-6
    vel = split_motion(torch.from_numpy(motion))["joint_vel"].numpy()
    assert np.all(vel[0] == 0) and np.abs(vel[1:]).max() > 0.1


def test_smplx_params_round_trip(motion, source_joints_smplx) -> None:
    params = motion_to_smplx(motion)
    assert params.global_orient.shape == (T, 3) and params.body_pose.shape == (T, 21, 3)
    assert params.transl.shape == (T, 3) and params.joints.shape == (T, 22, 3)
    np.testing.assert_array_equal(params.betas, np.zeros(10))
    assert max_err(params.joints, source_joints_smplx) < SMPLX_TOL
    assert max_err(params.transl, source_joints_smplx[:, 0]) < SMPLX_TOL
    # FK from the exported parameters alone gives the source joints back
    fk = smplx_to_joints(params.global_orient, params.body_pose.reshape(T, 63), params.transl)
    assert max_err(fk, source_joints_smplx) < SMPLX_TOL
    # and so does the motion vector rebuilt from them
    back = smplx_to_motion(params, dt=1.0 / FPS)
    assert max_err(back[:, :3], motion[:, :3]) < 1e-5
    assert max_err(stored_joint_positions_world(back), stored_joint_positions_world(motion)) < 1e-5
    # torch input (either side, e.g. a dreamed batch element) gives the same parameters
    from_torch = motion_to_smplx(torch.from_numpy(motion))
    np.testing.assert_allclose(from_torch.body_pose, params.body_pose, atol=1e-12)


def test_smplx_axes_semantics() -> None:
    """A left-elbow bend about the body's up axis (MuJoCo z) is a bend about SMPL-X's y."""
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (1, NUM_JOINTS, 1))
    quats[0, 18] = Rotation.from_rotvec([0.0, 0.0, np.pi / 2]).as_quat(scalar_first=True)
    params = motion_to_smplx(motion_from_pose(np.array([[1.0, 2.0, 0.9]]), quats, dt=0.1))
    np.testing.assert_allclose(params.body_pose[0, 17], [0.0, np.pi / 2, 0.0], atol=1e-6)
    np.testing.assert_allclose(params.transl[0], [2.0, 0.9, 1.0], atol=1e-6)  # x left, y up, z fwd
    # the left elbow is on SMPL-X's +x side (the body's left); +90 deg about up swings the forearm
    # from pointing left (+x) to pointing back (-z)
    elbow, wrist = params.joints[0, JOINT_NAMES.index("left_elbow")], params.joints[0, JOINT_NAMES.index("left_wrist")]
    assert elbow[0] > params.transl[0, 0] + 0.4
    np.testing.assert_allclose(wrist - elbow, [0.0, 0.0, -0.25], atol=1e-6)


def test_amass_npz_reads_back(tmp_path: Path, motion, source_joints_smplx) -> None:
    params = motion_to_smplx(motion)
    path = write_amass_npz(tmp_path / "walk.npz", params, FPS)
    data = np.load(path)
    assert data["poses"].shape == (T, 165) and data["trans"].shape == (T, 3)
    np.testing.assert_array_equal(data["betas"], np.zeros(16))
    assert str(data["gender"]) == "neutral" and str(data["surface_model_type"]) == "smplx"
    assert float(data["mocap_framerate"]) == FPS
    np.testing.assert_array_equal(data["poses"][:, 66:], 0.0)  # jaw, eyes, hands
    assert max_err(data["joints"], source_joints_smplx) < SMPLX_TOL
    fk = smplx_to_joints(data["poses"][:, :3], data["poses"][:, 3:66], data["trans"])
    assert max_err(fk, source_joints_smplx) < SMPLX_TOL


def bvh_joint_positions(text: str, metres_per_unit: float) -> tuple[list[str], np.ndarray, Bvh]:
    """FK of a BVH file from its channels, reading the channel order generically."""
    mocap = Bvh(text)
    names = mocap.get_joints_names()  # parents before children
    out = np.zeros((mocap.nframes, len(names), 3))
    rot = {}
    for k, name in enumerate(names):
        channels = mocap.joint_channels(name)
        values = np.array(mocap.frames_joint_channels(name, channels))  # (T, n)
        local = Rotation.identity(mocap.nframes)
        pos = np.array(mocap.joint_offset(name)) * metres_per_unit
        pos = np.tile(pos, (mocap.nframes, 1))
        for c, ch in enumerate(channels):
            if ch.endswith("rotation"):
                local = local * Rotation.from_euler(ch[0].lower(), values[:, c, None], degrees=True)
            else:
                pos[:, "XYZ".index(ch[0])] += values[:, c] * metres_per_unit
        parent = mocap.joint_parent(name)
        if parent is None:
            out[:, k], rot[name] = pos, local
        else:
            p = names.index(parent.name)
            out[:, k] = out[:, p] + rot[parent.name].apply(pos)
            rot[name] = rot[parent.name] * local
    return names, out, mocap


def test_bvh_reads_back_with_independent_parser(tmp_path: Path, motion, source_joints_smplx) -> None:
    path = write_bvh(tmp_path / "walk.bvh", motion_to_smplx(motion), FPS)  # centimetres
    names, positions, mocap = bvh_joint_positions(path.read_text(), metres_per_unit=0.01)
    assert sorted(names) == sorted(JOINT_NAMES) and mocap.nframes == T
    assert abs(mocap.frame_time - 1.0 / FPS) < 1e-8
    order = [names.index(n) for n in JOINT_NAMES]
    err = max_err(positions[:, order], source_joints_smplx)
    assert err < BVH_TOL, f"BVH joints are {err * 1000:.3f} mm off"


def glb_accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}[acc.type]
    dtype = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_SHORT: np.uint16}[acc.componentType]
    offset = view.byteOffset + (acc.byteOffset or 0)
    return np.frombuffer(gltf.binary_blob(), dtype, count=acc.count * width, offset=offset).reshape(acc.count, width)


def glb_joint_positions(gltf: pygltflib.GLTF2) -> tuple[np.ndarray, np.ndarray]:
    """World positions (T, 22, 3) of the skin's joints from node rest transforms + animation."""
    anim = gltf.animations[0]
    times = glb_accessor(gltf, anim.samplers[0].input)[:, 0]
    num_frames = times.shape[0]
    track = {}
    for ch in anim.channels:
        track[(ch.target.node, ch.target.path)] = glb_accessor(gltf, anim.samplers[ch.sampler].output)
    parent = {c: i for i, n in enumerate(gltf.nodes) for c in (n.children or [])}

    def world(node: int, frame: int) -> np.ndarray:
        n = gltf.nodes[node]
        m = np.eye(4)
        t = track.get((node, "translation"))
        r = track.get((node, "rotation"))
        m[:3, 3] = t[frame] if t is not None else (n.translation or [0, 0, 0])
        m[:3, :3] = Rotation.from_quat(r[frame] if r is not None else (n.rotation or [0, 0, 0, 1])).as_matrix()
        return m if node not in parent else world(parent[node], frame) @ m

    joints = gltf.skins[0].joints
    out = np.array([[world(j, f)[:3, 3] for j in joints] for f in range(num_frames)])
    return times, out


def test_glb_reads_back_with_pygltflib(tmp_path: Path, motion, source_joints_smplx) -> None:
    paths = export_episode(motion, FPS, tmp_path / "out", "walk")
    assert set(paths) == {"npz", "bvh", "glb"} and all(p.is_file() for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["walk.bvh", "walk.glb", "walk.npz"]
    gltf = pygltflib.GLTF2.load(paths["glb"])
    skin = gltf.skins[0]
    assert [gltf.nodes[j].name for j in skin.joints] == list(JOINT_NAMES)
    times, positions = glb_joint_positions(gltf)
    np.testing.assert_allclose(times, np.arange(T) / FPS, atol=1e-6)
    err = max_err(positions, source_joints_smplx)
    assert err < GLB_TOL, f"glTF joints are {err * 1000:.3f} mm off"
    # inverse bind matrices undo each joint's rest placement
    ibm = glb_accessor(gltf, skin.inverseBindMatrices).reshape(-1, 4, 4).transpose(0, 2, 1)
    rest = C @ np.array([0.0, 0.0, PELVIS_HEIGHT]) + rest_positions() @ C.T
    np.testing.assert_allclose(-ibm[:, :3, 3], rest, atol=1e-6)
    mesh = gltf.meshes[0].primitives[0]
    assert glb_accessor(gltf, mesh.attributes.POSITION).shape == (NUM_JOINTS * 6, 3)


def test_export_overwrites_atomically(tmp_path: Path, motion) -> None:
    first = export_episode(motion[:5], FPS, tmp_path, "ep")
    second = export_episode(motion, FPS, tmp_path, "ep")
    assert first == second
    assert np.load(second["npz"])["poses"].shape == (T, 165)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep.bvh", "ep.glb", "ep.npz"]  # no temp files


def test_bad_input_raises(tmp_path: Path, motion) -> None:
    with pytest.raises(ValueError, match=r"shape \(5, 226\), expected \(T, 227\)"):
        motion_to_smplx(np.zeros((5, 226)))
    with pytest.raises(ValueError, match=r"shape \(227,\)"):
        motion_to_smplx(motion[0])
    bad = motion.copy()
    bad[3, 100] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*nan at index \(3, 100\)"):
        export_episode(bad, FPS, tmp_path / "nan", "ep")
    assert not (tmp_path / "nan").exists()
    zero = motion.copy()
    zero[2, 73:77] = 0.0
    with pytest.raises(ValueError, match="zero-length quaternion at frame 2"):
        motion_to_smplx(zero)
    with pytest.raises(ValueError, match="fps is 0.0"):
        export_episode(motion, 0.0, tmp_path, "ep")
    with pytest.raises(ValueError, match="plain file name"):
        export_episode(motion, FPS, tmp_path, "a/b")
    with pytest.raises(ValueError, match=r"body_pose has shape \(48, 20, 3\)"):
        smplx_to_joints(np.zeros((T, 3)), np.zeros((T, 20, 3)), np.zeros((T, 3)))
    with pytest.raises(ValueError, match="betas has shape"):
        motion_to_smplx(motion, betas=np.zeros((2, 10)))


# --- mesh: a tiny synthetic model file in the SMPL-X .npz format -------------------------------

NUM_VERTS = 10475  # smplx's joint selector reads fixed vertex ids (up to 9929), so keep the count
SMPLX_NUM_JOINTS = 55
TEMPLATE_PELVIS = np.array([0.003, -0.35, 0.012])  # where SMPL-X's template puts the rest pelvis
BETA0_SHIFT = 0.05  # metres up per unit of betas[0] in the synthetic shape space


def smplx_parents() -> np.ndarray:
    parents = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19]
    parents += [15, 15, 15]  # jaw, left eye, right eye
    for wrist in (20, 21):  # five three-joint fingers per hand
        for _ in range(5):
            start = len(parents)
            parents += [wrist, start, start + 1]
    assert len(parents) == SMPLX_NUM_JOINTS
    return np.array(parents)


def write_synthetic_smplx(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write SMPLX_NEUTRAL.npz: joint i is vertex i, every vertex rigidly bound to one joint.

    Returns each vertex's joint and the vertex offset from that joint at rest.
    """
    rng = np.random.default_rng(1)
    parents = smplx_parents()
    joints = np.zeros((SMPLX_NUM_JOINTS, 3))
    joints[:NUM_JOINTS] = TEMPLATE_PELVIS + rest_positions() @ C.T
    for j in range(NUM_JOINTS, SMPLX_NUM_JOINTS):
        joints[j] = joints[parents[j]] + [0.0, 0.01, 0.0]
    owner = np.concatenate((np.arange(SMPLX_NUM_JOINTS), rng.integers(0, NUM_JOINTS, NUM_VERTS - SMPLX_NUM_JOINTS)))
    offset = np.concatenate((np.zeros((SMPLX_NUM_JOINTS, 3)), rng.normal(0, 0.05, (NUM_VERTS - SMPLX_NUM_JOINTS, 3))))
    shapedirs = np.zeros((NUM_VERTS, 3, 20), np.float32)
    shapedirs[:, 1, 0] = BETA0_SHIFT
    folder.mkdir(parents=True)
    np.savez_compressed(
        folder / "SMPLX_NEUTRAL.npz",
        v_template=(joints[owner] + offset).astype(np.float32),
        f=np.arange(300).reshape(100, 3).astype(np.int32),
        shapedirs=shapedirs,
        posedirs=np.zeros((NUM_VERTS, 3, (SMPLX_NUM_JOINTS - 1) * 9), np.float32),
        J_regressor=np.eye(SMPLX_NUM_JOINTS, NUM_VERTS, dtype=np.float32),
        weights=np.eye(SMPLX_NUM_JOINTS, dtype=np.float32)[owner],
        kintree_table=np.stack((parents, np.arange(SMPLX_NUM_JOINTS))).astype(np.int64),
        hands_componentsl=np.eye(45, dtype=np.float32),
        hands_componentsr=np.eye(45, dtype=np.float32),
        hands_meanl=np.zeros(45, np.float32),
        hands_meanr=np.zeros(45, np.float32),
        lmk_faces_idx=np.zeros(51, np.int64),
        lmk_bary_coords=np.full((51, 3), 1 / 3, np.float32),
        dynamic_lmk_faces_idx=np.zeros((79, 17), np.int64),
        dynamic_lmk_bary_coords=np.full((79, 17, 3), 1 / 3, np.float32),
    )
    return owner, offset


def test_mesh_from_synthetic_smplx_model(tmp_path: Path, motion) -> None:
    owner, offset = write_synthetic_smplx(tmp_path / "models" / "smplx")
    assert find_smplx_model_file(tmp_path / "models").name == "SMPLX_NEUTRAL.npz"
    betas = np.zeros(10)
    betas[0] = 1.5  # moves the rest pelvis: the mesh must still land on our pelvis
    params = motion_to_smplx(motion, betas=betas)
    mesh = smplx_meshes(params, tmp_path / "models", chunk_size=20)  # 48 frames: a padded last chunk
    assert mesh.vertices.shape == (T, NUM_VERTS, 3) and mesh.faces.shape == (100, 3)
    assert max_err(mesh.joints, params.joints) < SMPLX_TOL
    assert max_err(mesh.vertices[:, :NUM_JOINTS], params.joints) < SMPLX_TOL
    # every vertex moves rigidly with its joint: p_j + R_j offset
    _, global_rot = forward_kinematics(params.transl, params.local_rotmats(), np.zeros((NUM_JOINTS, 3)))
    body = owner < NUM_JOINTS
    expected = params.joints[:, owner[body]] + np.einsum("tvij,vj->tvi", global_rot[:, owner[body]], offset[body])
    assert max_err(mesh.vertices[:, body], expected) < SMPLX_TOL

    path = export_mesh(motion[:4], FPS, tmp_path / "models", tmp_path / "out", "walk", betas=betas)
    data = np.load(path)
    assert data["vertices"].shape == (4, NUM_VERTS, 3) and float(data["fps"]) == FPS
    obj = write_obj(tmp_path / "out" / "frame0.obj", data["vertices"][0], data["faces"]).read_text().splitlines()
    assert len(obj) == NUM_VERTS + 100 and obj[-1] == "f 298 299 300"


def test_mesh_without_model_files_names_what_is_missing(tmp_path: Path, motion) -> None:
    with pytest.raises(FileNotFoundError, match=r"SMPLX_NEUTRAL\.npz.*smpl-x\.is\.tue\.mpg\.de"):
        export_mesh(motion, FPS, tmp_path / "nowhere", tmp_path, "walk")
