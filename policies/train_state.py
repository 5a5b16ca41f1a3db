"""A ``train-policy`` checkpoint: what an SB3 run needs to go on as if it had never stopped.

``<run>/checkpoints/step-<num_timesteps>/`` holds, with nothing pickled:

- ``policy.safetensors`` + ``policy.json``: the policy, in the format ``load_policy`` reads
  (so a checkpoint can be scored on its own);
- ``state.safetensors``: the optimizers' tensors (Adam moments and steps), the algorithm's torch
  variables (SAC's ``log_ent_coef``) and the torch RNG state;
- ``replay.safetensors`` (SAC): the filled part of the replay buffer;
- ``state.json``: the algorithm's counters (``num_timesteps``, ``_n_updates``, ``_episode_num``,
  ``_current_progress_remaining``), the optimizers' ``param_groups``, the numpy, Python and
  action-space RNG states, the recent episode statistics and the caller's own counters.

The env itself is not stored: every checkpoint starts fresh episodes from a seed derived from the
run's seed and the step (``train.py``), in an uninterrupted run as in a resumed one, so both go on
from the same state. A checkpoint is written under a temporary name and renamed into place; only
the newest is kept.
"""

from __future__ import annotations

import random
import re
import shutil
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .sb3_format import load_unique_state_dict, save_sb3_policy
from .weights import atomic_write_json, read_json, read_safetensors, write_safetensors

CHECKPOINTS = "checkpoints"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
REPLAY = "replay.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_current_progress_remaining")
REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _torch_parts(model: Any) -> tuple[dict[str, torch.optim.Optimizer], dict[str, torch.Tensor]]:
    """The model's optimizers and torch variables by SB3's own names (``_get_torch_save_params``)."""
    from stable_baselines3.common.save_util import recursive_getattr

    names, variables = model._get_torch_save_params()
    opts = {n: recursive_getattr(model, n) for n in names if n != "policy"}
    return opts, {n: recursive_getattr(model, n) for n in variables}


