"""``dreamgym export data=<dataset | eval-wm run | viewer bundle> out=<dir>``: motion files of every episode.

For each episode and each side (agent, partner) it writes the three exports of ``avatars.exports``
(AMASS-style SMPL-X ``.npz``, ``.bvh``, ``.glb``) and, with ``smplx_model_dir``, the SMPL-X mesh
sequence (``avatars.mesh``)::

    <out>/<episode>/agent.npz  agent.bvh  agent.glb  [agent_mesh.npz]
    <out>/<episode>/partner.npz ...
    <out>/<episode>/dream_agent.npz ...          (a run or bundle with a dream: the dreamed motion)
    <out>/export.json                            what was written, from what, at which frame rate

A dataset's episodes are read one at a time (motion only), so a large dataset exports in constant
memory. From an eval-wm run (or a dataset with ``checkpoint=<dir>``) the episodes are first
dreamed into a viewer bundle (``avatars.viewer.bundle``; a run keeps it in ``<run>/viewer``).
A dreamed sequence starts with the K real context steps (``dream_start`` in export.json says
where the dream begins), so it lines up frame by frame with the real one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dreamgym.rollouts.dataset import require_room

from .episodes import dataset_episode_entries, dataset_fps, detect_source, iter_dataset_episodes
from .exports import atomic_write_bytes, write_amass_npz, write_bvh, write_glb
from .smplx_params import motion_to_smplx

SIDES = {"agent": "agent_motion", "partner": "partner_motion"}
STREAMS = ("real", "dream")


def export_motion(
    motion: np.ndarray,
    fps: float,
    folder: Path,
    stem: str,
    smplx_model_dir: str | None = None,
    gender: str = "neutral",
    bvh_units_per_metre: float = 100.0,
) -> dict[str, str]:
    """Write ``{stem}.npz/.bvh/.glb`` (and ``{stem}_mesh.npz`` with a SMPL-X model) of a motion
    sequence (T, 227) into ``folder``; the written paths by format."""
    params = motion_to_smplx(motion)
    written = {
        "npz": write_amass_npz(folder / f"{stem}.npz", params, fps),
        "bvh": write_bvh(folder / f"{stem}.bvh", params, fps, bvh_units_per_metre),
        "glb": write_glb(folder / f"{stem}.glb", params, fps),
    }
    if smplx_model_dir:
        from .mesh import smplx_meshes, write_mesh_npz

        written["mesh"] = write_mesh_npz(folder / f"{stem}_mesh.npz", smplx_meshes(params, smplx_model_dir, gender=gender), fps)
    return {k: str(v) for k, v in written.items()}


# One item to export: episode name, stream, side, a function giving the motion (T, 227), dream start.
Item = tuple[str, str, str, Callable[[], np.ndarray], "int | None"]


def _dataset_items(root: Path, split: str, episodes: list[int] | None, max_episodes: int | None) -> tuple[int, Iterator[Item]]:
    entries = dataset_episode_entries(root, split, episodes, max_episodes)

    def items() -> Iterator[Item]:
        for ep in iter_dataset_episodes(root, ["motion", "partner_motion"], split, episodes, max_episodes):
            for side in SIDES:
                key = "motion" if side == "agent" else "partner_motion"
                yield ep.name, "real", side, (lambda m=ep.obs[key]: m), None

    return len(entries) * len(SIDES), items()


def _bundle_items(bundle_path: Path, streams: list[str]) -> tuple[float, int, Iterator[Item], dict[str, Any] | None]:
    """fps, count, the items of ``streams`` and the sampler the bundle's dream was sampled with (None: no dream exported)."""
    from .viewer.bundle import Bundle

    bundle = Bundle.load(bundle_path)
    todo = [(e, s) for e in bundle.episodes for s in streams if s in e["streams"]]

    def items() -> Iterator[Item]:
        for e, s in todo:
            for side, key in SIDES.items():
                yield e["name"], s, side, (lambda e=e, s=s, key=key: bundle.array(e, s, key)), e["streams"][s].get("dream_start")

    dreamed = any(s == "dream" for _, s in todo)
    return bundle.fps, len(todo) * len(SIDES), items(), bundle.index.get("sampler") if dreamed else None


