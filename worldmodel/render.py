"""The dreamed 3-D state drawn into the dreamed head camera, and a colour memory to paint it.

The occupancy grid knows where the walls, the furniture, the props and both bodies are all
around the agent, behind it included. ``render_grid`` casts one ray per pixel of the head camera
(placed by ``warp.ego_camera_pose``) through a grid in the agent's heading frame and returns, per
pixel, what the ray meets first and at what planar depth:

  0 beyond  the ray left the grid sideways below the wall height (the room is closed: most such
            rays end on a wall the grid no longer covers)
  1 sky     the ray rose above the wall height without meeting anything
  2 floor   the plane z = 0 (analytic)
  3 static  walls and furniture (the grid's top layer is extended up to the wall height)
  4 movable props
  5 partner the other body
  6 agent   the agent's own body, past ``SELF_NEAR`` (its arm when it points; nearer, the camera
            sits inside its own head and neck voxels, which are see-through)

``colour_memory`` lifts the pixels of a real frame (with its depth) into the room and keeps, per
world, the mean colour of every class it saw and of every voxel of the grid it was seen with;
``paint`` colours a rendered view from it: a hit voxel's own colour where the memory saw that
voxel, else its class's colour. The room's structure in a dream then holds for as long as the
occupancy and the bodies hold, since it no longer has to survive a chain of reprojected frames;
the frame network only paints what neither the reprojection nor the render explains.
"""

from __future__ import annotations

import torch

from dreamgym.envs.motion import ROOT_POS, ROOT_QUAT, yaw_of_quat
from dreamgym.envs.occupancy import AGENT, MOVABLE, PARTNER, STATIC
from dreamgym.envs.scene import AGENT_RGBA, EGO_CAM_FOVY, PARTNER_RGBA, WALL_HEIGHT
from dreamgym.envs.spaces import MAX_DEPTH

from .warp import _rays, ego_camera_pose

RENDER_CLASSES = ("beyond", "sky", "floor", "static", "movable", "partner", "agent")
BEYOND, SKY, FLOOR, R_STATIC, R_MOVABLE, R_PARTNER, R_AGENT = range(len(RENDER_CLASSES))
N_RENDER = len(RENDER_CLASSES)
# grid class -> render class (free: nothing)
_GRID_TO_RENDER = {STATIC: R_STATIC, MOVABLE: R_MOVABLE, PARTNER: R_PARTNER, AGENT: R_AGENT}
SELF_NEAR = 0.45  # metres of planar depth: the agent's own voxels nearer than this are see-through
# the bodies' colours are the scene's (used where the memory never saw a body)
BODY_RGB = {R_PARTNER: PARTNER_RGBA[:3], R_AGENT: AGENT_RGBA[:3]}
NEAR = 0.1  # metres: the first sample along a ray (the camera sits in the agent's head voxels)
SKY_DEPTH = MAX_DEPTH  # what the renderer's depth reads where nothing is hit


