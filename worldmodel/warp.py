"""Reprojecting an ego frame to a new head pose (depth-based forward warping, batched torch).

The agent's head camera is rigidly attached to its head body (``envs/scene.py``: position
``EGO_CAM_POS`` in the head frame, looking along the head's +x with the head's +z up, square
image, ``EGO_CAM_FOVY`` vertical field of view). The motion vector holds everything needed to
place it: the pelvis pose, the head joint's position in the root (heading) frame and the local
joint rotations along the spine chain. So from two motion vectors and one RGB-D frame the frame
can be re-rendered, approximately, from the second pose: every pixel is lifted to 3-D with its
planar depth, moved into the new camera and splatted with a z-buffer. Pixels that no source
pixel lands on (what the old view did not see) are reported in a validity mask.

The world model uses this as the *base* of its frame prediction: it denoises the difference
between the next frame and the last frame warped to the next (predicted) head pose, so that the
view's geometric change under the agent's own motion comes for free and the network only has to
learn what warping cannot explain (disocclusions, moving bodies, lighting).
"""

from __future__ import annotations

import functools
import math

import torch

from dreamgym.envs.motion import JOINT_POS, JOINT_ROT, MOTION_DIM, ROOT_POS, ROOT_QUAT, quat_mul, yaw_of_quat
from dreamgym.envs.scene import EGO_CAM_FOVY, EGO_CAM_POS
from dreamgym.envs.skeleton import NUM_JOINTS, PARENTS
from dreamgym.envs.spaces import MAX_DEPTH

HEAD = 15  # SMPL-X joint index of the head
FAR = 1.0e4  # metres: where pixels that saw nothing are placed
# camera axes in the head frame (MuJoCo: x right, y up, looking along -z): xyaxes="0 -1 0 0 0 1"
_CAM_IN_HEAD = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: x, y, z axes


def _chain(joint: int) -> list[int]:
    out = []
    while joint >= 0:
        out.append(joint)
        joint = PARENTS[joint]
    return out[::-1]


_HEAD_CHAIN = _chain(HEAD)


def camera_feature_index() -> torch.Tensor:
    """Indices into a motion vector of the numbers that place the head camera besides the root:
    the local rotations of the spine, neck and head and the head's position."""
    idx = [JOINT_ROT.start + 4 * j + k for j in _HEAD_CHAIN[1:] for k in range(4)]
    idx += [JOINT_POS.start + 3 * HEAD + k for k in range(3)]
    return torch.tensor(idx)


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) unit quaternions (w, x, y, z) -> (..., 3, 3) rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def ego_camera_pose(motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World position (B, 3) and orientation (B, 3, 3; columns = camera x, y, z axes) of the
    agent's head camera from its motion vectors (B, 227)."""
    motion = motion.float()
    rots = motion[:, JOINT_ROT].reshape(-1, NUM_JOINTS, 4)
    # joint 0's rotation is the global orientation, equal to the root's: read the root's, which a
    # world model predicts relative to the heading (joint 0's change depends on the world yaw)
    q = motion[:, ROOT_QUAT]
    for j in _HEAD_CHAIN[1:]:
        q = quat_mul(q, rots[:, j])
    r_head = quat_to_matrix(q)
    yaw = yaw_of_quat(motion[:, ROOT_QUAT])
    head_rel = motion[:, JOINT_POS].reshape(-1, NUM_JOINTS, 3)[:, HEAD]
    c, s = torch.cos(yaw), torch.sin(yaw)
    head = motion[:, ROOT_POS] + torch.stack(
        (c * head_rel[:, 0] - s * head_rel[:, 1], s * head_rel[:, 0] + c * head_rel[:, 1], head_rel[:, 2]), -1
    )
    offset, cam_in_head = _camera_constants(motion.device)
    pos = head + r_head @ offset
    return pos, r_head @ cam_in_head


@functools.cache
def _camera_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The camera's offset in the head frame (3,) and its axes there (3, 3), on ``device`` (made
    once: a host-to-device copy per call would stall a GPU)."""
    return torch.tensor(EGO_CAM_POS, device=device), _CAM_IN_HEAD.to(device)


@functools.cache
def _rays(H: int, W: int, fovy_deg: float, device: torch.device) -> torch.Tensor:
    """(H*W, 3) per-pixel directions in the camera frame with forward component 1 (z = -1); made
    once per image size and device (never written to)."""
    t = math.tan(math.radians(fovy_deg) / 2)
    u = ((torch.arange(W, device=device) + 0.5) / W * 2 - 1) * t * (W / H)
    v = (1 - (torch.arange(H, device=device) + 0.5) / H * 2) * t
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack((uu.reshape(-1), vv.reshape(-1), -torch.ones(H * W, device=device)), -1)


def _nearest_upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, factor*H, factor*W), each pixel repeated (nearest-neighbour
    upsampling by an integer factor, as one strided copy)."""
    B, C, H, W = x.shape
    return x[:, :, :, None, :, None].expand(B, C, H, factor, W, factor).reshape(B, C, H * factor, W * factor)


