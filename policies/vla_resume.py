"""What a ``train-vla`` run keeps so that a killed run continues with the same command.

``<out>/resume/`` holds, each written atomically (a temporary file renamed into place, so a
half-written one never loads):

- ``config.json``: the run's settings; a re-run with others into the same ``out`` is refused,
  listing the differences (``num_threads`` may change);
- ``bc.safetensors`` + ``bc.json``: after behaviour cloning, the BC samples (the dream stage's
  anchor), the rooms played, the rounds' history, the simulator steps and both random generators;
- ``dream.safetensors`` + ``dream.json``: after every dream iteration, the policy's and the
  optimiser's state, the per-task statistics so far (dreamed transitions, real start steps), the
  start rooms and the random generators (nothing is unpickled).

A re-run loads the BC stage instead of collecting again and continues the dream stage after its
last finished iteration. The dream env's own start draws are not restored, so a continued run
dreams other (equally distributed) starts than an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamgym.worldmodel.train_state import record_differences

from .weights import atomic_write_json

MAY_CHANGE = ("num_threads",)


class ResumeError(ValueError):
    """A ``train-vla`` run in ``out`` that this command cannot continue."""


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


def check_config(out: Path, cfg: dict[str, Any]) -> bool:
    """Record the run's settings; True when ``out`` holds an earlier run of the same ones."""
    folder = out / "resume"
    now = {k: v for k, v in cfg.items() if k not in MAY_CHANGE and k != "out"}
    path = folder / "config.json"
    if path.exists():
        had = {k: v for k, v in json.loads(path.read_text()).items() if k not in MAY_CHANGE and k != "out"}
        diff = record_differences(had, now)
        if diff:
            raise ResumeError(
                f"train-vla: {out} holds a run with other settings ({'; '.join(diff)}); "
                "re-run with that run's settings to continue it, or choose another out="
            )
        return True
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, now)
    return False


def _gen_state(rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch": gen.get_state().tolist()}


def _set_gen_state(state: dict[str, Any], rng: np.random.Generator, gen: torch.Generator) -> None:
    rng.bit_generator.state = state["numpy"]
    gen.set_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save_bc(out: Path, buffer, rooms: set[int], history: list, bc_steps: int, rng, gen) -> None:
    """The BC stage's result (see the module docstring)."""
    from safetensors.torch import save_file

    folder = out / "resume"
    folder.mkdir(parents=True, exist_ok=True)
    rgb, motion, text, label, attributes, keypoints = buffer.tensors()
    tmp = folder / ".bc.safetensors.tmp"
    save_file({"ego_rgb": rgb, "motion": motion, "label": label, "attributes": attributes, "keypoints": keypoints}, str(tmp))
    _replace(tmp, folder / "bc.safetensors")
    meta = {"text": text, "rooms": sorted(rooms), "history": history, "bc_steps": int(bc_steps), "generators": _gen_state(rng, gen)}
    atomic_write_json(folder / "bc.json", meta)  # written last: it marks the stage as done


def load_bc(out: Path, buffer_cls, rng, gen) -> tuple[Any, set[int], list, int] | None:
    """The stored BC stage (buffer, rooms, history, simulator steps), or None if there is none."""
    from safetensors.torch import load_file

    folder = out / "resume"
    if not (folder / "bc.json").exists():
        return None
    meta = json.loads((folder / "bc.json").read_text())
    t = load_file(str(folder / "bc.safetensors"))
    if t["ego_rgb"].shape[0] != len(meta["text"]):
        raise ResumeError(f"train-vla: {folder}/bc.safetensors holds {t['ego_rgb'].shape[0]} samples, bc.json {len(meta['text'])}")
    buffer = buffer_cls()
    buffer.add(t["ego_rgb"], t["motion"], meta["text"], t["label"], t["attributes"], t["keypoints"])
    _set_gen_state(meta["generators"], rng, gen)
    return buffer, set(meta["rooms"]), meta["history"], int(meta["bc_steps"])


def save_dream(out: Path, iteration: int, policy, opt, stats: dict, rooms: set[int], rng, gen) -> None:
    """The dream stage after ``iteration`` (0-based) finished: ``dream.safetensors`` (the policy's
    weights and the optimiser's moments), then ``dream.json`` (which names the iteration and marks
    the pair as complete)."""
    from safetensors.torch import save_file

    folder = out / "resume"
    sd = opt.state_dict()
    tensors = {f"policy.{k}": v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().contiguous().cpu()
    tmp = folder / ".dream.safetensors.tmp"
    save_file(tensors, str(tmp))
    _replace(tmp, folder / "dream.safetensors")
    meta = {
        "iteration": int(iteration),
        "stats": stats,
        "rooms": sorted(rooms),
        "generators": _gen_state(rng, gen),
        "param_groups": sd["param_groups"],
        "weights_sha256": _sha256(folder / "dream.safetensors"),
    }
    atomic_write_json(folder / "dream.json", meta)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_dream(out: Path, policy, opt, rng, gen) -> tuple[int, dict, set[int]] | None:
    """Restore the dream stage's last checkpoint into ``policy`` and ``opt``: (next iteration,
    statistics so far, start rooms), or None if no iteration had finished."""
    from safetensors.torch import load_file

    folder = out / "resume"
    if not (folder / "dream.json").exists():
        return None
    meta = json.loads((folder / "dream.json").read_text())
    if _sha256(folder / "dream.safetensors") != meta["weights_sha256"]:  # killed between the two writes
        raise ResumeError(
            f"train-vla: {folder}/dream.safetensors is not the one dream.json describes (a run killed while writing it); "
            f"delete {folder}/dream.json to redo the dream stage from its start"
        )
    t = load_file(str(folder / "dream.safetensors"))
    policy.load_state_dict({k[len("policy.") :]: v for k, v in t.items() if k.startswith("policy.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    _set_gen_state(meta["generators"], rng, gen)
    return int(meta["iteration"]) + 1, meta["stats"], set(meta["rooms"])
