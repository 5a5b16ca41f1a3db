"""What a policy can see in an ego frame: object masks from geometry, and a probe that learns them.

**Objects.** ``OBJECT_NAMES``: the four props (slots 0..3 of the scene, shapes box, ball, box,
ball) and the partner, index 0..4 in every ``(B, 5)`` array here. A label map ``(B, H, W)``
holds 0 for background and ``1 + object index`` (1..4 props, 5 partner) for an object's pixels.
An object is *visible* when it has at least ``MIN_PIXELS`` pixels; its image *position* is the
centroid of its pixels, ``(x, y)`` in pixels from the image's top-left corner (a pixel's centre
is at ``col + 0.5, row + 0.5``), NaN when not visible.

**Ground truth from geometry** (``object_truth``). Every pixel of a real frame is lifted to 3-D
with its planar depth along its ray of the agent's head camera (``warp.ego_camera_pose``,
``warp._rays``); the pixel belongs to the object whose surface that point lies on, within
``TOL_M + TOL_FRAC * depth`` metres. This is a depth test read the other way round: an object
point that projects to a pixel belongs to it only when the real depth there is that point's, so
occluded objects get no pixels and every visible surface pixel is found (no sampling holes).
Shapes: balls are spheres of ``PROP_BALL_RADIUS``; a box of half size ``PROP_BOX_HALF`` is
bounded by the upright cylinder around it (``props`` carry no orientation, and a box pushed
across the floor turns about z only); the partner's bones are capsules around the segments of its
skeleton (``partner_motion``) with the radii of ``envs/scene.py``'s bodies, and its head a
sphere. Points on the floor (``z < FLOOR_Z``: the floor and the goal mat) and rays that hit
nothing belong to no object.

**The probe** (``FrameProbe``) sees RGB only. A prop's slot is not visible in a frame (each room
draws the props' colours at random), so the probe labels *colours*: classes 0 background,
``1 + c`` a prop of colour ``COLOUR_NAMES[c]``, ``PARTNER_CLASS`` the partner. With a room's prop
colours (``room_prop_colours``) its classes map back to the object slots (``slot_labels``).
Its pooled penultimate features are the feature space of the frame Fréchet distance
(``video_metrics.frechet_distance``). Weights are safetensors beside a JSON config; nothing is
unpickled. Training: ``probe_train``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dreamgym.envs.motion import MOTION_DIM
from dreamgym.envs.scene import COLOUR_NAMES, EGO_CAM_FOVY, N_PROPS, PROP_BALL_RADIUS, PROP_BOX_HALF, PROP_SHAPES, generate_room
from dreamgym.envs.skeleton import BONES
from dreamgym.envs.spaces import MAX_DEPTH

from .checkpoint import load_safetensors
from .data import joints_world
from .warp import HEAD, _rays, ego_camera_pose

OBJECT_NAMES: tuple[str, ...] = ("prop0", "prop1", "prop2", "prop3", "partner")
NUM_OBJECTS = len(OBJECT_NAMES)
PARTNER = NUM_OBJECTS - 1  # object index of the partner (label PARTNER + 1)
MIN_PIXELS = 2  # an object with fewer pixels than this is not visible
TOL_M = 0.03  # metres: how far off an object's surface a lifted pixel may lie ...
TOL_FRAC = 0.01  # ... plus this fraction of its depth
FLOOR_Z = 0.012  # metres: lifted pixels below this are floor or goal mat (the mat is 8 mm high)
# Radii (m) of the capsules of envs/scene.py's humanoid, by the bone's parent joint; others 0.04.
# The collars' bones are not drawn there (the spine's capsules cover the chest), nor here.
BONE_RADIUS: dict[int, float] = {0: 0.09, 1: 0.07, 2: 0.07, 3: 0.1, 4: 0.055, 5: 0.055, 6: 0.11, 9: 0.11, 12: 0.05, 16: 0.045, 17: 0.045}
BONE_RADIUS_OTHER = 0.04
HEAD_SPHERE = (0.09, 0.105)  # the head's sphere: height above the head joint, radius (m)
ENDS_RADIUS = 0.11  # hands and feet: their spheres and boxes lie within this of the wrists and ankles

NUM_CLASSES = 2 + len(COLOUR_NAMES)  # probe classes: background, one per prop colour, partner
PARTNER_CLASS = NUM_CLASSES - 1
PROBE_FORMAT = 1
WEIGHTS_NAME = "probe.safetensors"
CONFIG_NAME = "probe.json"
DEFAULT_DIR = Path(__file__).parent / "probe"


# ------------------------------------------------------------------------------ geometry truth
def _check_batch(depth: torch.Tensor, motion: torch.Tensor, partner_motion: torch.Tensor, props: torch.Tensor) -> torch.Tensor:
    if depth.dim() == 4 and depth.shape[1] == 1:
        depth = depth[:, 0]
    if depth.dim() != 3:
        raise ValueError(f"object_truth: depth must be (B, 1, H, W) or (B, H, W), got {tuple(depth.shape)}")
    B = depth.shape[0]
    for name, t, shape in (
        ("motion", motion, (B, MOTION_DIM)),
        ("partner_motion", partner_motion, (B, MOTION_DIM)),
        ("props", props, (B, N_PROPS, 3)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"object_truth: {name} has shape {tuple(t.shape)}, expected {shape}")
    return depth


def lift_pixels(depth: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """World points (B, H*W, 3) that the pixels of planar depth maps (B, H, W) see from the head
    camera of the agent's motion vectors (B, 227)."""
    B, H, W = depth.shape
    pos, rot = ego_camera_pose(motion)
    cam = _rays(H, W, EGO_CAM_FOVY, depth.device)[None] * depth.reshape(B, -1, 1).float()
    return cam @ rot.transpose(1, 2) + pos[:, None]


