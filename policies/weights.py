"""Policy weights on disk: safetensors files read with clear errors, written atomically.

Nothing here unpickles: safetensors holds plain tensors, JSON the rest. A file that is cut short or
is not safetensors at all gives a ``CheckpointError`` naming it (the library's own error does not
say which file it was reading). Writes go to a temporary name in the same folder and are renamed
into place, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dreamgym.rollouts.dataset import atomic_write_text, fsync_dir, sha256_of, temp_name

from .errors import CheckpointError

MAX_HEADER = 100_000_000  # bytes; a larger safetensors header is not one this project wrote

__all__ = ["atomic_write_json", "read_json", "read_safetensors", "sha256_of", "write_safetensors"]


def _check_layout(path: Path) -> None:
    """Raise naming ``path`` unless its header fits and describes no more bytes than it holds."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        if n <= 0 or n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated (header length {n} does not fit in its {size} bytes)")
        header = f.read(n)
    try:
        meta = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(f"{path}: not a safetensors file (its header has no data offsets)") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: truncated: the header describes {8 + n + end} bytes but the file has {size}")


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a ``CheckpointError`` naming the file if it is missing,
    not safetensors or cut short."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    _check_layout(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error type, without the file's name
        raise CheckpointError(f"{path}: could not read safetensors data ({e})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (copied to the CPU, each its own storage) to ``path`` atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    flat = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    tmp = temp_name(path)
    save_file(flat, str(tmp), metadata=dict(metadata) if metadata else None)
    os.chmod(tmp, 0o666 & ~_umask())  # the library creates its files private; give the usual permissions
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def _plain(v: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists (what json can write)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON so that a crash leaves the old file or the new one."""
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2, default=_plain) + "\n")
    return path


def read_json(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A JSON object from ``path``; a ``CheckpointError`` naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def plain_kwargs(kwargs: Any) -> dict[str, Any]:
    """Keyword arguments from a config (nested DictConfigs included) as plain JSON-ready dicts; None: {}."""
    from omegaconf import DictConfig, OmegaConf

    if kwargs is None:
        return {}
    return dict(OmegaConf.to_container(kwargs, resolve=True)) if isinstance(kwargs, DictConfig) else dict(kwargs)
