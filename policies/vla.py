"""Vision-language-action policy: ego frame + body motion + instruction text -> the 6-float action.

The policy sees only what a person wearing the camera would: the egocentric RGB frame (resized to
``resolution``, 32x32 by default), a few features of its own body motion (pelvis velocity, head
and right-wrist position, head rotation) and the instruction as text. The text is encoded by the
frozen all-MiniLM-L6-v2 (``text_encoder``) and read by a linear parser into the instruction's
meaning (target colour, target shape, task); a small CNN trained here reads the frame, FiLM-
modulated by that meaning, and finds the target and the mat in it (keypoint maps). The scripted
experts it is cloned from use privileged state (prop positions); the policy does not -- privileged
state only supervises the parser and the keypoint maps during training.

Phrasings. Training uses ``TRAIN_TEMPLATES``; ``PARAPHRASE_TEMPLATES`` and ``HELD_OUT_COMBOS`` were
fixed before any training and are never trained on: they measure generalisation to new wording and
to new colour x object x verb combinations.

Interface (shared with the other policies): ``act(obs) -> (B, 6)`` on batched torch observations
with keys ``ego_rgb`` (B, 3, H, W) uint8, ``motion`` (B, 227) and ``instruction`` (B,) indices
into ``envs.tasks.INSTRUCTIONS``; ``act(obs, texts=[...])`` gives each world its own sentence
instead (paraphrases). ``save_pretrained(dir)`` writes ``model.safetensors`` + ``config.json``;
``from_pretrained(dir)`` reads them back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from dreamgym.envs.motion import JOINT_POS, JOINT_ROT, JOINT_VEL
from dreamgym.envs.scene import COLOUR_NAMES, EGO_CAM_FOVY
from dreamgym.envs.tasks import INSTRUCTIONS
from dreamgym.worldmodel.warp import ego_camera_pose

from .text_encoder import EMBED_DIM, shared_encoder

OBS_KEYS = ("ego_rgb", "motion", "instruction")
HEAD, RIGHT_WRIST = 15, 21
MOTION_FEATURES = 13

# -- phrasings (written before training; see the module docstring) --
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "reach": ("walk to the {colour} {shape}", "move to the {colour} {shape}", "approach the {colour} {shape}"),
    "push": ("push the {colour} {shape} onto the mat", "move the {colour} {shape} onto the mat", "push the {colour} {shape} to the mat"),
}
PARAPHRASE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "reach": (
        "go to the {colour} {shape}",
        "head over to the {colour} {noun}",
        "make your way to the {colour} {shape}",
        "walk up to the {colour} {noun}",
    ),
    "push": (
        "shove the {colour} {shape} onto the mat",
        "get the {colour} {noun} onto the mat",
        "slide the {colour} {noun} onto the black mat",
        "nudge the {colour} {shape} over to the mat",
    ),
}
SYNONYM = {"box": "cube", "ball": "sphere"}
# (task, colour, shape) never seen in training, under any phrasing.
HELD_OUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("push", "green", "box"),
    ("push", "orange", "ball"),
    ("reach", "purple", "ball"),
    ("reach", "yellow", "box"),
)


def parse_instruction(index: int) -> tuple[str, str, str] | None:
    """(task, colour, shape) of a reach/push instruction index, None for the others."""
    text = INSTRUCTIONS[int(index)]
    for task, prefix in (("reach", "walk to the "), ("push", "push the ")):
        if text.startswith(prefix):
            colour, shape = text[len(prefix) :].split(" ")[:2]
            return task, colour, shape
    return None


def phrase(task: str, colour: str, shape: str, template: str) -> str:
    return template.format(colour=colour, shape=shape, noun=SYNONYM[shape])


def is_held_out(index: int) -> bool:
    return parse_instruction(index) in HELD_OUT_COMBOS


def motion_features(motion: torch.Tensor) -> torch.Tensor:
    """(B, 13): pelvis velocity (root frame), head and right-wrist positions, head local rotation."""
    vel = motion[:, JOINT_VEL][:, 0:3]
    pos = motion[:, JOINT_POS].view(-1, 22, 3)
    rot = motion[:, JOINT_ROT].view(-1, 22, 4)
    return torch.cat((vel, pos[:, HEAD], pos[:, RIGHT_WRIST], rot[:, HEAD]), -1)


# -- what the instruction must say: the parser's attribute groups (softmax each) --
SHAPES: tuple[str, ...] = ("box", "ball")
TASKS: tuple[str, ...] = ("reach", "push")
ATTRIBUTE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (("colour", COLOUR_NAMES), ("shape", SHAPES), ("task", TASKS))
NUM_ATTRIBUTES = sum(len(v) for _, v in ATTRIBUTE_GROUPS)
# -- where things are in the frame: keypoints the vision branch learns to find --
KEYPOINTS: tuple[str, ...] = ("target", "mat")
ARCH_VERSION = 2


def instruction_attributes(index: int) -> tuple[int, int, int]:
    """(colour, shape, task) class indices of a reach/push instruction index; -1s for the others."""
    parsed = parse_instruction(index)
    if parsed is None:
        return -1, -1, -1
    task, colour, shape = parsed
    return COLOUR_NAMES.index(colour), SHAPES.index(shape), TASKS.index(task)


def project_to_frame(motion: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where world points (B, K, 3) fall in the head camera placed by ``motion`` (B, 227).

    Returns ``uv`` (B, K, 2) in image coordinates (u to the right, v down, -1..1 across the frame)
    and ``visible`` (B, K) bool: in front of the camera and inside the frame (occlusion ignored).
    """
    pos, rot = ego_camera_pose(motion)
    rel = torch.einsum("bji,bkj->bki", rot, points.float() - pos[:, None])  # camera frame: x right, y up, -z forward
    fwd = -rel[..., 2]
    t = math.tan(math.radians(EGO_CAM_FOVY) / 2)
    depth = fwd.clamp(min=1e-3)
    u, v = rel[..., 0] / depth / t, -rel[..., 1] / depth / t
    uv = torch.stack((u, v), -1)
    visible = (fwd > 0.05) & (u.abs() < 1) & (v.abs() < 1)
    return uv, visible


