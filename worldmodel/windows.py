"""Where the world-model trainer's windows come from: in-memory episodes or datasets on disk.

A source gives windows of any length over a fixed set of episodes (``windows``): the trainer asks
for K+1 steps for the model's batches and K+1+``prior_rollout`` state-only steps for the state
prior's. Both kinds give the same items: (L, ...) tensors in the row layout of
``rollouts.episodes`` (observations, ``props``, ``actions``, ``rewards``, ``terminations``,
``partner_actions``, an episode's final observation included with zero action and reward).

- ``EpisodeSource``: in-memory episodes (``worldmodel.data.collect_episodes``,
  ``policies.collect.collect_with_policy``, an episodes ``.safetensors`` file);
- ``DatasetSource``: a ``dreamgym collect`` dataset, streamed through ``rollouts.loader``: whole
  episodes stay in memory up to ``cache_bytes`` and the rest is read from disk window by window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from . import data as D

OBS_KEYS = ("ego_rgb", "ego_depth", "motion", "partner_motion", "occupancy")
PRIOR_KEYS = ("motion", "partner_motion", "props", "actions", "partner_actions")  # what the state prior's batches hold


class WindowSource(Protocol):
    """Windows of a given length over fixed episodes, and what identifies those episodes."""

    name: str

    def windows(self, length: int, keys: Sequence[str] | None = None) -> Dataset: ...

    def fingerprint(self) -> dict[str, Any]: ...


class EpisodeSource:
    """Windows of in-memory episodes: dicts of (T+1, ...) tensors in the row layout."""

    def __init__(self, episodes: Sequence[Mapping[str, torch.Tensor]], name: str = "episodes"):
        self.episodes = [dict(ep) for ep in episodes]
        self.name = name

    def __len__(self) -> int:
        return len(self.episodes)

    def windows(self, length: int, keys: Sequence[str] | None = None) -> D.EpisodeWindows:
        return D.EpisodeWindows(self.episodes, length, keys)

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for ep in self.episodes:
            for k in sorted(ep):
                v = ep[k].detach().cpu().contiguous()
                h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
                h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        return {"kind": "episodes", "episodes": len(self.episodes), "sha256": h.hexdigest()}


class DatasetSource:
    """Windows of one split of ``dreamgym collect`` datasets, read through ``rollouts.loader``.

    ``keys``: default the model's observation keys the dataset has, ``props`` and (for a dataset
    that names its task) ``partner_actions``. ``cache_bytes``: per window set, whole episodes kept
    in memory (None: all). The shards are checked by checksum once, when the source is made.
    """

    def __init__(self, dirs: str | Path | Sequence[str | Path], split: str, cache_bytes: int | None = None, gym: bool = False):
        from dreamgym.rollouts.dataset import Manifest, is_gym
        from dreamgym.rollouts.episodes import index_dataset

        self.dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
        self.split = split
        self.cache_bytes = cache_bytes
        envs = [m.data["env"] for m in map(Manifest.load, self.dirs)]
        wrong = [(d, e) for d, e in zip(self.dirs, envs) if is_gym(e) != gym]
        if wrong and not gym:
            raise ValueError(
                f"{wrong[0][0]} holds episodes of the Gymnasium env {wrong[0][1]['env_id']}; this world model trains on the room's "
                "datasets (collected without env=)"
            )
        if wrong:
            raise ValueError(
                f"{wrong[0][0]} holds the room's episodes; a Gymnasium env's world model trains on `collect env=<id>` datasets"
            )
        if gym and len({(e["env_id"], repr(e.get("env_kwargs"))) for e in envs}) > 1:
            raise ValueError(
                f"data: the datasets hold different envs ({sorted({e['env_id'] for e in envs})}); train one env's model at a time"
            )
        self.index = index_dataset(self.dirs, split, verify="sha256")
        self.name = ", ".join(map(str, self.dirs))
        env = self.index.manifests[0].data["env"]
        self.env = env
        if gym:
            self.keys, self.task = tuple(env["obs_keys"]), ""
            return
        have = set.intersection(*(set(m.data["env"]["obs_keys"]) for m in self.index.manifests))
        self.keys = tuple(k for k in OBS_KEYS if k in have) + ("props",)
        if all(m.data["env"].get("task") for m in self.index.manifests) and {"motion", "partner_motion"} <= have:
            self.keys += ("partner_actions",)
        self.task = str(env.get("task", ""))

    def __len__(self) -> int:
        return len(self.index.episodes)

    def windows(self, length: int, keys: Sequence[str] | None = None) -> Dataset:
        from dreamgym.rollouts.loader import WindowDataset

        ks = self.keys if keys is None else tuple(k for k in keys if k in self.keys or k in ("qpos", "qvel"))
        return WindowDataset(
            self.dirs,
            context=length - 1,
            horizon=1,
            split=self.split,
            keys=ks,
            verify="size",
            cache_bytes=self.cache_bytes,
            include_final=True,
        )

    def fingerprint(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for m in self.index.manifests:
            for s in m.shards:
                h.update(f"{s['file']}:{s['sha256']}\n".encode())
        refs = self.index.episodes
        return {"kind": "dataset", "split": self.split, "episodes": len(refs), "steps": sum(r.steps for r in refs), "sha256": h.hexdigest()}


# ----------------------------------------------------------------------------- episodes files
def save_episodes(episodes: list[dict[str, torch.Tensor]], path: str | Path) -> Path:
    """Store in-memory episodes (``data.collect_episodes``) as one safetensors file."""
    from safetensors.torch import save_file

    flat = {f"{i:06d}.{k}": v.contiguous() for i, ep in enumerate(episodes) for k, v in ep.items()}
    save_file(flat, str(path), metadata={"dreamgym": "episodes", "count": str(len(episodes))})
    return Path(path)


def _episodes_from_safetensors(path: Path) -> list[dict[str, torch.Tensor]]:
    from .model import load_safetensors

    flat = load_safetensors(path)
    eps: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        i, key = k.split(".", 1)
        eps.setdefault(i, {})[key] = v
    return [eps[i] for i in sorted(eps)]


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"training data not found: {p}")
    if p.is_dir() and not (p / "manifest.json").exists():
        raise FileNotFoundError(f"{p} is not a dreamgym dataset (no manifest.json); make one with `dreamgym collect out={p}`")
    return p


def window_source(
    path: str | Path | Sequence[str | Path], split: str | None, cache_bytes: int | None = None, gym: bool = False
) -> WindowSource | None:
    """The windows of a dataset directory or a list of them (its ``split``; None: all) or of an episodes
    ``.safetensors`` file (which holds no split: ``train`` and None take it all, ``heldout``
    nothing, None returned). None also when the split has no episode. ``gym``: the datasets are
    ``collect env=<id>`` ones (of one env), read with their own observation keys."""
    if isinstance(path, (list, tuple)) or hasattr(path, "__len__") and not isinstance(path, (str, Path)):
        dirs = [_check_path(str(d)) for d in path]
        if not dirs:
            raise ValueError("data=[]: give at least one dataset directory")
        if any(d.is_file() for d in dirs):
            raise ValueError(f"data: a list holds dataset directories only; {[str(d) for d in dirs if d.is_file()]} are files")
        src = DatasetSource(dirs, split or "all", cache_bytes, gym)
        return src if len(src) else None
    p = _check_path(path)
    if p.is_file():
        if gym:
            raise ValueError(f"{p}: a Gymnasium env's world model trains on a `collect env=<id>` dataset directory, not an episodes file")
        return EpisodeSource(_episodes_from_safetensors(p), name=str(p)) if split in ("train", None) else None
    src = DatasetSource(p, split or "all", cache_bytes, gym)
    return src if len(src) else None


def load_episodes(path: str | Path, split: str | None, keys: Sequence[str] | None = None) -> list[dict[str, torch.Tensor]]:
    """Whole episodes, in memory, from a dataset directory (its ``split``; None: all) or an
    episodes ``.safetensors`` file (``train`` and None take it all, ``heldout`` nothing), in
    the row layout. For small datasets: training streams windows instead (``window_source``)."""
    from dreamgym.rollouts.episodes import EpisodeReader

    p = _check_path(path)
    if p.is_file():
        return _episodes_from_safetensors(p) if split in ("train", None) else []
    src = DatasetSource(p, split or "all")
    reader = EpisodeReader(src.index.episodes, src.keys if keys is None else keys)
    out = []
    for e, ref in enumerate(src.index.episodes):
        rows = {k: torch.from_numpy(v) for k, v in reader.episode(e).items() if k != "truncations"}
        rows["instruction"] = torch.full((ref.steps + 1,), ref.instruction, dtype=torch.long)
        out.append(rows)
    reader.close()
    return out


def check_windows(item: Mapping[str, torch.Tensor], cfg: Any, noise: Any, source: str) -> None:
    """Raise naming ``source`` when a window lacks a modality the model config ``cfg`` trains with
    (``noise``: a branch skipped on every step needs no data) or has the wrong shape."""
    need = ["motion", "partner_motion", "props", "actions", "rewards", "terminations"]
    if "ego" in cfg.modalities and float(noise.p_skip_frames) < 1.0:
        need += ["ego_rgb"] + (["ego_depth"] if cfg.ego_depth else [])
    if "occupancy" in cfg.modalities and float(noise.p_skip_occupancy) < 1.0:
        need.append("occupancy")
    if cfg.partner_actions:
        need.append("partner_actions")
    have = set(item) | ({"props"} if "qpos" in item else set())
    missing = [k for k in need if k not in have]
    if missing:
        held = [k for k in OBS_KEYS if k in have]
        collect = [k for k in OBS_KEYS if k in have or k in missing]
        fix = f"collect with obs_keys=[{','.join(collect)}]"
        without = _config_without(missing, cfg)
        if without:
            fix += f", or train a model that needs none of them: {' '.join(without)}"
        raise ValueError(
            f"{source}: the data lack {missing}, which this world model needs (modalities {list(cfg.modalities)}); "
            f"the data hold {held}; {fix}"
        )
    if "ego_rgb" in need and tuple(item["ego_rgb"].shape[1:]) != (3, cfg.data_resolution, cfg.data_resolution):
        raise ValueError(
            f"{source}: ego_rgb frames are {tuple(item['ego_rgb'].shape[1:])}, expected (3, {cfg.data_resolution}, {cfg.data_resolution})"
        )
    if "occupancy" in need and list(item["occupancy"].shape[1:]) != list(cfg.occupancy_shape):
        raise ValueError(f"{source}: occupancy is {tuple(item['occupancy'].shape[1:])}, expected {tuple(cfg.occupancy_shape)}")


def _config_without(missing: Sequence[str], cfg: Any) -> list[str]:
    """``train-wm`` overrides under which a model like ``cfg`` needs none of ``missing`` (empty
    when one of them, e.g. ``motion``, no model can do without)."""
    if set(missing) - {"ego_rgb", "ego_depth", "occupancy", "partner_actions"}:
        return []
    mods = [m for m in cfg.modalities if not (m == "ego" and "ego_rgb" in missing) and not (m == "occupancy" and "occupancy" in missing)]
    out = [f"worldmodel.modalities=[{','.join(mods)}]"] if mods != list(cfg.modalities) else []
    if "ego_depth" in missing and "ego_rgb" not in missing:
        out.append("worldmodel.ego_depth=false")
    if cfg.ego_warp and ("ego_rgb" in missing or "ego_depth" in missing):
        out.append("worldmodel.ego_warp=false")
    if cfg.occupancy_warp and "occupancy" in missing:
        out.append("worldmodel.occupancy_warp=false")
    if getattr(cfg, "ego_render", False) and ({"ego_rgb", "ego_depth", "occupancy"} & set(missing)):
        out.append("worldmodel.ego_render=false")  # it draws the grid into the frames: it needs both
    if "partner_actions" in missing:
        out.append("worldmodel.partner_actions=false")
    return out