def _segment_distance(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distances (B, S, N) of points p (B, N, 3) to segments a -> b (B, S, 3)."""
    ab = b - a
    ap = p[:, None] - a[:, :, None]  # (B, S, N, 3)
    t = ((ap * ab[:, :, None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-9)[..., None]).clamp(0, 1)
    return (ap - t[..., None] * ab[:, :, None]).norm(dim=-1)


_DRAWN_BONES = [(p, c) for p, c in BONES if c not in (13, 14)]  # the collars' bones are not drawn
_BONE_PAR = torch.tensor([p for p, _ in _DRAWN_BONES])
_BONE_CHI = torch.tensor([c for _, c in _DRAWN_BONES])
_BONE_R = torch.tensor([BONE_RADIUS.get(p, BONE_RADIUS_OTHER) for p, _ in _DRAWN_BONES])
_HANDS_FEET = torch.tensor([20, 21, 7, 8])  # wrists and ankles
TRUTH_CHUNK = 256  # frames labelled at once (bounds the memory of the point-to-bone distances)


def _partner_excess(points: torch.Tensor, partner_motion: torch.Tensor) -> torch.Tensor:
    """How far (B, N) each point lies outside the partner's body (m; <= 0 inside)."""
    j = joints_world(partner_motion.float())  # (B, 22, 3)
    dev = points.device
    par, chi, rad = _BONE_PAR.to(dev), _BONE_CHI.to(dev), _BONE_R.to(dev)
    bones = (_segment_distance(points, j[:, par], j[:, chi]) - rad[None, :, None]).amin(1)
    head = j[:, HEAD] + torch.tensor([0.0, 0.0, HEAD_SPHERE[0]], device=dev)
    head_d = (points - head[:, None]).norm(dim=-1) - HEAD_SPHERE[1]
    ends = (points[:, None] - j[:, _HANDS_FEET.to(dev), None]).norm(dim=-1).amin(1) - ENDS_RADIUS
    return torch.minimum(torch.minimum(bones, head_d), ends)


def _prop_excess(points: torch.Tensor, props: torch.Tensor) -> torch.Tensor:
    """How far (B, 4, N) each point lies outside each prop (m; <= 0 inside)."""
    rel = points[:, None] - props[:, :, None].float()  # (B, 4, N, 3)
    ball = rel.norm(dim=-1) - PROP_BALL_RADIUS
    # a box's bounding upright cylinder: its yaw is not known
    box = torch.maximum(rel[..., :2].norm(dim=-1) - PROP_BOX_HALF * math.sqrt(2), rel[..., 2].abs() - PROP_BOX_HALF)
    is_ball = torch.tensor([s == "ball" for s in PROP_SHAPES], device=points.device)[None, :, None]
    return torch.where(is_ball, ball, box)


def objects_from_labels(labels: torch.Tensor, min_pixels: int = MIN_PIXELS) -> dict[str, torch.Tensor]:
    """Per object of a label map (B, H, W) (0 background, 1..5 objects): ``vis`` (B, 5) bool,
    ``pos`` (B, 5, 2) float centroid (x, y) in pixels (NaN unless visible), ``pixels`` (B, 5)."""
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
    B, H, W = labels.shape
    onehot = (labels[:, None] == torch.arange(1, NUM_OBJECTS + 1, device=labels.device)[None, :, None, None]).float()
    n = onehot.sum((2, 3))  # (B, 5)
    ys = torch.arange(H, device=labels.device, dtype=torch.float32) + 0.5
    xs = torch.arange(W, device=labels.device, dtype=torch.float32) + 0.5
    cx = (onehot.sum(2) * xs).sum(-1) / n.clamp_min(1)
    cy = (onehot.sum(3) * ys).sum(-1) / n.clamp_min(1)
    vis = n >= min_pixels
    pos = torch.where(vis[..., None], torch.stack((cx, cy), -1), torch.full((B, NUM_OBJECTS, 2), float("nan"), device=labels.device))
    return {"vis": vis, "pos": pos, "pixels": n.long()}


def _label_pixels(depth: torch.Tensor, motion: torch.Tensor, partner_motion: torch.Tensor, props: torch.Tensor) -> torch.Tensor:
    """Object label maps (B, H, W) long of depth maps (B, H, W): see ``object_truth``."""
    B, H, W = depth.shape
    pts = lift_pixels(depth, motion)
    excess = torch.cat([_prop_excess(pts, props), _partner_excess(pts, partner_motion)[:, None]], 1)  # (B, 5, N)
    d = depth.reshape(B, -1)
    best, which = excess.min(1)
    hit = (best <= TOL_M + TOL_FRAC * d) & (pts[..., 2] >= FLOOR_Z) & (d < MAX_DEPTH - 1e-3)
    return torch.where(hit, which + 1, 0).reshape(B, H, W)


@torch.no_grad()
def object_truth(depth: torch.Tensor, motion: torch.Tensor, partner_motion: torch.Tensor, props: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which objects a real ego frame shows and where, from the simulator's geometry.

    Args:
        depth: (B, 1, H, W) or (B, H, W) the frame's real planar depth (``ego_depth``), metres.
        motion, partner_motion: (B, 227) the agent's and the partner's motion vectors.
        props: (B, 4, 3) the props' centres, world metres (a dataset's ``props`` key).

    Returns ``labels`` (B, H, W) long (0 background, 1..4 props, 5 partner), ``vis`` (B, 5) bool
    and ``pos`` (B, 5, 2) float (x, y) pixels, NaN unless visible (see the module docstring).
    """
    depth = _check_batch(depth, motion, partner_motion, props)
    labels = torch.cat(
        [
            _label_pixels(*(t[i : i + TRUTH_CHUNK] for t in (depth, motion, partner_motion, props)))
            for i in range(0, depth.shape[0], TRUTH_CHUNK)
        ]
        or [torch.zeros(depth.shape, dtype=torch.long, device=depth.device)]
    )
    out = objects_from_labels(labels)
    return {"labels": labels, "vis": out["vis"], "pos": out["pos"]}


# ------------------------------------------------------------------------------ colours <-> slots
@lru_cache(maxsize=65536)
def _room_colours(seed: int) -> tuple[int, ...]:
    return tuple(int(c) for c in generate_room(seed).prop_colour)


def room_prop_colours(room_seeds) -> torch.Tensor:
    """(B, 4) long (CPU): the colour (index into ``COLOUR_NAMES``) of each prop slot in each room."""
    seeds = torch.as_tensor(room_seeds).reshape(-1).tolist()
    return torch.tensor([_room_colours(int(s)) for s in seeds], dtype=torch.long).reshape(-1, N_PROPS)


def _check_colours(prop_colours: torch.Tensor, B: int) -> torch.Tensor:
    if tuple(prop_colours.shape) != (B, N_PROPS):
        raise ValueError(f"prop_colours has shape {tuple(prop_colours.shape)}, expected {(B, N_PROPS)} (room_prop_colours(room_seeds))")
    return prop_colours.long()


def colour_classes(labels: torch.Tensor, prop_colours: torch.Tensor) -> torch.Tensor:
    """Object label maps (B, H, W) -> probe classes (B, H, W): prop slot k becomes its colour's class."""
    cols = _check_colours(prop_colours, labels.shape[0]).to(labels.device)
    table = torch.cat([torch.zeros_like(cols[:, :1]), cols + 1, torch.full_like(cols[:, :1], PARTNER_CLASS)], 1)  # (B, 6)
    return torch.gather(table, 1, labels.reshape(labels.shape[0], -1)).reshape(labels.shape)


def slot_labels(classes: torch.Tensor, prop_colours: torch.Tensor) -> torch.Tensor:
    """Probe classes (B, H, W) -> object label maps: a colour of this room's props becomes that
    prop's label, the partner 5, anything else (a colour the room has no prop of) background."""
    B = classes.shape[0]
    cols = _check_colours(prop_colours, B).to(classes.device)
    table = torch.zeros(B, NUM_CLASSES, dtype=torch.long, device=classes.device)
    table.scatter_(1, cols + 1, torch.arange(1, N_PROPS + 1, device=classes.device).expand(B, -1).contiguous())
    table[:, PARTNER_CLASS] = NUM_OBJECTS
    return torch.gather(table, 1, classes.reshape(B, -1)).reshape(classes.shape)


# ------------------------------------------------------------------------------ the network
@dataclass(frozen=True)
class ProbeConfig:
    """FrameProbe's architecture: a two-level U-Net whose heavy layers run at 1/2 and 1/4 resolution."""

    widths: tuple[int, int, int] = (16, 32, 48)  # channels at full, 1/2 and 1/4 resolution
    groups: int = 8  # GroupNorm groups (a per-sample norm: a frame's output never depends on its batch)

    def __post_init__(self):
        if len(self.widths) != 3 or any(int(w) <= 0 or int(w) % self.groups for w in self.widths):
            raise ValueError(f"ProbeConfig.widths must be 3 positive multiples of groups={self.groups}, got {self.widths}")

    @property
    def feature_dim(self) -> int:
        """Dimension of the pooled features (mean and spread of the penultimate layer's channels)."""
        return int(self.widths[0]) * 2


def _conv(cin: int, cout: int, groups: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2), nn.GroupNorm(groups, cout), nn.SiLU())