def _heading(motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pelvis xy (B, 2) and the cos, sin (B,) of the heading of motion vectors (B, 227)."""
    yaw = yaw_of_quat(motion[:, ROOT_QUAT].float())
    return motion[:, ROOT_POS][:, :2].float(), torch.cos(yaw), torch.sin(yaw)


def voxel_index(points: torch.Tensor, motion: torch.Tensor, shape: tuple[int, int, int], voxel: float):
    """Voxel indices of world points (B, N, 3) in the grid (Z, X, Y) of the heading frame of
    ``motion`` (B, 227): ``(iz, ix, iy)`` long (B, N) each, unclamped."""
    Z, X, Y = shape
    xy, c, s = _heading(motion)
    rx, ry = points[..., 0] - xy[:, None, 0], points[..., 1] - xy[:, None, 1]
    hx, hy = c[:, None] * rx + s[:, None] * ry, -s[:, None] * rx + c[:, None] * ry
    ix = torch.floor((hx + X * voxel / 2) / voxel).long()
    iy = torch.floor((hy + Y * voxel / 2) / voxel).long()
    iz = torch.floor(points[..., 2] / voxel).long()
    return iz, ix, iy


def _lookup(grid: torch.Tensor, iz: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid classes (B, N) at voxel indices (outside: free) and the flat voxel index (clamped)."""
    B, Z, X, Y = grid.shape
    inside = (ix >= 0) & (ix < X) & (iy >= 0) & (iy < Y) & (iz >= 0) & (iz < Z)
    lin = (iz.clamp(0, Z - 1) * X + ix.clamp(0, X - 1)) * Y + iy.clamp(0, Y - 1)
    cls = grid.reshape(B, -1).gather(1, lin).long()
    return torch.where(inside, cls, torch.zeros_like(cls)), lin


def camera_rays(motion: torch.Tensor, H: int, W: int, fovy_deg: float = EGO_CAM_FOVY) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-camera origin (B, 3) and per-pixel world directions (B, H*W, 3), scaled so that a
    point ``origin + d * direction`` lies at planar depth ``d``."""
    pos, rot = ego_camera_pose(motion)
    dirs = _rays(H, W, fovy_deg, motion.device)[None] @ rot.transpose(1, 2)
    return pos, dirs


def _codes(grid: torch.Tensor, voxel: float) -> torch.Tensor:
    """A padded (B, Zw+2, X+2, Y+2) uint8 grid of render codes (render class + 1; 0: free) that a
    ray can be looked up in with clamped indices alone: the layer below the floor is floor, the
    lateral border is beyond, the layers above the grid up to the wall height continue the top
    layer's static voxels, and the layer above them is sky."""
    B, Z, X, Y = grid.shape
    Zw = max(Z, int(round(WALL_HEIGHT / voxel)))
    lut = torch.zeros(256, dtype=torch.uint8, device=grid.device)
    for gc, rc in _GRID_TO_RENDER.items():
        lut[gc] = rc + 1
    body = lut[grid.long()]
    top = torch.where(body[:, -1:] == R_STATIC + 1, body[:, -1:], torch.zeros_like(body[:, -1:]))
    body = torch.cat([body, top.expand(-1, Zw - Z, -1, -1)], 1)
    out = torch.full((B, Zw + 2, X + 2, Y + 2), BEYOND + 1, dtype=torch.uint8, device=grid.device)
    out[:, 1:-1, 1:-1, 1:-1] = body
    out[:, 0] = FLOOR + 1
    out[:, -1] = SKY + 1
    return out


def render_grid(
    grid: torch.Tensor, motion: torch.Tensor, H: int, W: int, voxel: float, step: float = 0.2, far: float = 6.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw an occupancy grid (B, Z, X, Y) uint8, in the heading frame of ``motion`` (B, 227),
    into that motion's head camera at H x W.

    Rays are sampled every ``step`` metres of planar depth up to ``far`` (the grid's half-width
    times sqrt 2 or more); what the first sample in a non-free voxel meets is the pixel's class,
    its depth half a step before that sample (the floor's exactly). Returns the render classes
    (B, H, W) long (``RENDER_CLASSES``; nothing within ``far``: beyond), the planar depth
    (B, 1, H, W) (``SKY_DEPTH`` for sky) and the world point of each pixel's hit (B, H*W, 3)."""
    B, Z, X, Y = grid.shape
    dev = grid.device
    motion = motion.to(dev).float()
    codes = _codes(grid, voxel)
    Zp, Xp, Yp = codes.shape[1:]
    pos, dirs = camera_rays(motion, H, W)
    # rays in the grid's frame, in voxel units, shifted by the padding
    xy, c, s = _heading(motion)
    rx, ry = pos[:, 0] - xy[:, 0], pos[:, 1] - xy[:, 1]
    o = torch.stack([(c * rx + s * ry) / voxel + X / 2 + 1, (-s * rx + c * ry) / voxel + Y / 2 + 1, pos[:, 2] / voxel + 1], -1)
    dl = (
        torch.stack(
            [
                (c[:, None] * dirs[..., 0] + s[:, None] * dirs[..., 1]),
                (-s[:, None] * dirs[..., 0] + c[:, None] * dirs[..., 1]),
                dirs[..., 2],
            ],
            -1,
        )
        / voxel
    )  # (B, N, 3)
    d = NEAR + step * torch.arange(int((far - NEAR) / step) + 1, device=dev, dtype=torch.float32)  # (S,)
    S = d.shape[0]

    def cell(axis: int, size: int) -> torch.Tensor:
        # the samples' voxel index along one axis (B, N, S): one contiguous pass per axis, several
        # times faster than the (B, N, S, 3) points with the axis innermost (the same numbers)
        return (dl[..., axis, None] * d).add_(o[:, axis, None, None]).floor_().clamp_(0, size - 1).to(torch.int32)

    V = Zp * Xp * Yp
    lin = (cell(2, Zp) * Xp + cell(0, Xp)) * Yp + cell(1, Yp) + (torch.arange(B, device=dev, dtype=torch.int32) * V).view(B, 1, 1)
    code = codes.view(-1)[lin.view(-1)].view(B, -1, S)  # (B, N, S)
    code = torch.where((code == R_AGENT + 1) & (d < SELF_NEAR), torch.zeros_like(code), code)
    hit = code > 0
    first = hit.to(torch.uint8).argmax(2)  # (B, N); 0 where nothing is hit
    got = code.gather(2, first[..., None])[..., 0].long()
    rcls = torch.where(got > 0, got - 1, torch.full_like(got, BEYOND))
    depth = (d[first] - step / 2).clamp_min(NEAR)
    dz = dirs[..., 2]
    d_floor = -pos[:, None, 2] / dz.clamp(max=-1e-6)
    depth = torch.where(rcls == FLOOR, d_floor, depth)
    depth = torch.where(got == 0, torch.full_like(depth, far), depth)
    depth = torch.where(rcls == SKY, torch.full_like(depth, SKY_DEPTH), depth).clamp(max=SKY_DEPTH)
    hit_pts = pos[:, None] + dirs * (depth + torch.where(rcls == FLOOR, 0.0, step / 2))[..., None]
    return rcls.view(B, H, W), depth.view(B, 1, H, W), hit_pts


def classify_pixels(
    depth: torch.Tensor, motion: torch.Tensor, grid: torch.Tensor, voxel: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The render class (B, N) of every pixel of real frames, from their planar depth (B, 1, H, W)
    and the occupancy grid seen with them (B, Z, X, Y, heading frame of ``motion``), the world
    points (B, N, 3) and the flat voxel index (B, N) of each (-1: none)."""
    B, _, H, W = depth.shape
    Z, X, Y = grid.shape[1:]
    pos, dirs = camera_rays(motion, H, W)
    dd = depth.reshape(B, -1).float()
    pts = pos[:, None] + dirs * dd[..., None]
    # a surface point lies on its voxel's face: look a little past it, into the voxel
    probe = pos[:, None] + dirs * (dd + 0.25 * voxel)[..., None]
    iz, ix, iy = voxel_index(probe, motion, (Z, X, Y), voxel)
    g, lin = _lookup(grid, iz.clamp(max=Z - 1), ix, iy)
    out = torch.full_like(g, BEYOND)
    for gc, rc in _GRID_TO_RENDER.items():
        out = torch.where(g == gc, torch.full_like(g, rc), out)
    out = torch.where(pts[..., 2] < 0.5 * voxel, torch.full_like(g, FLOOR), out)
    out = torch.where(dd >= MAX_DEPTH - 1e-3, torch.full_like(g, SKY), out)
    known = (out == R_STATIC) | (out == R_MOVABLE)
    return out, pts, torch.where(known, lin, torch.full_like(lin, -1))


def colour_memory(
    rgb: torch.Tensor, depth: torch.Tensor, motion: torch.Tensor, grid: torch.Tensor, voxel: float
) -> dict[str, torch.Tensor]:
    """What real frames (B, 3, H, W) with depth (B, 1, H, W), seen from ``motion`` (B, 227) with
    the grid ``grid`` (B, Z, X, Y), show of the room: the mean colour of each render class
    (``class_rgb`` (B, 6, 3), ``class_n`` (B, 6) pixel counts) and of each static or movable voxel
    (``voxel_rgb`` (B, Z*X*Y, 3), ``voxel_n``), with the motion and grid shape they are indexed by."""
    B = rgb.shape[0]
    V = grid[0].numel()
    cls, _, lin = classify_pixels(depth, motion, grid, voxel)
    col = rgb.float().reshape(B, 3, -1).transpose(1, 2)  # (B, N, 3)
    ones = torch.ones_like(cls, dtype=torch.float32)
    class_rgb = torch.zeros(B, N_RENDER, 3, device=rgb.device).scatter_add_(1, cls[..., None].expand(-1, -1, 3), col)
    class_n = torch.zeros(B, N_RENDER, device=rgb.device).scatter_add_(1, cls, ones)
    slot = torch.where(lin >= 0, lin, torch.full_like(lin, V))  # the spare slot V collects the rest
    voxel_rgb = torch.zeros(B, V + 1, 3, device=rgb.device).scatter_add_(1, slot[..., None].expand(-1, -1, 3), col)
    voxel_n = torch.zeros(B, V + 1, device=rgb.device).scatter_add_(1, slot, ones)
    return {
        "class_rgb": class_rgb / class_n.clamp_min(1)[..., None],
        "class_n": class_n,
        "voxel_rgb": voxel_rgb[:, :V] / voxel_n[:, :V].clamp_min(1)[..., None],
        "voxel_n": voxel_n[:, :V],
        "motion": motion.float(),
        "shape": torch.tensor(grid.shape[1:]),
    }


def paint(cls: torch.Tensor, hit_pts: torch.Tensor, memory: dict[str, torch.Tensor], voxel: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour a render (classes (B, H, W), world hit points (B, H*W, 3)) from a ``colour_memory``:
    a static or movable hit takes its voxel's remembered colour where the memory saw that voxel
    (indexed in the memory's own heading frame), else its class's colour. Returns RGB (B, 3, H, W)
    float in 0..255 and ``known`` (B, 1, H, W) bool: the pixels the memory could colour."""
    B, H, W = cls.shape
    c = cls.reshape(B, -1)
    crgb, cn = memory["class_rgb"].clone(), memory["class_n"].clone()
    for rc, rgb in BODY_RGB.items():
        unseen = cn[:, rc] == 0
        crgb[:, rc] = torch.where(unseen[:, None], torch.tensor(rgb, device=crgb.device) * 255.0, crgb[:, rc])
        cn[:, rc] = torch.where(unseen, torch.ones_like(cn[:, rc]), cn[:, rc])
    ccol = crgb.gather(1, c[..., None].expand(-1, -1, 3))
    cknown = cn.gather(1, c) > 0
    Z, X, Y = (int(v) for v in memory["shape"])
    iz, ix, iy = voxel_index(hit_pts + 0.0, memory["motion"], (Z, X, Y), voxel)
    inside = (ix >= 0) & (ix < X) & (iy >= 0) & (iy < Y) & (iz >= 0) & (iz < Z)
    lin = (iz.clamp(0, Z - 1) * X + ix.clamp(0, X - 1)) * Y + iy.clamp(0, Y - 1)
    vn = memory["voxel_n"].gather(1, lin)
    vcol = memory["voxel_rgb"].gather(1, lin[..., None].expand(-1, -1, 3))
    solid = (c == R_STATIC) | (c == R_MOVABLE)
    use_v = solid & inside & (vn > 0)
    col = torch.where(use_v[..., None], vcol, ccol)
    known = use_v | cknown
    return col.transpose(1, 2).reshape(B, 3, H, W), known.view(B, 1, H, W)
