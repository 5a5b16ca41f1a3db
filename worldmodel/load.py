"""Load any world-model checkpoint: the room's ``WorldModel`` or a Gymnasium env's ``VectorWorldModel``.

``load_world_model(path)`` reads ``config.json`` beside the weights: ``"kind": "vector"`` is a model
trained on a ``collect env=<id>`` dataset (``worldmodel.vector``), anything else the room's model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoint import checkpoint_files


def checkpoint_kind(path: str | Path) -> str:
    """``"vector"`` or ``"room"``: which model a checkpoint (a folder or its weights file) holds."""
    _, config = checkpoint_files(path)
    try:
        d = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config}: not a valid JSON world-model config ({e})") from None
    return "vector" if isinstance(d, dict) and d.get("kind") == "vector" else "room"


def load_world_model(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """The model a checkpoint holds, on ``device``, in inference mode."""
    if checkpoint_kind(path) == "vector":
        from .vector import VectorWorldModel

        return VectorWorldModel.from_pretrained(path, device=device)
    from .model import WorldModel

    return WorldModel.from_pretrained(path, device=device)