class FrameProbe(nn.Module):
    """Per-pixel probe classes (``NUM_CLASSES``) from uint8 RGB frames (B, 3, H, W), H, W multiples of 4.

    ``forward`` returns ``(logits (B, NUM_CLASSES, H, W), feats (B, feature_dim))``; ``feats``
    pools the penultimate layer's map over the image (mean and standard deviation per channel), so
    that both what is in a frame and how sharp it is move them. Full-resolution layers are kept
    thin (one input conv, a 1 x 1 fuse and one conv before the head): they cost the most.
    """

    def __init__(self, config: ProbeConfig = ProbeConfig()):
        super().__init__()
        self.config = config
        w0, w1, w2, g = (*(int(w) for w in config.widths), int(config.groups))
        self.enc0 = _conv(3, w0, g)
        self.enc1 = nn.Sequential(_conv(w0, w1, g, stride=2), _conv(w1, w1, g))
        self.enc2 = nn.Sequential(_conv(w1, w2, g, stride=2), _conv(w2, w2, g))
        self.dec1 = nn.Sequential(_conv(w2 + w1, w1, g, k=1), _conv(w1, w1, g))
        self.dec0 = nn.Sequential(_conv(w1 + w0, w0, g, k=1), _conv(w0, w0, g))
        self.head = nn.Conv2d(w0, NUM_CLASSES, 1)

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rgb.dim() != 4 or rgb.shape[1] != 3 or rgb.shape[-1] % 4 or rgb.shape[-2] % 4:
            raise ValueError(f"FrameProbe: rgb must be (B, 3, H, W) with H, W multiples of 4, got {tuple(rgb.shape)}")
        x = rgb.float() / 127.5 - 1.0 if rgb.dtype == torch.uint8 else rgb.float() * 2 - 1
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        d1 = self.dec1(torch.cat([F.interpolate(e2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, size=e0.shape[-2:], mode="nearest"), e0], 1))
        feats = torch.cat([d0.mean((2, 3)), d0.flatten(2).std(-1)], 1)
        return self.head(d0), feats


