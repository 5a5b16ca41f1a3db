"""World-model checkpoints on disk: ``model.safetensors`` + ``config.json`` + ``sampler.json``.

Nothing is unpickled. ``config.json`` holds the architecture and ``sampler.json`` the sampler
(format 2, ``config.FORMAT_VERSION``); a format-1 ``config.json`` (one file with every setting)
is upgraded on load (``config.upgrade``), and a format newer than this code is refused. Every
value is checked on load as on construction, so a bad file fails naming itself, the key and the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import FORMAT_VERSION, ArchitectureConfig, SamplerConfig, check_sampler, format_version, upgrade, upgrade_sampler

CONFIG_NAME = "config.json"
SAMPLER_NAME = "sampler.json"
WEIGHTS_NAME = "model.safetensors"


def write_pretrained(
    directory: str | Path, state_dict: Mapping[str, torch.Tensor], arch: ArchitectureConfig, sampler: SamplerConfig
) -> Path:
    """Write the weights, ``config.json`` and ``sampler.json`` into ``directory`` (created)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        str(d / WEIGHTS_NAME),
        metadata={"format": "pt", "dreamgym": "worldmodel"},
    )
    for name, cfg in ((CONFIG_NAME, arch), (SAMPLER_NAME, sampler)):
        (d / name).write_text(json.dumps({"format_version": FORMAT_VERSION, **cfg.to_dict()}, indent=2) + "\n")
    return d


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON world-model config ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, config.json) of a checkpoint directory or of its ``model.safetensors``; both must exist."""
    p = Path(path)
    weights, config = (p / WEIGHTS_NAME, p / CONFIG_NAME) if p.is_dir() else (p, p.parent / CONFIG_NAME)
    if p.is_dir() and not weights.exists() and (p / "run.json").is_file():  # a train-wm run folder
        if (p / "final").is_dir():
            raise FileNotFoundError(f"{p} is a train-wm run folder; give its result, {p / 'final'}")
        raise FileNotFoundError(f"{p}: unfinished train-wm run (no final/ yet); re-run the same train-wm command to finish it")
    for f in (weights, config):
        if not f.exists():
            raise FileNotFoundError(f"world-model checkpoint file not found: {f}")
    return weights, config


def read_configs(config: Path) -> tuple[ArchitectureConfig, SamplerConfig]:
    """The checked architecture and sampler of the checkpoint whose ``config.json`` is ``config``.

    ``sampler.json`` beside it, when present, gives the sampler (over a format-1 file's own
    sampling settings); without one the sampler is the format-1 file's or ``SamplerConfig()``.
    """
    raw_arch = _read_json(config)
    if raw_arch.get("kind") == "vector":
        raise ValueError(
            f"{config}: a vector world model of the Gymnasium env {raw_arch.get('env_id')}, not the room's; "
            "load it with dreamgym.worldmodel.load.load_world_model"
        )
    arch_d, sampler_d = upgrade(raw_arch, str(config))
    arch = ArchitectureConfig.from_dict(arch_d, source=str(config))
    source = str(config)
    sampler_file = config.parent / SAMPLER_NAME
    if sampler_file.exists():
        raw = _read_json(sampler_file)
        version = format_version(raw, str(sampler_file))
        sampler_d = upgrade_sampler({k: v for k, v in raw.items() if k != "format_version"}, version)
        source = str(sampler_file)
    sampler = SamplerConfig.from_dict(sampler_d, source=source)
    check_sampler(arch, sampler, source)
    return arch, sampler


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a clear ``ValueError`` naming the file if it is not one or is cut short."""
    from safetensors.torch import load_file

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
    n = int.from_bytes(head, "little")
    if n <= 0 or n > 100_000_000 or 8 + n > size:
        raise ValueError(f"{path}: not a safetensors file, or truncated (header length {n} does not fit in its {size} bytes)")
    with open(path, "rb") as f:
        f.seek(8)
        header = f.read(n)
    try:
        meta = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON)") from None
    end = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated: the header describes {8 + n + end} bytes but the file has {size}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type
        raise ValueError(f"{path}: could not read safetensors data ({e})") from None


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], weights: Path, config: Path) -> None:
    """Raise naming the file and the first mismatched tensors when ``sd`` does not fit ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if shape:
            k, got, want = shape[0]
            parts.append(
                f"tensor {k!r} has shape {got} in the file but {want} for the config"
                + (f" (and {len(shape) - 1} more)" if len(shape) > 1 else "")
            )
        if missing:
            parts.append(f"missing tensors {missing[:3]}" + (f" (+{len(missing) - 3})" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:3]}" + (f" (+{len(unexpected) - 3})" if len(unexpected) > 3 else ""))
        raise ValueError(f"{weights} does not match the config {config}: " + "; ".join(parts))
