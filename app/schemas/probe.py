"""Schema of ``dreamgym train-probe`` (``configs/train_probe.yaml``, same order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import BadValue, check_dataset, require, setting


@dataclass
class TrainProbeConfig:
    """``configs/train_probe.yaml``"""

    data: Any = setting()
    out: str | None = setting()
    steps: int = setting(gt=0)
    batch_size: int = setting(gt=0)
    lr: float = setting(gt=0)
    weight_decay: float = setting(ge=0)
    warmup_steps: int = setting(ge=0)
    object_weight: float = setting(gt=0)
    widths: list[int] = setting(gt=0)
    max_episodes: int | None = setting(gt=0)
    seed: int = setting(ge=0)
    device: str = setting(device=True)
    num_threads: int = setting(ge=1)
    log_every: int = setting(gt=0)
    path: str | None = setting()

    def check(self) -> None:
        require(self, "data", hint="give data=<dataset dir> or data=[dir1,dir2] and out=<dir>")
        require(self, "out", hint="give out=<dir> (it gets probe.safetensors, probe.json, metrics.json)")
        dirs = [self.data] if isinstance(self.data, str) else self.data
        if not isinstance(dirs, list) or not dirs or not all(isinstance(d, str) for d in dirs):
            raise BadValue("data", f"data={self.data!r} is not a directory or a list of them; give data=<dir> or data=[dir1,dir2]")
        for d in dirs:
            check_dataset("data", d)
        if len(self.widths) != 3 or any(w % 8 for w in self.widths):
            raise BadValue("widths", f"widths={self.widths} must be 3 multiples of 8 (GroupNorm groups), e.g. widths=[16,32,48]")