# ----------------------------------------------------------------------------- optimizers
def _flat_optimizer(name: str, sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{name}/state/{idx}/{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflat_optimizer(name: str, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{name}/state/"
    for key, t in tensors.items():
        if key.startswith(prefix):
            idx, k = key[len(prefix) :].split("/", 1)
            state.setdefault(int(idx), {})[k] = t
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------------- RNG
def capture_rng(action_space: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU, and CUDA when in use), numpy's global, Python's and the action space's RNG states."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return tensors, {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
        "action_space": action_space.np_random.bit_generator.state,
    }


def restore_rng(action_space: Any, tensors: Mapping[str, torch.Tensor], states: Mapping[str, Any]) -> None:
    """Put back what ``capture_rng`` took."""
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    action_space.np_random.bit_generator.state = states["action_space"]


# ----------------------------------------------------------------------------- replay buffer
def _replay_tensors(buf: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    n = buf.buffer_size if buf.full else buf.pos
    out = {}
    for field in REPLAY_FIELDS:
        v = getattr(buf, field, None)
        if isinstance(v, dict):
            for k, a in v.items():
                out[f"{field}/{k}"] = torch.from_numpy(np.ascontiguousarray(a[:n]))
        elif isinstance(v, np.ndarray):
            out[field] = torch.from_numpy(np.ascontiguousarray(v[:n]))
    return out, {"pos": int(buf.pos), "full": bool(buf.full), "rows": int(n), "buffer_size": int(buf.buffer_size)}


def _load_replay(buf: Any, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], source: Path) -> None:
    if int(meta["buffer_size"]) != int(buf.buffer_size):
        raise CheckpointError(f"{source}: replay buffer of {meta['buffer_size']} rows, the run's has {buf.buffer_size}")
    n = int(meta["rows"])
    for key, t in tensors.items():
        field, _, sub = key.partition("/")
        target = getattr(buf, field)
        target = target[sub] if sub else target
        if tuple(t.shape) != (n, *target.shape[1:]):
            raise CheckpointError(f"{source}: replay field {key} has shape {tuple(t.shape)}, expected {(n, *target.shape[1:])}")
        target[:n] = t.numpy()
    buf.pos, buf.full = int(meta["pos"]), bool(meta["full"])


# ----------------------------------------------------------------------------- checkpoints
def step_dir(root: Path, step: int) -> Path:
    return root / CHECKPOINTS / f"step-{int(step):09d}"


def save_train_state(model: Any, algo: str, root: str | Path, extra: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
    """Write ``<root>/checkpoints/step-<num_timesteps>/`` atomically and drop older checkpoints.

    ``extra``: the caller's counters (JSON), returned by ``load_train_state``; ``meta``: written
    into the checkpoint's policy.json.
    """
    root = Path(root)
    final = step_dir(root, model.num_timesteps)
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_sb3_policy(model.policy, algo, tmp, meta)
    tensors, rng = capture_rng(model.action_space)
    opts, variables = _torch_parts(model)
    optim_meta = {}
    for name, opt in opts.items():
        t, m = _flat_optimizer(name, opt.state_dict())
        tensors.update(t)
        optim_meta[name] = m
    tensors.update({f"var/{k}": v.detach() for k, v in variables.items()})
    write_safetensors(tensors, tmp / STATE_TENSORS)
    replay_meta = None
    buf = getattr(model, "replay_buffer", None)
    if buf is not None:
        rt, replay_meta = _replay_tensors(buf)
        write_safetensors(rt, tmp / REPLAY)
    state = {
        "format_version": 1,
        "algo": algo,
        "counters": {k: getattr(model, k) for k in COUNTERS},
        "optimizers": optim_meta,
        "rng": rng,
        "ep_info_buffer": [dict(e) for e in (model.ep_info_buffer or [])],
        "ep_success_buffer": [bool(s) for s in (model.ep_success_buffer or [])],
        "replay": replay_meta,
        "extra": dict(extra),
    }
    atomic_write_json(tmp / STATE_JSON, state)  # last: a checkpoint with state.json is complete
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(root):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders a crash left are removed)."""
    folder = Path(root) / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = []
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)
        elif _STEP_DIR.match(p.name) and (p / STATE_JSON).is_file():
            done.append(p)
    return sorted(done, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


@dataclass
class TrainState:
    """A loaded checkpoint: ``extra`` (the caller's counters) and what is put back later (``restore_later``)."""

    step: int
    extra: dict[str, Any]
    rng_tensors: dict[str, torch.Tensor]
    state: dict[str, Any]

    def restore_later(self, model: Any) -> None:
        """RNG states and episode statistics, put back at the point where the checkpoint was taken."""
        restore_rng(model.action_space, self.rng_tensors, self.state["rng"])
        maxlen = model._stats_window_size
        model.ep_info_buffer = deque(self.state["ep_info_buffer"], maxlen=maxlen)
        model.ep_success_buffer = deque(self.state["ep_success_buffer"], maxlen=maxlen)


def load_train_state(model: Any, algo: str, ckpt: str | Path) -> TrainState:
    """Load a checkpoint into ``model`` (built with the run's settings): weights, optimizers,
    variables, counters and replay buffer. RNG states follow through ``TrainState.restore_later``."""
    ckpt = Path(ckpt)
    state = read_json(ckpt / STATE_JSON, "checkpoint state")
    if state.get("format_version") != 1 or state.get("algo") != algo:
        raise CheckpointError(
            f"{ckpt / STATE_JSON}: a {state.get('algo')!r} checkpoint of format {state.get('format_version')!r}, expected {algo!r} of format 1"
        )
    load_unique_state_dict(model.policy, read_safetensors(ckpt / "policy.safetensors", model.device), ckpt / "policy.safetensors")
    tensors = read_safetensors(ckpt / STATE_TENSORS)
    opts, variables = _torch_parts(model)
    if set(opts) != set(state["optimizers"]):
        raise CheckpointError(f"{ckpt / STATE_JSON}: optimizers {sorted(state['optimizers'])}, the run has {sorted(opts)}")
    for name, opt in opts.items():
        opt.load_state_dict(_unflat_optimizer(name, state["optimizers"][name], tensors))
    with torch.no_grad():
        for k, v in variables.items():
            v.copy_(tensors[f"var/{k}"].to(v.device))
    for k, v in state["counters"].items():
        setattr(model, k, v)
    if state.get("replay") is not None:
        _load_replay(model.replay_buffer, read_safetensors(ckpt / REPLAY), state["replay"], ckpt / REPLAY)
    rng = {k: v for k, v in tensors.items() if k.startswith("rng/")}
    return TrainState(int(state["counters"]["num_timesteps"]), dict(state["extra"]), rng, state)
