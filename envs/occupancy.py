"""Semantic occupancy around the agent (batched, torch): a voxel grid in the agent's heading frame.

The grid is centred on the agent's pelvis in x, y and starts at the floor in z; x points where the
agent faces, y to its left. With the defaults (32 x 32 x 8 voxels of 0.25 m) it covers 8 m x 8 m x
2 m. The observation is ``(Z, X, Y)`` uint8 -- height as channels of a bird's-eye-view image, as
OccWorld-style models take it -- with classes:

  0 free, 1 static (walls, furniture), 2 movable (props), 3 partner, 4 agent.

A voxel takes the highest class among what occupies it. Boxes and balls count where they overlap
the voxel; to keep this cheap and exact for upright boxes the test is made in two parts, a
footprint in the horizontal plane (in the geom's own yaw frame) and a vertical extent, each
inflated by half a voxel, i.e. a voxel is occupied when its centre lies within half a voxel of
the geom. The humanoids are marked where their skeleton passes: every bone is sampled every
``BONE_STEP`` m and the voxels holding a sample are set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .skeleton import BONES

FREE, STATIC, MOVABLE, PARTNER, AGENT = range(5)
CLASS_NAMES = ("free", "static", "movable", "partner", "agent")
BONE_STEP = 0.05


@dataclass(frozen=True)
class GridSpec:
    """Voxel grid: ``size`` = (X, Y, Z) voxels of ``voxel`` metres."""

    size: tuple[int, int, int] = (32, 32, 8)
    voxel: float = 0.25

    def __post_init__(self):
        if len(self.size) != 3 or min(self.size) < 1 or self.voxel <= 0:
            raise ValueError(f"occupancy grid needs 3 positive sizes and a positive voxel, got {self.size}, {self.voxel}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Observation shape (Z, X, Y)."""
        X, Y, Z = self.size
        return (Z, X, Y)

    def centres(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Voxel centre coordinates along x (X,), y (Y,) and z (Z,) in the heading frame."""
        X, Y, Z = self.size
        v = self.voxel
        ax = (torch.arange(X, device=device) + 0.5) * v - X * v / 2
        ay = (torch.arange(Y, device=device) + 0.5) * v - Y * v / 2
        az = (torch.arange(Z, device=device) + 0.5) * v
        return ax, ay, az


def _bone_samples(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Parent index, child index and interpolation weight of every sample along every bone."""
    from .skeleton import REST_OFFSETS

    par, chi, w = [], [], []
    for p, c in BONES:
        n = max(2, int(float((REST_OFFSETS[c] ** 2).sum() ** 0.5) / BONE_STEP) + 1)
        for k in range(n + 1):
            par.append(p)
            chi.append(c)
            w.append(k / n)
    return torch.tensor(par, device=device), torch.tensor(chi, device=device), torch.tensor(w, device=device)


_BONES_ON: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _bone_samples_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_bone_samples`` made once per device (read only), not copied there on every call."""
    device = torch.device(device)
    if device not in _BONES_ON:
        _BONES_ON[device] = _bone_samples(device)
    return _BONES_ON[device]


class OccupancyGrid:
    """Computes occupancy for B worlds from geom boxes/balls and the two skeletons."""

    def __init__(self, spec: GridSpec = GridSpec(), device: torch.device | str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.ax, self.ay, self.az = spec.centres(self.device)
        gx, gy = torch.meshgrid(self.ax, self.ay, indexing="ij")
        self.cell_xy = torch.stack((gx.reshape(-1), gy.reshape(-1)), -1)  # (X*Y, 2)
        self.bone_par, self.bone_chi, self.bone_w = _bone_samples(self.device)

    def __call__(
        self,
        agent_pos: torch.Tensor,  # (B, 3)
        agent_yaw: torch.Tensor,  # (B,)
        box_pos: torch.Tensor,  # (B, G, 3) centres of boxes and balls, world
        box_mat: torch.Tensor,  # (B, G, 3, 3) orientations (columns = local axes in world)
        box_half: torch.Tensor,  # (B, G, 3) half sizes; for a ball (r, r, r)
        box_is_ball: torch.Tensor,  # (G,) bool
        box_class: torch.Tensor,  # (G,) long class per geom
        agent_joints: torch.Tensor,  # (B, 22, 3) world
        partner_joints: torch.Tensor,  # (B, 22, 3)
    ) -> torch.Tensor:
        X, Y, Z = self.spec.size
        v = self.spec.voxel
        B = agent_pos.shape[0]
        c, s = torch.cos(agent_yaw)[:, None], torch.sin(agent_yaw)[:, None]
        # World xy of every cell centre (B, X*Y, 2).
        wx = agent_pos[:, None, 0] + c * self.cell_xy[None, :, 0] - s * self.cell_xy[None, :, 1]
        wy = agent_pos[:, None, 1] + s * self.cell_xy[None, :, 0] + c * self.cell_xy[None, :, 1]
        # Geom frames reduced to yaw: footprint half sizes along the geom's own horizontal axes.
        gyaw = torch.atan2(box_mat[..., 1, 0], box_mat[..., 0, 0])  # (B, G)
        gc, gs = torch.cos(gyaw)[..., None], torch.sin(gyaw)[..., None]
        dx = wx[:, None, :] - box_pos[..., 0:1]  # (B, G, XY)
        dy = wy[:, None, :] - box_pos[..., 1:2]
        lx = gc * dx + gs * dy
        ly = -gs * dx + gc * dy
        half = v / 2
        zext = (box_mat[..., 2, :].abs() * box_half).sum(-1)  # (B, G) vertical half extent
        ball = box_is_ball[None, :, None]
        r = box_half[..., 0:1]
        in_xy = torch.where(
            ball,
            lx * lx + ly * ly <= (r + half) ** 2,
            (lx.abs() <= box_half[..., 0:1] + half) & (ly.abs() <= box_half[..., 1:2] + half),
        )  # (B, G, XY)
        dz = (self.az[None, None, :] - box_pos[..., 2:3]).abs()
        in_z = dz <= (zext[..., None] + half)  # (B, G, Z)
        # Each voxel takes the highest class (static, movable) among the geoms in it. Classes are
        # multiplied in rather than selected with a mask, which would need a host round trip.
        cls = torch.where((box_class == STATIC) | (box_class == MOVABLE), box_class, FREE).to(torch.uint8)
        if box_pos.shape[1]:
            occ = (in_z[:, :, :, None] & in_xy[:, :, None, :]).to(torch.uint8)  # (B, G, Z, XY)
            grid = occ.mul_(cls[None, :, None, None]).amax(dim=1)
        else:
            grid = torch.zeros(B, Z, X * Y, dtype=torch.uint8, device=agent_pos.device)
        grid = grid.view(B, Z, X, Y)
        mark_skeletons(grid, self.spec, agent_pos, agent_yaw, agent_joints, partner_joints, (self.bone_par, self.bone_chi, self.bone_w))
        return grid


def mark_skeletons(
    grid: torch.Tensor,
    spec: GridSpec,
    agent_pos: torch.Tensor,
    agent_yaw: torch.Tensor,
    agent_joints: torch.Tensor,
    partner_joints: torch.Tensor,
    bones=None,
) -> torch.Tensor:
    """Mark both skeletons (world joints (B, 22, 3)) in a (B, Z, X, Y) uint8 grid in place, in the
    heading frame of the agent at ``agent_pos`` (B, 3) / ``agent_yaw`` (B,): the voxels holding
    a sample of a bone get the partner's class, then the agent's. Returns the grid."""
    X, Y, Z = spec.size
    v = spec.voxel
    B = grid.shape[0]
    par, chi, w = _bone_samples_on(grid.device) if bones is None else bones
    c, s = torch.cos(agent_yaw)[:, None], torch.sin(agent_yaw)[:, None]
    flat = grid.view(-1)
    for cls, joints in ((PARTNER, partner_joints), (AGENT, agent_joints)):
        pts = joints[:, par] * (1 - w)[None, :, None] + joints[:, chi] * w[None, :, None]
        rel = pts - agent_pos[:, None, :]
        hx = c * rel[..., 0] + s * rel[..., 1]
        hy = -s * rel[..., 0] + c * rel[..., 1]
        ix = torch.floor((hx + X * v / 2) / v).long()
        iy = torch.floor((hy + Y * v / 2) / v).long()
        iz = torch.floor(pts[..., 2] / v).long()
        ok = (ix >= 0) & (ix < X) & (iy >= 0) & (iy < Y) & (iz >= 0) & (iz < Z)
        b = torch.arange(B, device=grid.device)[:, None].expand_as(ix)
        lin = (b * Z + iz) * (X * Y) + ix * Y + iy
        # samples outside the grid write to one spare slot past its end (a boolean mask would
        # need its count on the host)
        padded = torch.cat((flat, flat.new_zeros(1)))
        padded[torch.where(ok, lin, flat.numel())] = cls
        flat.copy_(padded[:-1])
    return grid
