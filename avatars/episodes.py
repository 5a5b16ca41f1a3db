"""Where episodes to view or export come from: a dataset, a world-model run, or a viewer bundle.

``dreamgym export`` and ``dreamgym view`` both take a path and decide what it is:

- a **dataset** (``manifest.json``, written by ``dreamgym collect``): recorded episodes;
- an **eval-wm run** (``run_info.json``, written by ``dreamgym eval-wm``): its dataset and its
  checkpoint, so real and dreamed episodes;
- a **checkpoint** (``config.json`` + ``model.safetensors``): needs a dataset beside it (``data=``);
- a **viewer bundle** (``viewer.json``, written by ``avatars.viewer.bundle``): real and dreamed
  sequences already computed.

Episodes of a dataset are named ``episode_<id>`` with the manifest's episode id, as
``dreamgym video episode=<id>`` and ``dreamgym dataset info`` count them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from dreamgym.rollouts.episodes import EpisodeRef

SPLITS = ("all", "train", "heldout")
KINDS = ("dataset", "run", "checkpoint", "bundle")
BUNDLE_INDEX = "viewer.json"


@dataclass(frozen=True)
class Source:
    """What a path given to ``export``/``view`` holds. ``data`` and ``checkpoint`` are None when
    the source does not name one."""

    kind: str  # one of KINDS
    path: Path
    data: Path | None = None
    checkpoint: Path | None = None


def detect_source(path: str | Path) -> Source:
    """Classify ``path`` (see the module docstring); a clear error when it is none of them."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; give a dataset (dreamgym collect), an eval-wm run or a viewer bundle")
    if p.is_dir() and (p / BUNDLE_INDEX).is_file():
        return Source("bundle", p)
    if p.is_dir() and (p / "manifest.json").is_file():
        return Source("dataset", p, data=p)
    if p.is_dir() and (p / "run_info.json").is_file():
        try:
            info = json.loads((p / "run_info.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p / 'run_info.json'} is not valid JSON ({e})") from None
        data = info.get("data")
        ckpt = info.get("checkpoint")
        return Source("run", p, data=_run_path(p, data), checkpoint=_run_path(p, ckpt))
    if p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return Source("checkpoint", p, checkpoint=p)
    if p.is_file() and p.suffix == ".safetensors":
        return Source("checkpoint", p, checkpoint=p)
    raise ValueError(
        f"{p} is not a dataset (no manifest.json), an eval-wm run (no run_info.json), a world-model "
        f"checkpoint (no config.json + model.safetensors) or a viewer bundle (no {BUNDLE_INDEX})"
    )


def _run_path(run: Path, value: Any) -> Path | None:
    """A path recorded in a run's run_info.json: absolute, or relative to where eval-wm ran (tried
    as given, then relative to the run folder)."""
    if not value or str(value).startswith("<"):  # "<model>": evaluated from Python, no path
        return None
    p = Path(str(value)).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return run / p


@dataclass
class DatasetEpisode:
    """One recorded episode of a dataset, with what the viewer and the exports need."""

    name: str  # episode_<id>
    id: int
    attrs: dict[str, Any]  # the episode group's attributes (task, room_seed, instruction_text, ...)
    obs: dict[str, np.ndarray]  # key -> (T+1, ...), plus props (T+1, 4, 3) when qpos was read
    actions: np.ndarray  # (T, 6)
    qpos: np.ndarray  # (T+1, nq)

    @property
    def steps(self) -> int:
        return int(self.actions.shape[0])


def episode_name(episode_id: int) -> str:
    return f"episode_{int(episode_id):06d}"


def dataset_episode_entries(
    root: str | Path, split: str = "all", episodes: Sequence[int] | None = None, max_episodes: int | None = None
) -> list[EpisodeRef]:
    """The chosen episodes (``rollouts.episodes.EpisodeRef``: shard, group, id, steps, room seed,
    ...), in collection order.

    ``split``: all, train or heldout (the manifest's split of each room); ``episodes``: ids to
    keep (None: all); ``max_episodes``: at most this many (None: no limit). Checks every shard
    used (size and HDF5 structure) and raises ``CorruptShardError`` naming a bad one.
    """
    from dreamgym.rollouts.episodes import index_dataset

    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return index_dataset(root, split, verify="size", ids=episodes, max_episodes=max_episodes).episodes


def iter_dataset_episodes(
    root: str | Path,
    keys: Sequence[str] | None = None,
    split: str = "all",
    episodes: Sequence[int] | None = None,
    max_episodes: int | None = None,
    with_props: bool = False,
) -> Iterator[DatasetEpisode]:
    """Read the chosen episodes of a dataset one at a time (observation ``keys``: None for all;
    the derived ``partner_actions`` may be asked for too).

    ``with_props`` adds ``obs["props"]`` (T+1, 4, 3), prop positions read from ``qpos``.
    """
    from dreamgym.rollouts.dataset import Manifest
    from dreamgym.rollouts.episodes import EpisodeReader

    refs = dataset_episode_entries(root, split, episodes, max_episodes)
    names = list(Manifest.load(root).data["env"]["obs_keys"]) if keys is None else list(keys)
    reader = EpisodeReader(refs, [*names, "qpos", *(["props"] if with_props else [])])
    try:
        for i, ref in enumerate(refs):
            rows = reader.episode(i)
            obs = {k: rows[k] for k in (*names, *(["props"] if with_props else []))}
            yield DatasetEpisode(episode_name(ref.id), ref.id, reader.attrs(i), obs, rows["actions"][: ref.steps], rows["qpos"])
    finally:
        reader.close()


def dataset_fps(root: str | Path) -> float:
    """Frames per second of a dataset's observations (its env's control rate)."""
    from dreamgym.rollouts.dataset import Manifest

    return 1.0 / float(Manifest.load(root).data["env"]["control_dt"])