def run(cfg) -> int:
    """``dreamgym export``: see the module docstring and ``configs/export.yaml``."""
    import torch
    from tqdm import tqdm

    from .viewer.bundle import remove_temporary, resolve_bundle

    source = cfg.get("data") or cfg.get("path")
    if not source or not cfg.get("out"):
        raise SystemExit(
            "dreamgym export: give data=<dataset, eval-wm run or viewer bundle> and out=<folder>, "
            "e.g. `dreamgym export data=data/reach out=exports/reach`"
        )
    torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out)
    streams = [s for s in cfg.streams if s in STREAMS]
    if not streams:
        raise SystemExit(f"dreamgym export: streams must name some of {list(STREAMS)}, got {list(cfg.streams)}")
    episodes = [int(i) for i in cfg.episodes] if cfg.get("episodes") is not None else None
    max_episodes = int(cfg.max_episodes) if cfg.get("max_episodes") is not None else None
    resolved = None
    try:
        src = detect_source(source)
        if src.kind == "dataset":
            require_room(src.path, "export")
        if src.kind == "checkpoint":
            raise ValueError(
                f"{src.path} is a world-model checkpoint; to export dreams of a dataset made with it, "
                f"give data=<dataset dir> checkpoint={src.path}"
            )
        split = cfg.split if cfg.split != "auto" else ("heldout" if src.kind == "run" else "all")
        dream_wanted = "dream" in streams and (src.kind in ("run", "checkpoint") or cfg.checkpoint not in (None, "auto", "none"))
        if src.kind in ("dataset", "run") and not dream_wanted:  # recorded motion only: straight from the dataset
            if src.data is None or not (src.data / "manifest.json").is_file():
                raise FileNotFoundError(f"run {src.path} was evaluated on {src.data}, which is not a dataset here")
            fps = dataset_fps(src.data)
            total, items = _dataset_items(src.data, split, episodes, max_episodes)
            described_source = {"kind": src.kind, "path": str(src.path), "data": str(src.data)}
            sampler = None  # recorded motion only
        else:
            if src.kind == "bundle":
                resolved_path = src.path
            else:
                resolved = resolve_bundle(
                    src.path,
                    data=None,
                    checkpoint=cfg.checkpoint if "dream" in streams else "none",
                    split=split,
                    episodes=episodes,
                    max_episodes=max_episodes,
                    dream_steps=cfg.get("dream_steps"),
                    num_steps=cfg.get("num_steps"),  # None: the world model's own sampler
                    init_noise=cfg.get("init_noise"),
                    seed=int(cfg.seed),
                    device=cfg.device,
                    dataset_default_dream=False,
                    progress=bool(cfg.progress),
                )
                resolved_path = resolved.path
            fps, total, items, sampler = _bundle_items(resolved_path, streams)
            described_source = {"kind": src.kind, "path": str(src.path), "bundle": str(resolved_path)}
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"dreamgym export: {e}") from None

    written: dict[str, dict[str, Any]] = {}
    try:
        bar = tqdm(items, total=total, desc="export", unit="sequence", disable=not cfg.progress)
        for name, stream, side, motion, dream_start in bar:
            bar.set_postfix_str(f"{name} {stream} {side}", refresh=False)
            stem = side if stream == "real" else f"dream_{side}"
            try:
                files = export_motion(
                    motion(), fps, out / name, stem, cfg.get("smplx_model_dir"), cfg.gender, float(cfg.bvh_units_per_metre)
                )
            except FileNotFoundError as e:  # no SMPL-X model files where smplx_model_dir points
                raise SystemExit(f"dreamgym export: {e}") from None
            except ValueError as e:
                raise SystemExit(f"dreamgym export: {name} {stream} {side}: {e}") from None
            entry = written.setdefault(name, {})
            entry[stem] = {"files": {k: os.path.relpath(v, out) for k, v in files.items()}, "stream": stream, "side": side}
            if dream_start is not None:
                entry[stem]["dream_start"] = int(dream_start)
    finally:
        if resolved is not None:
            remove_temporary(resolved)
    if not written:
        raise SystemExit(f"dreamgym export: nothing to export from {source} (no {split} episodes or streams {streams})")
    index = {
        "source": described_source,
        "fps": fps,
        "frame": "SMPL-X (x left, y up, z forward), metres",
        "bvh_units_per_metre": float(cfg.bvh_units_per_metre),
        "sampler": sampler,  # what the exported dream was sampled with (None: no dream)
        "episodes": written,
    }
    atomic_write_bytes(out / "export.json", json.dumps(index, indent=1).encode())
    count = sum(len(v) for v in written.values())
    print(f"dreamgym export: {count} sequences of {len(written)} episodes in {out}")
    return 0
