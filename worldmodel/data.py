"""From dataset windows (env dtypes, a time axis) to the model's normalised tensors, and back.

A *window* is a dict of (B, K+1, ...) tensors: K context steps and the step to predict, with the
observation keys of the env (``ego_rgb`` uint8, ``ego_depth``, ``motion``, ``partner_motion``,
``occupancy`` uint8), ``props`` (B, K+1, 4, 3) (or ``qpos``, from which props are read), and
``actions`` (B, K+1, 6) (action t is taken after observation t), ``rewards``/``terminations``
(B, K+1) aligned with the actions, and ``instruction``.

What the model denoises is always the *change* from the last context step, in a normalised space:

- motion (agent and partner): root displacement in the last step's heading frame, the root
  rotation relative to the last step, and per-joint differences (positions, local rotations with
  the hemisphere aligned, velocities); normalised per dimension with dataset statistics.
- props: displacement of each prop, in the agent's last heading frame.
- ego frames (RGB, and depth when modelled) at the model resolution: next minus last (for
  ``ego_warp`` models: minus the last frame reprojected to the next head pose, when that pose is
  given), normalised per channel. Decoding adds the upsampled change to the last frame at the data resolution, so
  detail the low-resolution model cannot represent is carried over rather than blurred away.
- occupancy: one-hot classes scaled to [-1, 1], height x class as channels (a BEV image); the
  change from the last step; decoding takes the argmax over classes of last + change.

Context steps are given in the frame of the last step too (root pose relative to the last step,
the partner and props relative to the agent), so nothing depends on where the room is.
The statistics live in ``Normalizer``, a module whose buffers are saved with the checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dreamgym.envs.motion import JOINT_POS, JOINT_ROT, JOINT_VEL, MOTION_DIM, ROOT_POS, ROOT_QUAT, quat_conj, quat_mul, yaw_of_quat
from dreamgym.envs.skeleton import NUM_JOINTS
from dreamgym.envs.spaces import MAX_DEPTH
from dreamgym.rollouts.episodes import props_from_qpos

N_PROPS = 4
N_OCC_CLASSES = 5
ROOT_FEATS = 7  # root token: position (3) + quaternion (4)
JOINT_FEATS = 10  # joint token: position (3) + local quaternion (4) + velocity (3)

# The modalities the model denoises (each with its own sigma). "ego" is the ego frame: RGB, plus
# depth when the config models it.
MODALITIES = ("ego", "motion", "partner_motion", "props", "occupancy")
STATE_MODALITIES = ("motion", "partner_motion", "props")
# Observation keys a modality reads and produces.
MODALITY_KEYS = {
    "ego": ("ego_rgb", "ego_depth"),
    "motion": ("motion",),
    "partner_motion": ("partner_motion",),
    "props": ("props",),
    "occupancy": ("occupancy",),
}


def modality_of_key(key: str) -> str:
    for m, keys in MODALITY_KEYS.items():
        if key in keys:
            return m
    raise ValueError(f"unknown modality {key!r}; choose from {sorted(k for ks in MODALITY_KEYS.values() for k in ks)}")


# ----------------------------------------------------------------------------- geometry helpers
def _rot_z(v: torch.Tensor, yaw: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Rotate (B, ..., 3) vectors about z by -yaw (world -> heading) or +yaw (inverse)."""
    c = torch.cos(yaw).view(-1, *([1] * (v.dim() - 2)))
    s = torch.sin(yaw).view(-1, *([1] * (v.dim() - 2)))
    if inverse:
        s = -s
    x, y, z = v.unbind(-1)
    return torch.stack((c * x + s * y, -s * x + c * y, z), dim=-1)


