"""What a world-model training run keeps on disk: checkpoints, the EMA, and the run's record.

Checkpoints: ``<out>/checkpoints/step_XXXXXXXX/`` with ``model.safetensors`` + ``config.json``
(raw weights), ``ema.safetensors``, ``optimizer.safetensors``, ``rng.safetensors`` and
``trainer_state.json`` (step, optimizer hyperparameters, RNG states); written to a temporary
folder and renamed, so a kill never leaves a half-written checkpoint.

``<out>/run.json`` (``run_record``): what the run trains on and how -- the data's fingerprint,
the model and training configs, the code version. A run resumes only when it matches.

``<out>/final/`` (and ``final_raw/``) exist only once the run they belong to has finished
(``open_run_folder``, ``write_result``): a run that starts over moves the earlier run's record,
logs, checkpoints and result into ``replaced-<time>/``, and a run continued to more steps moves
the shorter run's result there, so a killed run never leaves a result that is not its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .model import CONFIG_NAME, WorldModel, check_state_dict, load_safetensors

if TYPE_CHECKING:
    from .config import TrainingConfig
    from .windows import WindowSource

CKPT_DIR = "checkpoints"
RUN_RECORD = "run.json"
RESULTS = ("final", "final_raw")
# What a run leaves in its folder; all of it moves aside when a new run starts there.
PROPS_STAGE_LOG = "props_stage.jsonl"  # the props rollout stage's losses (``props_stage.py``)
RUN_FILES = (RUN_RECORD, CKPT_DIR, *RESULTS, "metrics.jsonl", "heldout.jsonl", PROPS_STAGE_LOG, "tb", "train_config.yaml")
# Version of what one training step does; a run resumes only under the version that started it.
TRAINER_VERSION = 1
# Settings a resumed run may change: a longer run continues a shorter one exactly (the learning-rate
# schedule is a warm-up only), and the props rollout stage runs after the main steps (it is redone
# from its start when a run resumes).
RESUMABLE_CHANGES = ("steps", "props_rollout_steps", "props_rollout_horizon", "props_rollout_batch", "props_rollout_lr")


class ResumeMismatchError(ValueError):
    """A run folder holds a run of other data, settings or code than the one asked for."""


# ----------------------------------------------------------------------------- EMA / checkpoints
class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        params = dict(model.named_parameters())
        for k, v in model.state_dict().items():
            # the average stays where it was made (the CPU), whichever device trains
            if k in params:
                self.shadow[k].mul_(d).add_(v.detach().float().to(self.shadow[k].device), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{i}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        _, i, name = k.split(".", 2)
        state.setdefault(int(i), {})[name] = v
    for k, v in meta.get("scalars", {}).items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    py = random.getstate()
    np_state = np.random.get_state()
    return (
        {"rng.torch": torch.get_rng_state(), "rng.numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))},
        {"python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]},
    )


def _set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["rng.numpy_keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))


def save_checkpoint(
    out: Path, step: int, model: WorldModel, ema: EMA, opt: torch.optim.Optimizer, extra: Mapping[str, Any], keep: int
) -> Path:
    """Write a checkpoint atomically (temporary folder, then rename); keep the newest ``keep``."""
    from safetensors.torch import save_file

    root = out / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    save_file({k: v.cpu().contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
    opt_t, opt_meta = _optimizer_to_flat(opt)
    rng_t, rng_meta = _rng_state()
    save_file(opt_t, str(tmp / "optimizer.safetensors"))
    save_file(rng_t, str(tmp / "rng.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "rng": rng_meta, **extra}
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder under ``<out>/checkpoints`` (None if there is none)."""
    root = Path(out) / CKPT_DIR
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / "trainer_state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def restore_checkpoint(ckpt: Path, model: WorldModel, ema: EMA, opt: torch.optim.Optimizer) -> int:
    """Load a checkpoint's weights, EMA, optimizer and RNG states; returns its step."""
    sd = load_safetensors(ckpt / "model.safetensors")
    check_state_dict(model, sd, ckpt / "model.safetensors", ckpt / CONFIG_NAME)
    model.load_state_dict(sd)
    ema.shadow = {k: v.float() for k, v in load_safetensors(ckpt / "ema.safetensors").items()}
    state = json.loads((ckpt / "trainer_state.json").read_text())
    opt.load_state_dict(_optimizer_from_flat(load_safetensors(ckpt / "optimizer.safetensors"), state["optimizer"]))
    _set_rng_state(load_safetensors(ckpt / "rng.safetensors"), state["rng"])
    return int(state["step"])