# ------------------------------------------------------------------------------ files
def save_probe(probe: FrameProbe, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``probe.safetensors`` (float32) and ``probe.json`` (format, architecture, ``meta``) into ``directory``."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().float().contiguous() for k, v in probe.state_dict().items()}
    save_file(sd, str(d / WEIGHTS_NAME), metadata={"format": "pt", "dreamgym": "frame_probe"})
    cfg = {"format_version": PROBE_FORMAT, "architecture": asdict(probe.config), "classes": ["background", *COLOUR_NAMES, "partner"]}
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "meta": meta or {}}, indent=2) + "\n")
    return d


def _read_config(path: Path) -> ProbeConfig:
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("format_version") != PROBE_FORMAT:
            raise ValueError(f"format_version {d.get('format_version')!r}, this code reads {PROBE_FORMAT}")
        arch = d["architecture"]
        return ProbeConfig(widths=tuple(int(w) for w in arch["widths"]), groups=int(arch["groups"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a frame-probe config ({e})") from None


def load_probe(path: str | Path | None = None, device: str | torch.device = "cpu") -> FrameProbe:
    """The frame probe in ``path`` (a directory with ``probe.safetensors`` and ``probe.json``, or
    the weights file); None: the shipped one (``worldmodel/probe``). In eval mode on ``device``.
    A missing, damaged or mismatched file raises one ``ValueError`` line naming it."""
    p = DEFAULT_DIR if path is None else Path(path)
    weights, config = (p / WEIGHTS_NAME, p / CONFIG_NAME) if p.is_dir() else (p, p.parent / CONFIG_NAME)
    for f in (weights, config):
        if not f.is_file():
            raise ValueError(f"frame probe file not found: {f}; give a directory written by `dreamgym train-probe`")
    probe = FrameProbe(_read_config(config))
    sd = load_safetensors(weights)
    own = probe.state_dict()
    bad = sorted(set(own) ^ set(sd)) + [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"{weights}: does not fit the architecture of {config} (first mismatched tensor: {bad[0]})")
    probe.load_state_dict(sd)
    return probe.to(device).eval()


@torch.no_grad()
def probe_labels(probe: FrameProbe, rgb: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's classes (B, H, W) long and pooled features (B, F) of uint8 frames (B, 3, H, W), in chunks of ``batch``."""
    dev = next(probe.parameters()).device
    classes, feats = [], []
    for i in range(0, rgb.shape[0], batch):
        logits, f = probe(rgb[i : i + batch].to(dev))
        classes.append(logits.argmax(1))
        feats.append(f)
    if not classes:
        H, W = rgb.shape[-2:]
        return torch.zeros(0, H, W, dtype=torch.long, device=dev), torch.zeros(0, probe.config.feature_dim, device=dev)
    return torch.cat(classes), torch.cat(feats)
