"""Vision-language-action policy: ego frame + body motion + instruction text -> the 6-float action.

The policy sees only what a person wearing the camera would: the egocentric RGB frame (resized to
``resolution``, 32x32 by default), a few features of its own body motion (pelvis velocity, head
and right-wrist position, head rotation) and the instruction as text. The text is encoded by the
frozen all-MiniLM-L6-v2 (``text_encoder``); a small CNN trained here reads the frame, and the
sentence embedding modulates its feature maps (FiLM), so "red" and "ball" can change what the
convolutions attend to. The scripted experts it is cloned from use privileged state (prop
positions); the policy does not.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from dreamgym.envs.motion import JOINT_POS, JOINT_ROT, JOINT_VEL
from dreamgym.envs.tasks import INSTRUCTIONS

from .text_encoder import EMBED_DIM, shared_encoder

OBS_KEYS = ("ego_rgb", "motion", "instruction")
HEAD, RIGHT_WRIST = 15, 21
MOTION_FEATURES = 13

# -- phrasings (written before training; see the module docstring) --
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "reach": ("walk to the {colour} {shape}", "move to the {colour} {shape}", "approach the {colour} {shape}"),
    "push": ("push the {colour} {shape} onto the mat", "move the {colour} {shape} onto the mat",
             "push the {colour} {shape} to the mat"),
}
PARAPHRASE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "reach": ("go to the {colour} {shape}", "head over to the {colour} {noun}", "make your way to the {colour} {shape}",
              "walk up to the {colour} {noun}"),
    "push": ("shove the {colour} {shape} onto the mat", "get the {colour} {noun} onto the mat",
             "slide the {colour} {noun} onto the black mat", "nudge the {colour} {shape} over to the mat"),
}
SYNONYM = {"box": "cube", "ball": "sphere"}
# (task, colour, shape) never seen in training, under any phrasing.
HELD_OUT_COMBOS: tuple[tuple[str, str, str], ...] = (
    ("push", "green", "box"), ("push", "orange", "ball"), ("reach", "purple", "ball"), ("reach", "yellow", "box"),
)


def parse_instruction(index: int) -> tuple[str, str, str] | None:
    """(task, colour, shape) of a reach/push instruction index, None for the others."""
    text = INSTRUCTIONS[int(index)]
    for task, prefix in (("reach", "walk to the "), ("push", "push the ")):
        if text.startswith(prefix):
            colour, shape = text[len(prefix):].split(" ")[:2]
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


@dataclass
class VLAConfig:
    resolution: int = 32
    channels: tuple[int, int, int] = (16, 32, 32)
    hidden: int = 256
    text_hidden: int = 128
    kind: str = "vla"
    info: dict = field(default_factory=dict)  # provenance: training seeds, steps, ...


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
    """Frame (CNN with text FiLM) + motion features + text -> action in [-1, 1]^6."""

    obs_keys = OBS_KEYS

    def __init__(self, config: VLAConfig | None = None):
        super().__init__()
        self.config = c = config or VLAConfig()
        self.text = nn.Sequential(nn.Linear(EMBED_DIM, c.text_hidden), nn.ReLU(), nn.Linear(c.text_hidden, c.text_hidden))
        c1, c2, c3 = c.channels
        self.convs = nn.ModuleList([
            FiLMConv(3 + 2, c1, 5, 2, c.text_hidden),  # + 2 coordinate channels: where in the frame
            FiLMConv(c1, c2, 3, 2, c.text_hidden),
            FiLMConv(c2, c3, 3, 2, c.text_hidden),
        ])
        flat = c3 * (c.resolution // 8) ** 2
        self.head = nn.Sequential(
            nn.Linear(flat + MOTION_FEATURES + c.text_hidden, c.hidden), nn.ReLU(),
            nn.Linear(c.hidden, c.hidden), nn.ReLU(), nn.Linear(c.hidden, 6),
        )
        r = c.resolution
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
        self.register_buffer("coords", torch.stack((xs, ys))[None], persistent=False)

    @property
    def device(self) -> torch.device:
        return self.coords.device

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return shared_encoder("cpu").encode(list(texts)).to(self.device)

    def texts_for(self, instruction: torch.Tensor) -> list[str]:
        return [INSTRUCTIONS[int(i)] for i in instruction.reshape(-1).tolist()]

    def forward(self, ego_rgb: torch.Tensor, motion: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Pre-tanh action means (B, 6). ``ego_rgb`` (B, 3, H, W) uint8 or float in 0..1."""
        r = self.config.resolution
        x = ego_rgb.float()
        if ego_rgb.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="area")
        x = torch.cat((x - 0.5, self.coords.expand(x.shape[0], -1, -1, -1)), 1)
        t = self.text(text_emb)
        for conv in self.convs:
            x = conv(x, t)
        m = motion_features(motion.float())
        return self.head(torch.cat((x.flatten(1), m, t), -1))

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
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "VLAPolicy":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"{path} is not a VLA checkpoint: expected config.json and model.safetensors in it")
        raw = json.loads((path / "config.json").read_text())
        if raw.get("kind") != "vla":
            raise ValueError(f"{path}/config.json describes a {raw.get('kind')!r} policy, not 'vla'")
        raw["channels"] = tuple(raw["channels"])
        model = cls(VLAConfig(**raw))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
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
        "vla", matches=lambda p: find_checkpoint(p) is not None,
        load=lambda p, task=None, device="cpu": VLAPolicy.from_pretrained(find_checkpoint(p), device=device),
    )


_register()