# ----------------------------------------------------------------------------- the run record
def code_version() -> dict[str, Any]:
    """What code trains: the package version and the trainer's step version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("dreamgym")
    except PackageNotFoundError:
        pkg = "unknown"
    return {"dreamgym": pkg, "trainer": TRAINER_VERSION}


def run_record(
    model: WorldModel, training: TrainingConfig, windows: WindowSource, heldout: WindowSource | None, extra: Mapping[str, Any]
) -> dict:
    """What a run trains on and how: compared with ``<out>/run.json`` before resuming."""
    t = dataclasses.asdict(training)
    for k in RESUMABLE_CHANGES:
        t.pop(k, None)
    return {
        "code": code_version(),
        "model": dataclasses.asdict(model.config),
        "training": t,
        "data": windows.fingerprint(),
        "heldout": heldout.fingerprint() if heldout is not None else None,
        **{k: v for k, v in extra.items()},
    }


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def record_differences(had: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: run <old>, now <new>`` for every setting that differs (sha256 values shortened)."""
    a, b = _flat(json.loads(json.dumps(had))), _flat(json.loads(json.dumps(now)))
    short = lambda k, v: f"{v[:12]}..." if k.endswith("sha256") and isinstance(v, str) else repr(v)  # noqa: E731
    return [f"{k}: run {short(k, a.get(k))}, now {short(k, b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _step_of_line(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # a line cut short by a kill


def truncate_log(path: Path, step: int) -> None:
    """Drop a log's lines of steps after ``step`` (they are about to be redone), and a last line
    that a kill cut short."""
    if path.exists():
        lines = path.read_text().splitlines()
        keep = [ln for ln in lines if (s := _step_of_line(ln)) is not None and s <= step]
        _atomic_write(path, "".join(ln + "\n" for ln in keep))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def move_aside(out: Path, names: tuple[str, ...]) -> Path | None:
    """Move those of ``names`` that exist in ``out`` into ``out/replaced-<time>/``; returns it (None: nothing there)."""
    present = [out / n for n in names if (out / n).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = out / f"replaced-{stamp}", 1
    while dest.exists():
        dest, n = out / f"replaced-{stamp}-{n}", n + 1
    dest.mkdir()
    for p in present:
        os.replace(p, dest / p.name)
    return dest


def open_run_folder(out: Path, record: Mapping[str, Any], start: int, steps: int, files: Mapping[str, str]) -> None:
    """Make ``out`` the folder of the run that is about to train from step ``start`` to ``steps``.

    A fresh start (``start == 0``) into a folder that holds an earlier run's checkpoints or result
    moves that run aside whole; a continued run that still has steps to do moves the result of the
    shorter run it continues aside. Then ``run.json`` (atomically), ``files``, and the logs cut back to
    ``start``."""
    out.mkdir(parents=True, exist_ok=True)
    for tmp in [*out.glob(".tmp_*"), *out.glob(f"{CKPT_DIR}/.tmp_*")]:  # what a kill left half-written
        shutil.rmtree(tmp, ignore_errors=True)
    if start == 0 and (latest_checkpoint(out) is not None or any((out / n).exists() for n in RESULTS)):
        moved = move_aside(out, RUN_FILES)
        print(f"the earlier run in {out} was moved to {moved}")
    elif start < steps:
        move_aside(out, RESULTS)
    _atomic_write(out / RUN_RECORD, json.dumps(record, indent=1) + "\n")
    for name, text in files.items():
        (out / name).write_text(text)
    for log in ("metrics.jsonl", "heldout.jsonl"):
        truncate_log(out / log, start)


def _holds(folder: Path, model: WorldModel, state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``folder`` already holds exactly these weights under this model's configs."""
    from .checkpoint import SAMPLER_NAME, WEIGHTS_NAME

    try:
        arch, sampler = type(model).read_configs(folder / CONFIG_NAME)
        had = load_safetensors(folder / WEIGHTS_NAME) if (folder / SAMPLER_NAME).is_file() else {}
    except (OSError, ValueError):
        return False
    if arch != model.config or sampler != model.sampler or had.keys() != state_dict.keys():
        return False
    return all(had[k].dtype == v.dtype and torch.equal(had[k], v.detach().cpu()) for k, v in state_dict.items())


def write_result(folder: Path, model: WorldModel, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """``model.save_pretrained(folder)`` into a temporary folder, then renamed into place: a kill
    never leaves half of a result. A folder that already holds these weights is left as it is: a
    finished run re-run keeps its files byte for byte (a safetensors header's metadata comes out in
    another order in another process, which would change the files' SHA-256 that later runs record)."""
    weights = dict(state_dict) if state_dict is not None else model.state_dict()
    if folder.is_dir() and _holds(folder, model, weights):
        return folder
    tmp = folder.with_name(f".tmp_{folder.name}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=weights)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