def keypoint_cells(uv: torch.Tensor, visible: torch.Tensor, grid: int) -> torch.Tensor:
    """Class index per keypoint for a ``grid`` x ``grid`` map: row * grid + col, or grid**2 when not in view."""
    col = ((uv[..., 0] + 1) / 2 * grid).floor().clamp(0, grid - 1).long()
    row = ((uv[..., 1] + 1) / 2 * grid).floor().clamp(0, grid - 1).long()
    return torch.where(visible, row * grid + col, torch.full_like(col, grid * grid))


@dataclass
class VLAConfig:
    resolution: int = 32
    channels: tuple[int, int, int] = (16, 32, 32)
    hidden: int = 256
    text_hidden: int = 64
    kind: str = "vla"
    version: int = ARCH_VERSION
    info: dict = field(default_factory=dict)  # provenance: training seeds, steps, ...

    @property
    def grid(self) -> int:
        """Side of the feature map the keypoints are found on (the convolutions stride 2, 2, 1)."""
        return self.resolution // 4


class FiLMConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, text_hidden: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2)
        self.norm = nn.GroupNorm(4, cout, affine=False)
        self.film = nn.Linear(text_hidden, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g, b = self.film(t)[:, :, None, None].chunk(2, 1)
        return F.relu(self.norm(self.conv(x)) * (1 + g) + b)


class VLAPolicy(nn.Module):
    """Instruction parser + frame CNN (FiLM by the parsed instruction) + keypoints + motion -> action.

    The frozen sentence embedding is read by a linear *parser* into distributions over the target's
    colour, its shape and the task (trained with cross-entropy on the instruction's known meaning);
    the rest of the network sees only those distributions. Conditioning on a factored meaning
    instead of a point in embedding space is what lets "walk to the purple ball" work when only
    "purple box" and "red ball" were trained: the parser reads "purple" and "ball" from any
    sentence MiniLM places near the trained ones, and the FiLM layers respond to colour and shape
    additively. The vision branch also finds two keypoints on its feature map -- the target and the
    mat -- trained against their projection into the frame (privileged state, training only); the
    policy head reads their expected position and visibility.
    """

    obs_keys = OBS_KEYS

    def __init__(self, config: VLAConfig | None = None):
        super().__init__()
        self.config = c = config or VLAConfig()
        if c.resolution % 4:
            raise ValueError(f"VLAConfig.resolution must be a multiple of 4, got {c.resolution}")
        self.parser = nn.Linear(EMBED_DIM, NUM_ATTRIBUTES)
        self.text = nn.Sequential(nn.Linear(NUM_ATTRIBUTES, c.text_hidden), nn.ReLU(), nn.Linear(c.text_hidden, c.text_hidden))
        c1, c2, c3 = c.channels
        self.convs = nn.ModuleList(
            [
                FiLMConv(3 + 2, c1, 5, 2, c.text_hidden),  # + 2 coordinate channels: where in the frame
                FiLMConv(c1, c2, 3, 2, c.text_hidden),
                FiLMConv(c2, c3, 3, 1, c.text_hidden),
            ]
        )
        K = len(KEYPOINTS)
        self.kp_maps = nn.Conv2d(c3, K, 1)
        self.kp_absent = nn.Linear(c3, K)
        g = c.grid
        flat = c3 * g * g
        self.head = nn.Sequential(
            nn.Linear(flat + 3 * K + MOTION_FEATURES + c.text_hidden, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, c.hidden),
            nn.ReLU(),
            nn.Linear(c.hidden, 6),
        )
        r = c.resolution
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
        self.register_buffer("coords", torch.stack((xs, ys))[None], persistent=False)
        centres = (torch.arange(g) + 0.5) / g * 2 - 1
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("cell_xy", torch.stack((cx.reshape(-1), cy.reshape(-1)), -1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.coords.device

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return shared_encoder("cpu").encode(list(texts)).to(self.device)

    def texts_for(self, instruction: torch.Tensor) -> list[str]:
        return [INSTRUCTIONS[int(i)] for i in instruction.reshape(-1).tolist()]

    def parse(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Attribute logits (B, NUM_ATTRIBUTES) of sentence embeddings (B, 384)."""
        # MiniLM's embeddings have unit norm: scale them to unit variance per dimension so that the
        # linear parser learns at the same pace as the rest of the network
        return self.parser(text_emb.float() * EMBED_DIM**0.5)

    def meaning(self, attr_logits: torch.Tensor) -> torch.Tensor:
        """Per-group softmax of the parser's logits: what the rest of the network is conditioned on."""
        parts, i = [], 0
        for _, values in ATTRIBUTE_GROUPS:
            parts.append(torch.softmax(attr_logits[:, i : i + len(values)], -1))
            i += len(values)
        return torch.cat(parts, -1)

    def outputs(self, ego_rgb: torch.Tensor, motion: torch.Tensor, text_emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """``action`` (pre-tanh means, B x 6), ``attributes`` (parser logits) and ``keypoints``
        (B, K, grid**2 + 1 logits: a cell of the feature map, or the last class: not in view)."""
        r = self.config.resolution
        x = ego_rgb.float()
        if ego_rgb.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="area")
        x = torch.cat((x - 0.5, self.coords.expand(x.shape[0], -1, -1, -1)), 1)
        attributes = self.parse(text_emb)
        # the parser is trained only by its own cross-entropy: the policy reads its meaning as given
        t = self.text(self.meaning(attributes.detach()))
        for conv in self.convs:
            x = conv(x, t)
        maps = self.kp_maps(x).flatten(2)  # (B, K, g*g)
        absent = self.kp_absent(x.mean((2, 3)))[..., None]  # (B, K, 1)
        kp = torch.cat((maps, absent), -1)
        p = torch.softmax(kp, -1)
        in_view = p[..., :-1]
        xy = in_view @ self.cell_xy / in_view.sum(-1, keepdim=True).clamp(min=1e-6)  # (B, K, 2)
        feats = torch.cat((xy, 1 - p[..., -1:]), -1).flatten(1)
        m = motion_features(motion.float())
        action = self.head(torch.cat((x.flatten(1), feats, m, t), -1))
        return {"action": action, "attributes": attributes, "keypoints": kp}

    def forward(self, ego_rgb: torch.Tensor, motion: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Pre-tanh action means (B, 6). ``ego_rgb`` (B, 3, H, W) uint8 or float in 0..1."""
        return self.outputs(ego_rgb, motion, text_emb)["action"]

    def parsed(self, texts: Sequence[str]) -> list[dict[str, str]]:
        """The parser's reading of each sentence: {"colour": ..., "shape": ..., "task": ...}."""
        with torch.no_grad():
            logits = self.parse(self.embed_texts(texts))
        out, i = [{} for _ in texts], 0
        for name, values in ATTRIBUTE_GROUPS:
            idx = logits[:, i : i + len(values)].argmax(-1).tolist()
            for row, k in zip(out, idx):
                row[name] = values[k]
            i += len(values)
        return out

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], deterministic: bool = True, texts: Sequence[str] | None = None) -> torch.Tensor:
        """Actions (B, 6) in [-1, 1] for batched observations (see the module docstring)."""
        missing = [k for k in ("ego_rgb", "motion") if k not in obs]
        if missing or (texts is None and "instruction" not in obs):
            raise KeyError(f"VLAPolicy.act needs observation keys {list(OBS_KEYS)}; missing {missing or ['instruction']}")
        B = obs["motion"].shape[0]
        if texts is None:
            texts = self.texts_for(obs["instruction"])
        if len(texts) != B:
            raise ValueError(f"{len(texts)} instruction texts for a batch of {B}")
        emb = self.embed_texts(texts)
        out = self(obs["ego_rgb"].to(self.device), obs["motion"].to(self.device), emb)
        return torch.tanh(out).to(obs["motion"].device)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> VLAPolicy:
        from .weights import read_json, read_safetensors

        path = Path(path)
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path} is not a VLA checkpoint: expected config.json and model.safetensors in it")
        raw = read_json(path / "config.json")
        if raw.get("kind") != "vla":
            raise ValueError(f"{path}/config.json describes a {raw.get('kind')!r} policy, not 'vla'")
        if raw.get("version", 1) != ARCH_VERSION:
            raise ValueError(
                f"{path}/config.json is a version-{raw.get('version', 1)} VLA policy; this dreamgym reads version "
                f"{ARCH_VERSION} (instruction parser + keypoints): retrain it with `dreamgym train-vla`"
            )
        raw["channels"] = tuple(raw["channels"])
        model = cls(VLAConfig(**raw))
        model.load_state_dict(read_safetensors(path / "model.safetensors"))
        return model.to(device).eval()


def find_checkpoint(path: str | Path) -> Path | None:
    """The VLA checkpoint in ``path``: the dir itself, or a train-vla run's ``final/`` (else ``bc/``)."""
    p = Path(path)
    for c in (p, p / "final", p / "bc"):
        cfg = c / "config.json"
        if cfg.is_file() and (c / "model.safetensors").is_file():
            try:
                if json.loads(cfg.read_text()).get("kind") == "vla":
                    return c
            except json.JSONDecodeError:
                return None
    return None


def _register() -> None:
    from .base import register_policy_loader

    register_policy_loader(
        "vla",
        matches=lambda p: find_checkpoint(p) is not None,
        load=lambda p, task=None, device="cpu": VLAPolicy.from_pretrained(find_checkpoint(p), device=device),
    )


_register()
