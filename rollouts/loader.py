"""Training windows from rollout datasets: a torch ``Dataset`` and ``DataLoader``.

A window is ``context + horizon`` consecutive steps of one episode (windows never cross an
episode's end): every requested observation key with a leading time axis, the action taken
after each of those observations, and its reward, termination and truncation. Episodes are split
into train and held-out by room seed (``dataset.room_split``), so held-out windows come from rooms
no training window shows.

Speed: the index of windows comes from the manifests alone; each worker process keeps its own
HDF5 handles open and reads a window as one contiguous slice per key. ``in_memory=True`` loads the
selected episodes once, before the workers fork, and the workers then share them.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .dataset import STATE_KEYS, STEP_KEYS, CorruptShardError, Manifest, check_shard, room_split

SPLITS = ("train", "heldout", "all")
FLAG_KEYS = ("terminations", "truncations")  # bool: HDF5 converts them slowly, so whole episodes are cached
OPEN_EPISODES = 128  # per worker: episodes whose HDF5 datasets stay open (an LRU)
CHUNK_CACHE_BYTES = 1 << 18  # HDF5 chunk cache per open dataset
# Keys computed from the recording rather than stored: ``partner_actions`` (T, 6), the partner's
# controller commands, replayed from the room's script and the two bodies' motions
# (``envs.partner.replay_actions``); it needs ``motion`` and ``partner_motion``.
DERIVED_KEYS = ("partner_actions",)


def _as_dirs(dirs: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(dirs, (str, Path)):
        return [Path(dirs)]
    return [Path(d) for d in dirs]


class WindowDataset(Dataset):
    """Windows of ``context + horizon`` steps from one or more dataset directories.

    Args:
        dirs: dataset directory or directories (written by ``dreamgym collect``).
        context, horizon: window length is ``context + horizon`` (K + H) steps.
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        keys: observation keys to read (default: all the datasets have); ``"qpos"`` and ``"qvel"``
            may be added for the physics state.
        stride: steps between the starts of consecutive windows of an episode.
        heldout_fraction: default the largest of the manifests' (held-out sets are nested, so a
            room held out in any of the datasets is held out everywhere).
        skip_bad: leave out shards that fail the check (with a warning naming them) instead of
            raising ``CorruptShardError``.
        verify: ``"sha256"`` recomputes each shard's checksum when the dataset is opened;
            ``"size"`` only checks sizes and HDF5 structure (for very large datasets).
        in_memory: read the selected episodes into RAM up front.

    Item ``i`` is a dict of tensors: each observation key ``(K+H, ...)`` in its stored dtype;
    ``actions`` (K+H, 6), action t taken after observation t; ``rewards``, ``terminations``,
    ``truncations`` (K+H,), those of action t; ``instruction``, ``room_seed``, ``episode`` (index
    into ``self.episodes``), ``t0`` (the window's first step in its episode) and ``behaviour``
    (index into ``collect.BEHAVIOURS``) as scalars. The final observation of an episode (index T)
    follows its last action and is in no window.
    """

    def __init__(
        self,
        dirs: str | Path | Iterable[str | Path],
        context: int = 8,
        horizon: int = 8,
        split: str = "train",
        keys: Sequence[str] | None = None,
        stride: int = 1,
        heldout_fraction: float | None = None,
        skip_bad: bool = False,
        verify: str = "sha256",
        in_memory: bool = False,
    ):
        from .collect import BEHAVIOURS

        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if int(context) < 0 or int(horizon) < 0 or int(context) + int(horizon) < 1:
            raise ValueError(f"context and horizon must be >= 0 with a positive sum, got {context}, {horizon}")
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if verify not in ("sha256", "size"):
            raise ValueError(f"verify must be 'sha256' or 'size', got {verify!r}")
        self.context, self.horizon, self.length = int(context), int(horizon), int(context) + int(horizon)
        self.split = split
        self.dirs = _as_dirs(dirs)
        if not self.dirs:
            raise ValueError("no dataset directories given")
        manifests = [Manifest.load(d) for d in self.dirs]
        self.heldout_fraction = max(m.heldout_fraction for m in manifests) if heldout_fraction is None else float(heldout_fraction)

        available = set.intersection(*(set(m.data["env"]["obs_keys"]) for m in manifests))
        self.keys = (
            tuple(sorted(available, key=lambda k: list(manifests[0].data["env"]["obs_keys"]).index(k))) if keys is None else tuple(keys)
        )
        unknown = [k for k in self.keys if k not in available and k not in STATE_KEYS and k not in DERIVED_KEYS]
        if unknown:
            raise ValueError(f"keys {unknown} are not in every dataset; available: {sorted(available) + list(STATE_KEYS + DERIVED_KEYS)}")
        self.derived = tuple(k for k in self.keys if k in DERIVED_KEYS)
        if self.derived:
            lacking = [k for k in ("motion", "partner_motion") if k not in available]
            if lacking:
                raise ValueError(
                    f"{list(self.derived)} are computed from 'motion' and 'partner_motion', which the datasets lack ({lacking})"
                )
            self.keys = tuple(k for k in self.keys if k not in DERIVED_KEYS)
            self.keys += tuple(k for k in ("motion", "partner_motion") if k not in self.keys)
        self._tasks = [str(m.data["env"].get("task", "")) for m in manifests]
        self._check_shapes(manifests)
        self.obs_keys = tuple(k for k in self.keys if k not in STATE_KEYS and k != "instruction")
        self.state_keys = tuple(k for k in self.keys if k in STATE_KEYS)

        self.skipped: dict[str, str] = {}
        shards: list[str] = []
        rows: list[tuple[int, str, int, int, int, int]] = []  # shard, group, steps, room_seed, instruction, behaviour
        task_of: list[str] = []  # per row
        for di, (root, m) in enumerate(zip(self.dirs, manifests)):
            for entry in m.shards:
                why = check_shard(root, entry, checksum=verify == "sha256")
                path = str(root / entry["file"])
                if why is not None:
                    if not skip_bad:
                        raise CorruptShardError(path, why)
                    warnings.warn(f"skipping shard {path}: {why}", stacklevel=2)
                    self.skipped[path] = why
                    continue
                shards.append(path)
                for e in entry["episodes"]:
                    side = room_split(e["room_seed"], self.heldout_fraction)
                    if split != "all" and side != split:
                        continue
                    b = BEHAVIOURS.index(e["behaviour"]) if e.get("behaviour") in BEHAVIOURS else -1
                    rows.append((len(shards) - 1, e["group"], int(e["steps"]), int(e["room_seed"]), int(e.get("instruction", -1)), b))
                    task_of.append(self._tasks[di])
        self.shards = shards
        self.episodes = [
            {"shard": shards[s], "group": g, "steps": T, "room_seed": seed, "instruction": ins, "behaviour": b, "task": task}
            for (s, g, T, seed, ins, b), task in zip(rows, task_of)
        ]
        self._scripts: dict[int, dict[str, np.ndarray]] = {}
        steps = np.array([r[2] for r in rows], np.int64)
        counts = np.maximum(0, (steps - self.length) // int(stride) + 1)
        self._ep = np.repeat(np.arange(len(rows)), counts).astype(np.int64)
        first = np.cumsum(counts) - counts
        self._t0 = ((np.arange(len(self._ep)) - np.repeat(first, counts)) * int(stride)).astype(np.int64)
        self._scalars = np.array([(r[3], r[4], r[5]) for r in rows], np.int64).reshape(-1, 3)
        self._handles: dict[str, Any] = {}
        self._open: OrderedDict[int, list] = OrderedDict()
        self._flags: dict[int, dict[str, np.ndarray]] = {}
        self._pid = os.getpid()
        self._memory: list[dict[str, np.ndarray]] | None = None
        if in_memory:
            self._memory = [self._read_episode(i) for i in range(len(self.episodes))]

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self) -> int:
        return len(self._ep)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        e, t0 = int(self._ep[i]), int(self._t0[i])
        sl = slice(t0, t0 + self.length)
        if self._memory is not None:
            arrays = {k: v[sl] for k, v in self._memory[e].items()}
        else:
            arrays = self._read(e, sl)
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        if "partner_actions" in self.derived:
            out["partner_actions"] = self.partner_actions(e, t0, out["motion"], out["partner_motion"])
        seed, instruction, behaviour = self._scalars[e]
        out["instruction"] = torch.tensor(instruction)
        out["room_seed"] = torch.tensor(seed)
        out["behaviour"] = torch.tensor(behaviour)
        out["episode"] = torch.tensor(e)
        out["t0"] = torch.tensor(t0)
        return out

    # ------------------------------------------------------------------ helpers
    def partner_actions(self, e: int, t0: int, motion, partner_motion) -> torch.Tensor:
        """The partner's commands (L, 6) at steps ``t0 ..`` of episode ``e`` from its motions (L, 227)."""
        from dreamgym.envs import partner as P

        script = self._scripts.get(e)
        if script is None:
            ep = self.episodes[e]
            if not ep["task"]:
                raise ValueError(f"{ep['shard']}: the manifest names no task, so the partner's script cannot be replayed")
            script = self._scripts[e] = P.room_script(ep["task"], ep["room_seed"])
        steps = np.arange(t0, t0 + len(motion))
        return P.replay_actions(script, steps, torch.as_tensor(motion), torch.as_tensor(partner_motion))

    @property
    def room_seeds(self) -> set[int]:
        """Room seeds of the episodes in this split."""
        return {ep["room_seed"] for ep in self.episodes}

    def window_bounds(self) -> np.ndarray:
        """(N, 3) int64: episode index, first step and end step (exclusive) of every window."""
        return np.stack((self._ep, self._t0, self._t0 + self.length), 1)

    def _check_shapes(self, manifests: list[Manifest]) -> None:
        ref = manifests[0].data["env"]
        for d, m in zip(self.dirs[1:], manifests[1:]):
            for k in self.keys:
                if k in STATE_KEYS:
                    n = "nq" if k == "qpos" else "nv"
                    if m.data["env"][n] != ref[n]:
                        raise ValueError(f"{k} has {m.data['env'][n]} entries in {d} but {ref[n]} in {self.dirs[0]}")
                elif m.data["env"]["observation_space"][k] != ref["observation_space"][k]:
                    raise ValueError(
                        f"observation {k!r} is {m.data['env']['observation_space'][k]} in {d} but "
                        f"{ref['observation_space'][k]} in {self.dirs[0]}; load datasets of one resolution together"
                    )

    def _file(self, path: str):
        import h5py

        f = self._handles.get(path)
        if f is None:
            f = self._handles[path] = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        return f

    def _datasets(self, e: int):
        """The open HDF5 datasets of episode ``e`` (looking a dataset up costs more than reading it)."""
        if self._pid != os.getpid():  # a forked worker: open its own handles, leave the parent's alone
            self._handles, self._open, self._flags, self._pid = {}, OrderedDict(), {}, os.getpid()
        found = self._open.get(e)
        if found is None:
            ep = self.episodes[e]
            g = self._file(ep["shard"])[ep["group"]]
            obs = g["observations"]
            found = [(k, obs[k]) for k in self.obs_keys] + [(k, g[k]) for k in self.state_keys + STEP_KEYS if k not in FLAG_KEYS]
            if e not in self._flags:
                self._flags[e] = {k: g[k][()] for k in FLAG_KEYS}
            self._open[e] = found
            if len(self._open) > OPEN_EPISODES:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(e)
        return found

    def _read(self, e: int, sl: slice) -> dict[str, np.ndarray]:
        try:
            out = {k: ds[sl] for k, ds in self._datasets(e)}
            out.update({k: v[sl] for k, v in self._flags[e].items()})
            return out
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise CorruptShardError(self.episodes[e]["shard"], f"reading {self.episodes[e]['group']} failed ({err})") from None

    def _read_episode(self, e: int) -> dict[str, np.ndarray]:
        return self._read(e, slice(None))

    def close(self) -> None:
        self._open = OrderedDict()
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self):  # workers started by spawn reopen their own handles
        state = dict(self.__dict__)
        state["_handles"], state["_open"] = {}, OrderedDict()
        return state


def make_loader(
    dataset: WindowDataset,
    batch_size: int = 32,
    num_workers: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    **kwargs,
) -> DataLoader:
    """A ``DataLoader`` of batched windows: each value gains a leading batch axis, (B, K+H, ...).

    ``num_workers`` defaults to 2 for windows read from disk (decompression runs beside training)
    and to 0 for an ``in_memory`` dataset, whose windows are cheaper to slice than to pass
    between processes.
    """
    if num_workers is None:
        num_workers = 0 if getattr(dataset, "_memory", None) is not None else 2
    gen = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=shuffle,
        num_workers=int(num_workers),
        drop_last=drop_last,
        generator=gen,
        persistent_workers=int(num_workers) > 0,
        **kwargs,
    )