def to_heading(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """World vectors (B, ..., 3) in the heading frame of ``yaw`` (B,)."""
    return _rot_z(v, yaw, inverse=False)


def from_heading(v: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """Heading-frame vectors (B, ..., 3) back to world."""
    return _rot_z(v, yaw, inverse=True)


def _align(q: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Flip quaternions (..., 4) into the hemisphere of ``ref`` (q and -q are the same rotation)."""
    sign = torch.where((q * ref).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    return q * sign


@functools.cache
def _identity_quat(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The identity rotation (4,) on ``device``, made once (never written to): a tensor made from
    host data every call would be a host-to-device copy per step on a GPU."""
    return torch.tensor([1.0, 0, 0, 0], device=device, dtype=dtype)


def _unit(q: torch.Tensor) -> torch.Tensor:
    return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)


# ----------------------------------------------------------------------------- motion
def motion_context(m: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Motion (B, K, 227) expressed relative to the root of ``last`` (B, 227) (same body)."""
    yaw = yaw_of_quat(last[:, ROOT_QUAT])
    out = m.clone()
    out[..., ROOT_POS] = to_heading(m[..., ROOT_POS] - last[:, None, ROOT_POS], yaw)
    q_last = last[:, None, ROOT_QUAT].expand_as(m[..., ROOT_QUAT])
    out[..., ROOT_QUAT] = _align(quat_mul(quat_conj(q_last), m[..., ROOT_QUAT]), _identity_quat(m.device, m.dtype))
    return out


def partner_context(p: torch.Tensor, agent_last: torch.Tensor) -> torch.Tensor:
    """Partner motion (B, K, 227) with its root expressed relative to the agent's last root."""
    return motion_context(p, agent_last)


def motion_delta(last: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """The change (B, 227) from ``last`` to ``nxt`` (B, 227): see the module docstring."""
    yaw = yaw_of_quat(last[:, ROOT_QUAT])
    d = nxt - last
    d[:, ROOT_POS] = to_heading(nxt[:, ROOT_POS] - last[:, ROOT_POS], yaw)
    d[:, ROOT_QUAT] = _align(quat_mul(quat_conj(last[:, ROOT_QUAT]), nxt[:, ROOT_QUAT]), _identity_quat(last.device, last.dtype))
    qn = nxt[:, JOINT_ROT].view(-1, NUM_JOINTS, 4)
    ql = last[:, JOINT_ROT].view(-1, NUM_JOINTS, 4)
    d[:, JOINT_ROT] = (_align(qn, ql) - ql).reshape(-1, NUM_JOINTS * 4)
    return d


def apply_motion_delta(last: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Inverse of ``motion_delta``: the next motion (B, 227); quaternions renormalised."""
    yaw = yaw_of_quat(last[:, ROOT_QUAT])
    nxt = last + d
    nxt[:, ROOT_POS] = last[:, ROOT_POS] + from_heading(d[:, ROOT_POS], yaw)
    nxt[:, ROOT_QUAT] = _unit(quat_mul(last[:, ROOT_QUAT], _unit(d[:, ROOT_QUAT])))
    ql = last[:, JOINT_ROT].view(-1, NUM_JOINTS, 4)
    nxt[:, JOINT_ROT] = _unit(ql + d[:, JOINT_ROT].view(-1, NUM_JOINTS, 4)).reshape(-1, NUM_JOINTS * 4)
    return nxt


def unobservable_root_index() -> list[int]:
    """Indices of the motion vector (and its change) the model's context cannot see: the root's
    horizontal position and its orientation (the context is relative to the last root)."""
    return [ROOT_POS.start, ROOT_POS.start + 1, *range(ROOT_QUAT.start, ROOT_QUAT.stop)]


def motion_tokens(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split motion-shaped vectors (..., 227) into a root token (..., 7) and joint tokens (..., 22, 10)."""
    root = torch.cat([v[..., ROOT_POS], v[..., ROOT_QUAT]], -1)
    lead = v.shape[:-1]
    joints = torch.cat(
        [
            v[..., JOINT_POS].reshape(*lead, NUM_JOINTS, 3),
            v[..., JOINT_ROT].reshape(*lead, NUM_JOINTS, 4),
            v[..., JOINT_VEL].reshape(*lead, NUM_JOINTS, 3),
        ],
        -1,
    )
    return root, joints


def motion_from_tokens(root: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """Inverse of ``motion_tokens``: (..., 7), (..., 22, 10) -> (..., 227)."""
    lead = root.shape[:-1]
    return torch.cat(
        [
            root,
            joints[..., 0:3].reshape(*lead, NUM_JOINTS * 3),
            joints[..., 3:7].reshape(*lead, NUM_JOINTS * 4),
            joints[..., 7:10].reshape(*lead, NUM_JOINTS * 3),
        ],
        -1,
    )


# ----------------------------------------------------------------------------- props
def props_context(props: torch.Tensor, agent_last: torch.Tensor) -> torch.Tensor:
    """Props (B, K, 4, 3) relative to the agent's last root, in its heading frame."""
    yaw = yaw_of_quat(agent_last[:, ROOT_QUAT])
    return to_heading(props - agent_last[:, None, None, ROOT_POS], yaw)


def joints_world(motion: torch.Tensor) -> torch.Tensor:
    """World positions (B, 22, 3) of a body's joints from motion vectors (B, 227) (the joints are
    stored relative to the root, in its heading frame)."""
    yaw = yaw_of_quat(motion[:, ROOT_QUAT])
    return from_heading(motion[:, JOINT_POS].reshape(-1, NUM_JOINTS, 3), yaw) + motion[:, None, ROOT_POS]


PROP_STEP_SCALE = 500.0  # prop displacements in the props network's units: 2 mm
PROPS_FEATS = 3 + 3 + 1 + 2 * NUM_JOINTS * 3 + 3 + N_PROPS


def props_features(
    agent_last: torch.Tensor, agent_next: torch.Tensor, partner_next: torch.Tensor, props_prev: torch.Tensor, props_last: torch.Tensor
) -> torch.Tensor:
    """Per-prop inputs (B, 4, PROPS_FEATS) of the props dynamics network, in the agent's last
    heading frame: the prop relative to the agent's root, its last displacement (2 mm units), its
    height (cm from 19 cm), both bodies' next joints relative to it, the agent's root move (2 mm
    units; the frame's own motion) and which prop it is."""
    B = props_last.shape[0]
    yaw = yaw_of_quat(agent_last[:, ROOT_QUAT])
    a1, q1 = joints_world(agent_next), joints_world(partner_next)  # (B, 22, 3)
    rel_a = to_heading(a1[:, None] - props_last[:, :, None], yaw).flatten(2)  # (B, 4, 66)
    rel_q = to_heading(q1[:, None] - props_last[:, :, None], yaw).flatten(2)
    return torch.cat(
        [
            to_heading(props_last - agent_last[:, None, ROOT_POS], yaw),
            to_heading(props_last - props_prev, yaw) * PROP_STEP_SCALE,
            (props_last[..., 2:] - 0.19) * 100.0,
            rel_a,
            rel_q,
            to_heading(agent_next[:, ROOT_POS] - agent_last[:, ROOT_POS], yaw)[:, None].expand(B, N_PROPS, 3) * PROP_STEP_SCALE,
            torch.eye(N_PROPS, device=props_last.device, dtype=props_last.dtype).expand(B, N_PROPS, N_PROPS),
        ],
        -1,
    )


def props_delta(last: torch.Tensor, nxt: torch.Tensor, agent_last: torch.Tensor) -> torch.Tensor:
    """Prop displacements (B, 4, 3) in the agent's last heading frame."""
    return to_heading(nxt - last, yaw_of_quat(agent_last[:, ROOT_QUAT]))


def apply_props_delta(last: torch.Tensor, d: torch.Tensor, agent_last: torch.Tensor) -> torch.Tensor:
    return last + from_heading(d, yaw_of_quat(agent_last[:, ROOT_QUAT]))


# ----------------------------------------------------------------------------- frames
def frames_to_model(rgb: torch.Tensor, depth: torch.Tensor | None, resolution: int) -> torch.Tensor:
    """Ego frames (..., 3, H, W) uint8 (+ depth (..., 1, H, W) metres) -> (..., C, r, r) in [-1, 1]."""
    x = rgb.float() / 127.5 - 1.0
    if depth is not None:
        x = torch.cat([x, depth.float().clamp(0, MAX_DEPTH) / MAX_DEPTH * 2.0 - 1.0], dim=-3)
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    return x.reshape(*lead, *x.shape[-3:])


def frames_from_model(
    last_rgb: torch.Tensor, last_depth: torch.Tensor | None, change: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Add a model-resolution change (B, C, r, r) (in [-1, 1] units) to the last frames at data resolution."""
    H, W = last_rgb.shape[-2:]
    if change.shape[-2:] != (H, W):
        change = F.interpolate(change, size=(H, W), mode="bilinear", align_corners=False)
    rgb = (last_rgb.float() + change[:, :3] * 127.5).round().clamp(0, 255).to(torch.uint8)
    depth = None
    if last_depth is not None and change.shape[1] > 3:
        depth = (last_depth.float() + change[:, 3:4] * (MAX_DEPTH / 2.0)).clamp(0.0, MAX_DEPTH)
    return rgb, depth


# ----------------------------------------------------------------------------- occupancy
def occupancy_to_model(occ: torch.Tensor) -> torch.Tensor:
    """Occupancy (..., Z, X, Y) uint8 classes -> (..., Z*5, X, Y) one-hot in [-1, 1] (a class
    outside 0..4 encodes as all -1)."""
    *lead, X, Y = occ.shape
    # +1 where |class - c| is 0, else -1, written straight into the (..., Z, 5, X, Y) layout
    oh = occ.unsqueeze(-3).expand(*lead, N_OCC_CLASSES, X, Y).to(torch.float32, memory_format=torch.contiguous_format)
    oh = oh.sub_(_occupancy_classes(occ.device)).abs_().clamp_(max=1.0).mul_(-2.0).add_(1.0)
    return oh.reshape(*lead[:-1], lead[-1] * N_OCC_CLASSES, X, Y)


def occupancy_from_model(x: torch.Tensor) -> torch.Tensor:
    """(B, Z*5, X, Y) scores -> (B, Z, X, Y) uint8 classes (argmax per voxel: the first of equal
    scores, a NaN above everything, as ``torch.argmax``)."""
    B, C, X, Y = x.shape
    scores = x.view(B, C // N_OCC_CLASSES, N_OCC_CLASSES, X, Y)
    # the five classes compared slice by slice: an argmax over the strided class axis is many
    # times slower on the CPU
    best, arg = scores[:, :, 0], torch.zeros((B, C // N_OCC_CLASSES, X, Y), dtype=torch.uint8, device=x.device)
    for c in range(1, N_OCC_CLASSES):
        v = scores[:, :, c]
        take = ~torch.isnan(best) & (torch.isnan(v) | (v > best))
        best, arg = torch.where(take, v, best), torch.where(take, c, arg)
    return arg


@functools.cache
def _occupancy_classes(device: torch.device) -> torch.Tensor:
    """The class indices (5, 1, 1) float32 on ``device`` (made once, never written to)."""
    return torch.arange(N_OCC_CLASSES, device=device, dtype=torch.float32).view(N_OCC_CLASSES, 1, 1)


def warp_occupancy(
    occ_last: torch.Tensor, agent_last: torch.Tensor, agent_next: torch.Tensor, partner_next: torch.Tensor, voxel: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last occupancy grid (B, Z, X, Y) uint8 carried into the agent's next heading frame.

    The grid is egocentric (centred on the pelvis, x ahead): its scenery (walls, furniture,
    props) is resampled at the next frame's voxel centres (nearest voxel of the last frame), and
    both bodies are drawn afresh from their next motions (B, 227), as the simulator draws them.
    Returns the grid and ``valid`` (B, 1, X, Y) bool: the columns the last grid covered (the
    others are new ground, left free).
    """
    from dreamgym.envs.occupancy import PARTNER, GridSpec, mark_skeletons

    B, Z, X, Y = occ_last.shape
    dev = occ_last.device
    ax = (torch.arange(X, device=dev) + 0.5) * voxel - X * voxel / 2
    ay = (torch.arange(Y, device=dev) + 0.5) * voxel - Y * voxel / 2
    gx, gy = torch.meshgrid(ax, ay, indexing="ij")
    y1, y0 = yaw_of_quat(agent_next[:, ROOT_QUAT]), yaw_of_quat(agent_last[:, ROOT_QUAT])
    c1, s1 = torch.cos(y1)[:, None, None], torch.sin(y1)[:, None, None]
    c0, s0 = torch.cos(y0)[:, None, None], torch.sin(y0)[:, None, None]
    p1, p0 = agent_next[:, ROOT_POS], agent_last[:, ROOT_POS]
    rx = p1[:, 0, None, None] + c1 * gx - s1 * gy - p0[:, 0, None, None]
    ry = p1[:, 1, None, None] + s1 * gx + c1 * gy - p0[:, 1, None, None]
    hx, hy = c0 * rx + s0 * ry, -s0 * rx + c0 * ry
    ix = torch.floor((hx + X * voxel / 2) / voxel).long()
    iy = torch.floor((hy + Y * voxel / 2) / voxel).long()
    valid = (ix >= 0) & (ix < X) & (iy >= 0) & (iy < Y)  # (B, X, Y)
    lin = (ix.clamp(0, X - 1) * Y + iy.clamp(0, Y - 1)).view(B, 1, X * Y).expand(B, Z, X * Y)
    scene = torch.where(occ_last >= PARTNER, torch.zeros_like(occ_last), occ_last).view(B, Z, X * Y)
    grid = torch.where(valid.view(B, 1, X * Y), scene.gather(2, lin), torch.zeros_like(scene)).view(B, Z, X, Y).contiguous()
    mark_skeletons(grid, GridSpec((X, Y, Z), voxel), p1, y1, joints_world(agent_next), joints_world(partner_next))
    return grid, valid[:, None]


# ----------------------------------------------------------------------------- statistics
class Normalizer(nn.Module):
    """Dataset statistics for the model's inputs and targets (buffers: saved with the weights).

    ``fit`` computes them from training windows; before that they are the identity.
    """

    def __init__(self, frame_channels: int):
        super().__init__()
        z, o = torch.zeros, torch.ones
        self.register_buffer("motion_ctx_mean", z(MOTION_DIM))
        self.register_buffer("motion_ctx_std", o(MOTION_DIM))
        self.register_buffer("motion_delta_mean", z(MOTION_DIM))
        self.register_buffer("motion_delta_std", o(MOTION_DIM))
        self.register_buffer("partner_ctx_mean", z(MOTION_DIM))
        self.register_buffer("partner_ctx_std", o(MOTION_DIM))
        self.register_buffer("partner_delta_mean", z(MOTION_DIM))
        self.register_buffer("partner_delta_std", o(MOTION_DIM))
        self.register_buffer("props_ctx_mean", z(3))
        self.register_buffer("props_ctx_std", o(3))
        self.register_buffer("props_delta_std", o(3))
        self.register_buffer("frame_delta_std", o(frame_channels))
        self.register_buffer("occupancy_delta_std", o(1))
        self.register_buffer("reward_mean", z(1))
        self.register_buffer("reward_std", o(1))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(
        self, windows: Iterable[Mapping[str, torch.Tensor]], resolution: int, with_depth: bool, floor: float = 1e-3, warp: bool = False
    ) -> None:
        """Statistics from (B, K+1, ...) windows (an iterable of batches).

        ``warp``: the frame changes are also measured from the last frame warped to the next head
        pose (``ego_warp`` models use both bases); the frame scale is then the RMS over both."""
        acc: dict[str, list[torch.Tensor]] = {}
        for w in windows:
            w = with_props(w)
            K = w["motion"].shape[1] - 1
            m, p = w["motion"].float(), w["partner_motion"].float()
            last = m[:, K - 1]
            parts = {
                "motion_ctx": motion_context(m[:, :K], last).reshape(-1, MOTION_DIM),
                "motion_delta": motion_delta(last, m[:, K]),
                "partner_ctx": partner_context(p[:, :K], last).reshape(-1, MOTION_DIM),
                "partner_delta": motion_delta(p[:, K - 1], p[:, K]),
                "props_ctx": props_context(w["props"][:, :K].float(), last).reshape(-1, 3),
                "props_delta": props_delta(w["props"][:, K - 1].float(), w["props"][:, K].float(), last).reshape(-1, 3),
                "reward": w["rewards"][:, K - 1].float().reshape(-1, 1),
            }
            if "ego_rgb" in w:
                fr = frames_to_model(w["ego_rgb"][:, K - 1 :], w["ego_depth"][:, K - 1 :] if with_depth else None, resolution)
                parts["frame_delta"] = (fr[:, 1] - fr[:, 0]).transpose(0, 1).reshape(fr.shape[2], -1).T
                if warp and with_depth:
                    from .warp import warp_frame

                    wr, wd, _ = warp_frame(w["ego_rgb"][:, K - 1], w["ego_depth"][:, K - 1], last, m[:, K])
                    base = frames_to_model(wr, wd, resolution)
                    wdelta = (fr[:, 1] - base).transpose(0, 1).reshape(fr.shape[2], -1).T
                    parts["frame_delta"] = torch.cat([parts["frame_delta"], wdelta])
            if "occupancy" in w:
                oc = occupancy_to_model(w["occupancy"][:, K - 1 :])
                parts["occupancy_delta"] = ((oc[:, 1] - oc[:, 0]) / 2.0).reshape(-1, 1)
            for k, v in parts.items():
                acc.setdefault(k, []).append(v.double())
        if not acc:
            raise ValueError("Normalizer.fit got no windows")
        cat = {k: torch.cat(v) for k, v in acc.items()}

        def put(name: str, mean: bool = True) -> None:
            x = cat[name]
            if mean:
                getattr(self, f"{name}_mean").copy_(x.mean(0).float())
                getattr(self, f"{name}_std").copy_(x.std(0).clamp_min(floor).float())
            else:  # zero-mean changes: scale only (root-mean-square), so "no change" stays 0
                getattr(self, f"{name}_std").copy_(x.pow(2).mean(0).sqrt().clamp_min(floor).float())

        for name in ("motion_ctx", "partner_ctx", "props_ctx", "reward"):
            put(name)
        for name in ("motion_delta", "partner_delta"):
            put(name)
        put("props_delta", mean=False)
        if "frame_delta" in cat:
            put("frame_delta", mean=False)
        if "occupancy_delta" in cat:
            put("occupancy_delta", mean=False)
        self.fitted.fill_(True)


def with_props(w: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The window with ``props`` (read from ``qpos`` when absent)."""
    w = dict(w)
    if "props" not in w:
        if "qpos" not in w:
            raise KeyError("window has neither 'props' nor 'qpos' (prop positions are read from the physics state)")
        w["props"] = props_from_qpos(w["qpos"])
    return w


def collate(items: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-window dicts (the loader's items) into a batch; non-tensor values are dropped."""
    out = {}
    for k, v in items[0].items():
        if isinstance(v, torch.Tensor):
            out[k] = torch.stack([it[k] for it in items])
        elif isinstance(v, (int, float, bool)):
            out[k] = torch.tensor([it[k] for it in items])
    return out


# ----------------------------------------------------------------------------- in-memory windows
class EpisodeWindows(torch.utils.data.Dataset):
    """Windows of ``length`` consecutive steps from in-memory episodes (the loader's item format).

    ``episodes`` is a list of dicts of (T, ...) tensors with the observation keys, ``props``,
    ``actions`` (and optionally ``partner_actions``), ``rewards``, ``terminations`` and ``instruction`` (T,)
    (``keys``: keep only these). Windows never cross an episode boundary. The DIAMOND-style loop
    trains on such episodes; datasets on disk come through ``dreamgym.rollouts.loader.WindowDataset``.
    """

    def __init__(self, episodes: list[dict[str, torch.Tensor]], length: int, keys: Sequence[str] | None = None):
        self.episodes = episodes if keys is None else [{k: ep[k] for k in keys if k in ep} for ep in episodes]
        self.length = int(length)
        self.index = [(e, t) for e, ep in enumerate(episodes) for t in range(ep["actions"].shape[0] - self.length + 1)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, t = self.index[i]
        return {k: v[t : t + self.length] for k, v in self.episodes[e].items()}

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """``collate([self[i] for i in indices])`` in one gather per key (for large batches)."""
        if not hasattr(self, "_flat"):
            keys = list(self.episodes[0]) if self.episodes else []
            self._flat = {k: torch.cat([ep[k] for ep in self.episodes]) for k in keys}
            first = torch.tensor([0] + [int(ep["actions"].shape[0]) for ep in self.episodes]).cumsum(0)
            self._row0 = torch.tensor([int(first[e]) + t for e, t in self.index], dtype=torch.long)
        rows = self._row0[torch.as_tensor(list(indices), dtype=torch.long)][:, None] + torch.arange(self.length)
        return {k: v[rows] for k, v in self._flat.items()}


def collect_episodes(
    num_envs: int = 4,
    steps: int = 64,
    task: str = "reach",
    resolution: int = 64,
    seed: int = 0,
    expert: float = 0.5,
    noisy: float = 0.3,
) -> list[dict[str, torch.Tensor]]:
    """Run ``EgoRoomVecEnv`` for ``steps`` steps with a behaviour mix and return its episodes.

    Each world's action each step comes from the expert (probability ``expert``), the expert plus
    Gaussian noise (``noisy``) or uniform random (the rest), so that actions vary independently of
    the state. An episode's last row holds its final observation (from ``final_obs``), with a
    zero action and reward after it.
    """
    from dreamgym.envs.vec_env import EgoRoomVecEnv

    env = EgoRoomVecEnv(num_envs=num_envs, task=task, resolution=resolution, seed=seed, return_tensors=True)
    g = torch.Generator().manual_seed(seed)
    obs, _ = env.reset_tensors(seed=seed)
    keys = ("ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy")
    current: list[list[dict[str, torch.Tensor]]] = [[] for _ in range(num_envs)]
    done_eps: list[dict[str, torch.Tensor]] = []
    props = props_from_qpos(env.sim_state()["qpos"])
    for _ in range(steps):
        expert_a = env.expert_actions().cpu()
        u = torch.rand(num_envs, generator=g)
        noisy_a = (expert_a + 0.5 * torch.randn(expert_a.shape, generator=g)).clamp(-1, 1)
        random_a = torch.rand(expert_a.shape, generator=g) * 2 - 1
        a = torch.where((u < expert)[:, None], expert_a, torch.where((u < expert + noisy)[:, None], noisy_a, random_a))
        nobs, rew, term, trunc, info = env.step_tensors(a)
        pact = env.core.partner_action.cpu()
        for i in range(num_envs):
            current[i].append(
                {
                    **{k: obs[k][i].cpu() for k in keys},
                    "props": props[i],
                    "actions": a[i],
                    "partner_actions": pact[i],
                    "rewards": rew[i].cpu().float(),
                    "terminations": term[i].cpu(),
                    "instruction": obs["instruction"][i].cpu(),
                }
            )
        new_props = props_from_qpos(env.sim_state()["qpos"])
        done = (term | trunc).cpu()
        if bool(done.any()):
            fin_props = props_from_qpos(info["final_state"]["qpos"])
            for i in done.nonzero()[:, 0].tolist():
                last = {
                    **{k: info["final_obs"][k][i].cpu() for k in keys},
                    "props": fin_props[i],
                    "actions": torch.zeros(6),
                    "partner_actions": torch.zeros(6),
                    "rewards": torch.zeros(()),
                    "terminations": torch.zeros((), dtype=torch.bool),
                    "instruction": obs["instruction"][i].cpu(),
                }
                done_eps.append(_stack(current[i] + [last]))
                current[i] = []
        obs, props = nobs, new_props
    for i in range(num_envs):
        if current[i]:
            done_eps.append(_stack(current[i]))
    return done_eps


def _stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