def warp_frame(
    rgb: torch.Tensor,
    depth: torch.Tensor,
    motion_from: torch.Tensor,
    motion_to: torch.Tensor,
    fovy_deg: float = EGO_CAM_FOVY,
    supersample: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-render ego frames from the head pose of ``motion_to``.

    Args:
        rgb: (B, 3, H, W) frames seen from the pose of ``motion_from`` (any dtype; uint8 or float).
        depth: (B, 1, H, W) their planar depth, metres.
        motion_from, motion_to: (B, 227) motion vectors of the agent at the two steps.
        supersample: each source pixel is split into supersample^2 points before splatting, so
            that views moving closer do not crack.

    Returns:
        ``rgb`` (B, 3, H, W) float (the input's value range), ``depth`` (B, 1, H, W) float and
        ``valid`` (B, 1, H, W) bool: where a source point landed. Invalid pixels hold the input
        frame's values (copy-last-frame).
    """
    if rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"warp_frame: rgb must be (B, 3, H, W), got {tuple(rgb.shape)}")
    B, _, H, W = rgb.shape
    if tuple(depth.shape) != (B, 1, H, W):
        raise ValueError(f"warp_frame: depth must be {(B, 1, H, W)} like rgb, got {tuple(depth.shape)}")
    for name, m in (("motion_from", motion_from), ("motion_to", motion_to)):
        if tuple(m.shape) != (B, MOTION_DIM):
            raise ValueError(f"warp_frame: {name} must be {(B, MOTION_DIM)} motion vectors, got {tuple(m.shape)}")
    dev = rgb.device
    fallback = torch.cat([rgb.float(), depth.float()], 1)
    src = _nearest_upsample(fallback, supersample) if supersample > 1 else fallback
    Hs, Ws = src.shape[-2:]
    d = src[:, 3].reshape(B, -1)  # (B, N)
    # nothing hit (or beyond the cap): a point at (practically) infinite distance, which only the
    # camera's rotation moves; it loses every z-test against real geometry
    far = d >= MAX_DEPTH - 1e-4
    d = torch.where(far, torch.full_like(d, FAR), d)
    # the points in the source camera's frame, then the world, then the new camera's frame (x
    # right, y up, -z forward), one coordinate plane (B, N) at a time: the same sums as a (B, N, 3)
    # @ (B, 3, 3) product, at a fraction of a batched 3x3 matmul's cost on the CPU
    rays = _rays(Hs, Ws, fovy_deg, torch.device(dev))
    pts = [rays[:, k] * d for k in range(3)]
    p0, r0 = ego_camera_pose(motion_from.to(dev))
    p1, r1 = ego_camera_pose(motion_to.to(dev))
    world = [pts[0] * r0[:, j, 0, None] + pts[1] * r0[:, j, 1, None] + pts[2] * r0[:, j, 2, None] + p0[:, j, None] for j in range(3)]
    rel = [world[k] - p1[:, k, None] for k in range(3)]
    cam = [rel[0] * r1[:, 0, j, None] + rel[1] * r1[:, 1, j, None] + rel[2] * r1[:, 2, j, None] for j in range(3)]
    z = -cam[2]
    t = math.tan(math.radians(fovy_deg) / 2)
    zc = z.clamp_min(1e-3)
    col = ((cam[0] / zc) / (t * W / H) + 1) / 2 * W - 0.5
    row = (1 - (cam[1] / zc) / t) / 2 * H - 0.5
    ci, ri = col.round().long(), row.round().long()
    ok = (z > 0.05) & (ci >= 0) & (ci < W) & (ri >= 0) & (ri < H)
    flat = torch.where(ok, ri * W + ci, H * W)  # the extra slot H*W collects the rejected points
    base = (torch.arange(B, device=dev) * (H * W + 1))[:, None]
    idx = (flat + base).reshape(-1)
    zf = torch.where(ok, z, torch.full_like(z, float("inf"))).reshape(-1)
    zbuf = torch.full((B * (H * W + 1),), float("inf"), device=dev)
    zbuf = zbuf.scatter_reduce(0, idx, zf, reduce="amin")
    win = ok.reshape(-1) & (zf <= zbuf[idx] + 1e-6)
    # the points that lose the z-test go to the rejected slot too: a fixed-size splat, where
    # selecting the winners first would be a data-dependent size (a host read on a GPU)
    wi = torch.where(win, idx, (base + H * W).expand(B, Hs * Ws).reshape(-1))
    # colour and new depth summed per pixel, one channel plane at a time
    out = torch.zeros(4, B * (H * W + 1), device=dev)
    for ch, v in enumerate((src[:, 0], src[:, 1], src[:, 2], z)):
        out[ch].index_add_(0, wi, v.reshape(-1))
    cnt = torch.zeros(B * (H * W + 1), device=dev).index_add_(0, wi, torch.ones_like(wi, dtype=torch.float32))
    out = out.view(4, B, H * W + 1)[:, :, : H * W]
    cnt = cnt.view(B, H * W + 1)[:, : H * W]
    valid = (cnt > 0).reshape(B, 1, H, W)
    res = (out / cnt.clamp_min(1)).permute(1, 0, 2).reshape(B, 4, H, W)
    res = torch.where(valid, res, fallback)
    # a point farther than the cap reads as MAX_DEPTH, as the renderer's depth does
    return res[:, :3], res[:, 3:4].clamp(0, MAX_DEPTH), valid
